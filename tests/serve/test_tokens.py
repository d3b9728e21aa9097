"""The token file: hashes at rest, the admin reader, and errors that name the line but never a hash."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from runevents.serve import TokenFileError, Tokens, hash_token
from runevents.serve.tokens import EVERYONE, Reader

ALICE = "alice-0123456789-token"
ROOT = "root-0123456789abcdef"


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def test_a_token_file_maps_hashed_tokens_to_readers(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"# who reads what\n\n{sha(ALICE)} alice\n  {sha(ROOT).upper()}\tadmin  \n")
    tokens = Tokens.from_file(path)
    assert len(tokens) == 2
    assert tokens.reader(ALICE) == Reader("alice")
    assert tokens.reader(ROOT) is EVERYONE
    assert tokens.reader(sha(ALICE)) is None  # the hash is not a token
    assert tokens.reader(ALICE + " ") is None
    assert tokens.reader("") is None


def test_hash_token_is_the_sha256_of_the_token_and_refuses_short_ones() -> None:
    assert hash_token(ALICE) == sha(ALICE)
    with pytest.raises(ValueError, match="at least 16 characters"):
        hash_token("short")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (f"{sha(ALICE)}\n", "line 1: expected `<sha256 of the token> <user id or admin>`"),
        (f"# ok\n{sha(ALICE)} alice extra\n", "line 2: expected"),
        ("not-a-hash alice\n", "line 1: the first field is not a hex SHA-256"),
        (f"{sha(ALICE)} alice\n{sha(ALICE)} bob\n", "line 2: the same token is listed twice"),
        (f"{sha(ALICE)} {'u' * 65}\n", "line 1: user id must be at most 64 characters"),
        ("# nothing but comments\n\n", "holds no token, so nobody could read"),
    ],
)
def test_a_wrong_token_file_names_its_line_and_never_a_hash(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "tokens"
    path.write_text(text)
    with pytest.raises(TokenFileError) as raised:
        Tokens.from_file(path)
    assert str(raised.value).startswith(f"token file {path}")
    assert problem in str(raised.value)
    assert sha(ALICE) not in str(raised.value)


def test_a_missing_token_file_is_one_error(tmp_path: Path) -> None:
    with pytest.raises(TokenFileError, match="cannot be read"):
        Tokens.from_file(tmp_path / "absent")
