"""Bearer tokens: the token file, which keeps only their SHA-256, and the constant-time lookup of a token.

The token file has one token a line: the hex SHA-256 of the token, whitespace, and the user whose
records it reads, or `admin` for a token that reads everyone's. Blank lines and lines starting with
`#` are skipped. A token itself is never stored, printed or logged: `hash_token` makes the line.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from runevents.errors import InvalidQueryError, RunEventsError
from runevents.store.arguments import check_id

# The user name that stands for "every user's records" in the token file.
ADMIN: Final = "admin"
# Shorter tokens can be guessed; `hash_token` refuses them.
MIN_TOKEN_LENGTH: Final = 16
_DIGEST: Final = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Reader:
    """Whose records a request may read: one user's, or everyone's when `user_id` is None."""

    user_id: str | None


EVERYONE: Final = Reader(None)


class TokenFileError(RunEventsError, ValueError):
    """A token file that cannot be used; the message names the file and the line, never a token or hash."""


def hash_token(token: str) -> str:
    """The hex SHA-256 of a token, as the token file holds it."""
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(f"a token needs at least {MIN_TOKEN_LENGTH} characters: shorter ones are guessable")
    return _digest(token)


def _digest(token: str) -> str:
    # surrogatepass: a header decoded as latin-1 never holds one, but a test's str might.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class Tokens:
    """The tokens a server accepts, by SHA-256, each with the `Reader` it stands for."""

    def __init__(self, entries: Iterable[tuple[str, str]]) -> None:
        """Tokens from (hex SHA-256, user id or `admin`) pairs."""
        self._entries: list[tuple[bytes, Reader]] = []
        for digest, user in entries:
            self._entries.append((digest.encode("ascii"), EVERYONE if user == ADMIN else Reader(user)))

    @classmethod
    def from_plain(cls, readers: Mapping[str, str]) -> Tokens:
        """Tokens from plain token -> user id (or `admin`): for tests and embedding, hashed at once."""
        return cls((_digest(token), user) for token, user in readers.items())

    @classmethod
    def from_file(cls, path: Path) -> Tokens:
        """The tokens of a token file; `TokenFileError` naming the file and line if one is wrong."""
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise TokenFileError(f"token file {path}: cannot be read ({type(error).__name__})") from None
        entries: list[tuple[str, str]] = []
        seen: set[str] = set()
        for number, line in enumerate(text.splitlines(), start=1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            where = f"token file {path}, line {number}"
            if len(fields) != 2:
                raise TokenFileError(f"{where}: expected `<sha256 of the token> <user id or {ADMIN}>`")
            digest, user = fields[0].lower(), fields[1]
            if not _DIGEST.fullmatch(digest):
                raise TokenFileError(f"{where}: the first field is not a hex SHA-256 (64 hex digits)")
            if digest in seen:
                raise TokenFileError(f"{where}: the same token is listed twice")
            try:
                check_id("user_id", user)
            except InvalidQueryError as error:
                raise TokenFileError(f"{where}: user id {error.problem}") from None
            seen.add(digest)
            entries.append((digest, user))
        if not entries:
            raise TokenFileError(f"token file {path}: holds no token, so nobody could read")
        return cls(entries)

    def reader(self, token: str) -> Reader | None:
        """The reader a presented token stands for, or None for an unknown token."""
        candidate = _digest(token).encode("ascii")
        found: Reader | None = None
        # Every entry is compared, each in constant time: how long this takes says nothing of which
        # entry (if any) matched, nor how much of a digest did.
        for digest, reader in self._entries:
            if hmac.compare_digest(candidate, digest):
                found = reader
        return found

    def __len__(self) -> int:
        return len(self._entries)
