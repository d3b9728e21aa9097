"""Keyrings of key-encryption keys: their text form, wrapping, and errors that never show a key."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from typer.testing import CliRunner

from runevents.cli.app import app
from runevents.crypto.keyring import (
    Keyring,
    KeyringError,
    KeyUnavailableError,
    derived_id,
    load_keyring,
    new_key,
    parse_keyring,
)

# Fixed: parametrized ids are made of them, and every test worker must collect the same tests.
KEY_A, KEY_B = bytes(range(32)), bytes(range(32, 64))
TEXT_A, TEXT_B = base64.b64encode(KEY_A).decode(), base64.b64encode(KEY_B).decode()


def test_entries_are_named_and_the_first_is_current() -> None:
    ring = parse_keyring(f"2026-12:{TEXT_B}\n# the old one\n2026-06:{TEXT_A}", source="test")
    assert ring.current == "2026-12"
    assert ring.keys == {"2026-12": KEY_B, "2026-06": KEY_A}
    assert parse_keyring(f"new:{TEXT_B}, old:{TEXT_A}", source="test").keys == {"new": KEY_B, "old": KEY_A}
    bare = parse_keyring(TEXT_A, source="test")
    assert bare.current == derived_id(KEY_A)
    assert TEXT_A not in bare.current
    assert TEXT_A not in repr(bare)
    assert str(KEY_A) not in repr(bare)


def test_a_data_key_unwraps_only_with_its_kek_thread_and_id() -> None:
    ring = Keyring.of(KEY_A)
    data_key = new_key()
    kek_id, wrapped = ring.wrap(data_key, thread_id="t1", key_id="k1")
    assert ring.unwrap(kek_id, wrapped, thread_id="t1", key_id="k1") == data_key
    with pytest.raises(KeyUnavailableError, match="does not unwrap"):
        ring.unwrap(kek_id, wrapped, thread_id="t2", key_id="k1")
    with pytest.raises(KeyUnavailableError, match="does not unwrap"):
        ring.unwrap(kek_id, wrapped, thread_id="t1", key_id="k2")
    other = Keyring.of(KEY_B)
    with pytest.raises(
        KeyUnavailableError, match=f"wrapped by KEK '{kek_id}', which this keyring does not hold"
    ):
        other.unwrap(kek_id, wrapped, thread_id="t1", key_id="k1")
    # The same id for another key (a KEK replaced under its name) is said to be the wrong KEK.
    impostor = Keyring(kek_id, {kek_id: KEY_B})
    with pytest.raises(KeyUnavailableError, match="is not the one that wrapped it"):
        impostor.unwrap(kek_id, wrapped, thread_id="t1", key_id="k1")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "holds no key"),
        ("a:not base64!", "entry 1: not base64"),
        (f"a:{base64.b64encode(b'short').decode()}", "entry 1: 5 bytes; a KEK is 32"),
        (f"a:{TEXT_A}, a:{TEXT_B}", "entry 2: KEK id 'a' is given twice"),
        (f"bad id:{TEXT_A}", "entry 1: a KEK id is 1-64 of"),
    ],
)
def test_a_bad_keyring_is_named_without_its_keys(text: str, problem: str) -> None:
    with pytest.raises(KeyringError, match=problem) as raised:
        parse_keyring(text, source="RUNEVENTS_KEK")
    assert TEXT_A not in str(raised.value)
    assert TEXT_B not in str(raised.value)


def test_the_settings_give_the_keyring_from_a_value_or_a_file(tmp_path: Path) -> None:
    file = tmp_path / "kek"
    file.write_text(f"k2:{TEXT_B}\nk1:{TEXT_A}\n")
    assert load_keyring(None, None) is None
    assert load_keyring(f"k1:{TEXT_A}", None) == Keyring("k1", {"k1": KEY_A})
    assert load_keyring(None, file) == Keyring("k2", {"k2": KEY_B, "k1": KEY_A})
    with pytest.raises(KeyringError, match="not both"):
        load_keyring(TEXT_A, file)
    with pytest.raises(KeyringError, match="cannot be read"):
        load_keyring(None, tmp_path / "missing")


def test_a_bad_kek_setting_is_named_without_its_value(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:

    bad = f"k1:{TEXT_A}, k1:{TEXT_B}"
    monkeypatch.setenv("RUNEVENTS_KEK", bad)
    result = CliRunner().invoke(app, ["config"])
    assert result.exit_code == 1
    assert "setting kek (env RUNEVENTS_KEK)" in result.output
    assert "KEK id 'k1' is given twice" in result.output
    assert TEXT_A not in result.output
    assert TEXT_B not in result.output
    monkeypatch.setenv("RUNEVENTS_KEK", f"k1:{TEXT_A}")
    shown = CliRunner().invoke(app, ["config"])
    assert shown.exit_code == 0, shown.output
    assert TEXT_A not in shown.output
