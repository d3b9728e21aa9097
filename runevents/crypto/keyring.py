"""Key-encryption keys (KEKs): the keys that wrap the threads' data keys, from settings or a file.

A keyring holds one or more 256-bit KEKs, each named by an id; the first is the current one, which
wraps new data keys, and the others still unwrap the keys they wrapped (so that a rotation can
rewrap them: `runevents keys rotate`). Its text form is one `id:base64` per line or comma, or a bare
base64 key, whose id is then derived from the key (its sha256's first 16 hex digits, never the key).
A KMS plugs in here: anything with `current`, `wrap` and `unwrap` (`KeyWrapper`) can stand in for a
keyring wherever one is taken, as a client of a KMS that wraps and unwraps data keys by id.

Wrapping is AES-256-GCM with the thread id and the data key's id as associated data: a wrapped key
moved to another thread (or row) does not unwrap. No key ever reaches an error message or a log.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from runevents.errors import RunEventsError

KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
_KEK_ID: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")


class KeyringError(RunEventsError, ValueError):
    """A keyring that cannot be read as given; the message names the entry, never a key."""


class KeyUnavailableError(RunEventsError):
    """A data key cannot be unwrapped here: its KEK is not in this keyring, or the wrapped key is damaged."""


class KeyWrapper(Protocol):
    """What wraps and unwraps the threads' data keys: a `Keyring` here, a KMS client elsewhere."""

    @property
    def current(self) -> str:
        """The id of the KEK that wraps new data keys."""
        ...

    def wrap(self, data_key: bytes, *, thread_id: str, key_id: str) -> tuple[str, bytes]:
        """`data_key` wrapped for one thread's key: (the id of the KEK that wrapped it, the wrapped bytes)."""
        ...

    def unwrap(self, kek_id: str, wrapped: bytes, *, thread_id: str, key_id: str) -> bytes:
        """The data key `wrap` wrapped; `KeyUnavailableError` if it cannot be unwrapped here."""
        ...


def new_key() -> bytes:
    """A fresh random 256-bit key."""
    return AESGCM.generate_key(bit_length=256)


def derived_id(key: bytes) -> str:
    """The id a KEK given without one goes by: its sha256's first 16 hex digits (not the key)."""
    return hashlib.sha256(b"runevents-kek-id\0" + key).hexdigest()[:16]


@dataclass(frozen=True)
class Keyring:
    """KEKs by id; `current` wraps new data keys, every one unwraps what it wrapped."""

    current: str
    keys: dict[str, bytes] = field(repr=False)

    def __post_init__(self) -> None:
        if self.current not in self.keys:
            raise KeyringError(f"the current KEK {self.current!r} is not in the keyring")
        for kek_id, key in self.keys.items():
            if len(key) != KEY_BYTES:
                raise KeyringError(f"KEK {kek_id!r} is {len(key)} bytes; a KEK is {KEY_BYTES} (AES-256)")

    @classmethod
    def of(cls, *keys: bytes) -> Keyring:
        """A keyring of `keys` (the first current), each named by its derived id."""
        named = {derived_id(key): key for key in keys}
        return cls(derived_id(keys[0]), named)

    def wrap(self, data_key: bytes, *, thread_id: str, key_id: str) -> tuple[str, bytes]:
        """`data_key` wrapped by the current KEK for one thread's key `key_id`: (KEK id, nonce + sealed)."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(self.keys[self.current]).encrypt(nonce, data_key, _wrap_aad(thread_id, key_id))
        return self.current, nonce + sealed

    def unwrap(self, kek_id: str, wrapped: bytes, *, thread_id: str, key_id: str) -> bytes:
        """The data key `wrap` wrapped; `KeyUnavailableError` if its KEK is not here or it does not open."""
        kek = self.keys.get(kek_id)
        if kek is None:
            raise KeyUnavailableError(
                f"data key {key_id} of thread {thread_id!r} is wrapped by KEK {kek_id!r}, which this "
                f"keyring does not hold (it holds {', '.join(sorted(self.keys))}); give it that KEK "
                "(RUNEVENTS_KEK or RUNEVENTS_KEK_FILE)"
            )
        try:
            nonce, sealed = wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:]
            return AESGCM(kek).decrypt(nonce, sealed, _wrap_aad(thread_id, key_id))
        except InvalidTag:
            raise KeyUnavailableError(
                f"data key {key_id} of thread {thread_id!r} does not unwrap with KEK {kek_id!r}: the KEK "
                "under that id is not the one that wrapped it, or the wrapped key was damaged"
            ) from None


def _wrap_aad(thread_id: str, key_id: str) -> bytes:
    return f"runevents-data-key\0{thread_id}\0{key_id}".encode()


def parse_keyring(text: str, *, source: str) -> Keyring:
    """A keyring from its text form (`id:base64` entries by line or comma, or one bare base64 key)."""
    entries = [entry.strip() for line in text.splitlines() for entry in line.split(",")]
    entries = [entry for entry in entries if entry and not entry.startswith("#")]
    if not entries:
        raise KeyringError(f"{source} holds no key")
    keys: dict[str, bytes] = {}
    for number, entry in enumerate(entries, 1):
        kek_id, _, encoded = entry.rpartition(":")
        key = _decoded(encoded, f"{source}, entry {number}")
        kek_id = kek_id or derived_id(key)
        if _KEK_ID.fullmatch(kek_id) is None:
            raise KeyringError(f"{source}, entry {number}: a KEK id is 1-64 of A-Z a-z 0-9 . _ -")
        if kek_id in keys:
            raise KeyringError(f"{source}, entry {number}: KEK id {kek_id!r} is given twice")
        keys[kek_id] = key
    return Keyring(next(iter(keys)), keys)


def _decoded(encoded: str, where: str) -> bytes:
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise KeyringError(f"{where}: not base64 (a KEK is 32 random bytes, base64-encoded)") from None
    if len(key) != KEY_BYTES:
        raise KeyringError(f"{where}: {len(key)} bytes; a KEK is {KEY_BYTES} (AES-256)")
    return key


def load_keyring(value: str | None, file: Path | None) -> Keyring | None:
    """The keyring of the settings `kek` (its text) or `kek_file` (a file holding it); None if neither."""
    if value is not None and file is not None:
        raise KeyringError("give the KEK as RUNEVENTS_KEK or RUNEVENTS_KEK_FILE, not both")
    if value is not None:
        return parse_keyring(value, source="RUNEVENTS_KEK")
    if file is not None:
        try:
            text = file.read_text()
        except OSError as exc:
            raise KeyringError(f"RUNEVENTS_KEK_FILE {str(file)!r} cannot be read: {exc.strerror}") from None
        return parse_keyring(text, source=f"RUNEVENTS_KEK_FILE {str(file)!r}")
    return None
