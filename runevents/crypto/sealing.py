"""Sealed records: puts whose content and metadata are encrypted with their thread's data key.

On the topic a sealed put is a put's envelope with `sealed` in place of `content` and `metadata`:
`{"key": <data key id>, "nonce": <base64>, "data": <base64>}`, the data AES-256-GCM over
`{"content": ..., "metadata": ...}` with the event id, thread id and key id as associated data (a
sealed part moved to another record does not open), and a header `runevents-key` naming the key. The
rest stays clear: the key (thread id) partitions, the event id dedupes, the type and category filter.

A record whose data key was destroyed (its thread erased) opens as an erased tombstone: the same event
with empty content and metadata `{"erased": true}`. One whose key is unknown here is an error
(`KeyUnavailableError`), not a dead letter: a projector with the wrong keys must stop, not discard.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Final

import msgspec
import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from runevents.crypto.keyring import NONCE_BYTES, KeyUnavailableError
from runevents.events import PUT, PUT_IF_ABSENT, PreparedEvent, UndecodableRecordError
from runevents.events.codec import to_json
from runevents.events.envelope import (
    ENVELOPE_VERSION,
    RFC3339_PATTERN,
    UUID_PATTERN,
    FastId,
    decode_document,
    json_document,
)
from runevents.events.input import FORBIDDEN_IN_TEXT, MAX_CATEGORY_LENGTH, MAX_EVENT_TYPE_LENGTH
from runevents.events.prepared import prepared_from

SEALED_HEADER: Final = "runevents-key"
ERASED_METADATA: Final = {"erased": True}
# A data key id: a UUID, as the keys table makes them.
_KEY_ID: Final = UUID_PATTERN

# The ciphers of the data keys a batch needs, by key id; None: the key was destroyed (erased).
DataKeys = Mapping[str, AESGCM | None]


def associated_data(event_id: str, thread_id: str, key_id: str) -> bytes:
    """What a sealed part is bound to: its record's event id and thread id, and the key's id."""
    return f"runevents-sealed\0{event_id}\0{thread_id}\0{key_id}".encode()


def seal_put(event: PreparedEvent, op: str, key_id: str, cipher: AESGCM) -> bytes:
    """The topic record value of a put of `event` with its content and metadata sealed by `cipher`."""
    plain = orjson.dumps(
        {"content": orjson.Fragment(event.content_json), "metadata": orjson.Fragment(event.metadata_json)}
    )
    nonce = os.urandom(NONCE_BYTES)
    data = cipher.encrypt(nonce, plain, associated_data(event.event_id, event.thread_id, key_id))
    return orjson.dumps(
        {
            "v": ENVELOPE_VERSION,
            "op": op,
            "event_id": event.event_id,
            "thread_id": event.thread_id,
            "run_id": event.run_id,
            "event_type": event.event_type,
            "category": event.category,
            "sealed": {"key": key_id, "nonce": _b64(nonce), "data": _b64(data)},
            "created_at": event.created_at,
            "user_id": event.user_id,
        }
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def sealed_key(headers: Sequence[tuple[str, bytes]]) -> str | None:
    """The data key id a record's headers name, if it is sealed."""
    for name, value in headers:
        if name == SEALED_HEADER:
            return value.decode(errors="replace")
    return None


class _Sealed(msgspec.Struct, frozen=True):
    key: Annotated[str, msgspec.Meta(pattern=_KEY_ID)]
    # msgspec reads base64 into bytes itself, in C.
    nonce: bytes
    data: bytes


class _FastSealedPut(msgspec.Struct, tag_field="op", tag=PUT, frozen=True):
    v: int
    event_id: Annotated[str, msgspec.Meta(pattern=UUID_PATTERN)]
    thread_id: FastId
    run_id: FastId
    event_type: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_EVENT_TYPE_LENGTH)]
    category: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_CATEGORY_LENGTH)]
    sealed: _Sealed
    created_at: Annotated[str, msgspec.Meta(pattern=RFC3339_PATTERN)]
    user_id: FastId | None = None


class _FastSealedPutIfAbsent(_FastSealedPut, tag=PUT_IF_ABSENT, frozen=True):
    pass


class _Plain(msgspec.Struct, frozen=True):
    content: str | dict[str, Any] | list[Any]
    metadata: dict[str, Any]


_FAST_SEALED: Final = msgspec.json.Decoder(_FastSealedPut | _FastSealedPutIfAbsent)
_PLAIN: Final = msgspec.json.Decoder(_Plain)


def decode_sealed(
    value: bytes, keys: DataKeys, *, max_trace_content: int | None
) -> PreparedEvent | tuple[str, PreparedEvent]:
    """A sealed put record opened with its data key (an erased tombstone if the key was destroyed)."""
    try:
        put = _FAST_SEALED.decode(value)
    except (msgspec.MsgspecError, RecursionError):
        return _decode_sealed_validated(value, keys, max_trace_content)
    ids = put.thread_id + put.run_id + put.event_type + put.category + (put.user_id or "")
    if put.v != ENVELOPE_VERSION or (
        not (ids.isascii() and ids.isprintable()) and FORBIDDEN_IN_TEXT.search(ids) is not None
    ):
        return _decode_sealed_validated(value, keys, max_trace_content)
    plain = _open(put.sealed, put.event_id, put.thread_id, keys)
    if plain is None:
        content: Any = ""
        metadata: dict[str, Any] = dict(ERASED_METADATA)
    else:
        try:
            opened = _PLAIN.decode(plain)
        except (msgspec.MsgspecError, RecursionError):
            return _decode_sealed_validated(value, keys, max_trace_content)
        content, metadata = opened.content, opened.metadata
    try:
        created = datetime.fromisoformat(put.created_at).astimezone(UTC)
        prepared = prepared_from(
            put,
            content,
            to_json(content),
            metadata,
            to_json(metadata),
            put.event_id,
            created,
            max_trace_content,
        )
    except (ValueError, TypeError):
        return _decode_sealed_validated(value, keys, max_trace_content)
    return (PUT_IF_ABSENT, prepared) if isinstance(put, _FastSealedPutIfAbsent) else prepared


def _open(sealed: _Sealed, event_id: str, thread_id: str, keys: DataKeys) -> bytes | None:
    """The plaintext of a sealed part, or None if its key was destroyed."""
    if sealed.key not in keys:
        raise KeyUnavailableError(f"no data key {sealed.key} (thread {thread_id!r}) was looked up")
    cipher = keys[sealed.key]
    if cipher is None:
        return None
    try:
        return cipher.decrypt(sealed.nonce, sealed.data, associated_data(event_id, thread_id, sealed.key))
    except (InvalidTag, ValueError):
        # The key is the thread's and unwrapped: the record's sealed part was damaged or moved.
        raise UndecodableRecordError(
            f"the sealed content does not open with data key {sealed.key}: damaged, or not this record's"
        ) from None


def _decode_sealed_validated(
    value: bytes, keys: DataKeys, max_trace_content: int | None
) -> PreparedEvent | tuple[str, PreparedEvent]:
    """The slow path: open the sealed part into the document, then check it as any put."""
    document = json_document(value)
    raw = document.pop("sealed", None)
    try:
        sealed = msgspec.convert(raw, _Sealed)
        event_id, thread_id = document["event_id"], document["thread_id"]
        if not isinstance(event_id, str) or not isinstance(thread_id, str):
            raise TypeError
    except (msgspec.ValidationError, KeyError, TypeError):
        raise UndecodableRecordError(
            "a sealed put needs sealed {key, nonce, data}, event_id and thread_id"
        ) from None
    plain = _open(sealed, event_id, thread_id, keys)
    if plain is None:
        document |= {"content": "", "metadata": dict(ERASED_METADATA)}
    else:
        try:
            opened = orjson.loads(plain)
        except orjson.JSONDecodeError as exc:
            raise UndecodableRecordError(f"the sealed content is not JSON: {exc}") from None
        if not isinstance(opened, dict):
            raise UndecodableRecordError("the sealed content is not a JSON object")
        document |= {"content": opened.get("content"), "metadata": opened.get("metadata")}
    decoded = decode_document(document, max_trace_content)
    if not isinstance(decoded, PreparedEvent | tuple):
        raise UndecodableRecordError(f"a sealed record is a put, not {document.get('op')!r}")
    return decoded
