"""The envelope on the topic (the bus backend): one JSON document a record, one event or op a record."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import msgspec
import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)

from runevents.errors import InvalidEventError, RunEventsError
from runevents.events.codec import to_json
from runevents.events.input import (
    DEFAULT_MAX_TRACE_CONTENT,
    FORBIDDEN_IN_TEXT,
    MAX_CATEGORY_LENGTH,
    MAX_EVENT_TYPE_LENGTH,
    MAX_ID_LENGTH,
    Category,
    EventType,
    Id,
    check_content,
    first_problem,
    require_aware,
)
from runevents.events.prepared import PreparedEvent, prepared_from

ENVELOPE_VERSION: Final = 1
SCHEMA_HEADER: Final = "runevents-schema"
EVENT_TYPE_HEADER: Final = "runevents-event-type"
OP_HEADER: Final = "runevents-op"

UUID_PATTERN: Final = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"

PUT: Final = "put"
PUT_IF_ABSENT: Final = "put_if_absent"
DELETE_THREAD: Final = "delete_thread"
DELETE_RUN: Final = "delete_run"
EXPIRE: Final = "expire"
SET_RETENTION: Final = "set_retention"
# The most seqs one expiry record carries: retention expires in bounded steps.
MAX_EXPIRED_SEQS: Final = 10_000


def _check_metadata_object(value: Any) -> Any:
    if not isinstance(value, dict):
        raise ValueError(f"must be a dict, got {type(value).__name__}")
    return value


class _EnvelopeBase(BaseModel):
    # Unknown fields are ignored: within a version the schema only grows, so an old consumer must
    # read what a newer producer wrote.
    model_config = ConfigDict(extra="ignore", frozen=True)

    v: Literal[1] = Field(description="Envelope version; additive changes only within a version.")
    event_id: str = Field(
        pattern=UUID_PATTERN, description="Producer-assigned UUIDv7; a second copy of one is skipped."
    )
    thread_id: Id


class PutEnvelope(_EnvelopeBase):
    """A `put` (or `put_if_absent`) of one event: the event's fields, without its seq."""

    op: Literal["put", "put_if_absent"]
    run_id: Id
    event_type: EventType
    category: Category
    # Typed Any and checked for its kind only: validating `dict[str, Any]` would walk and copy the
    # whole document, the larger part of what decoding a record costs the projector.
    content: Annotated[
        Any,
        AfterValidator(check_content),
        WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "object"}, {"type": "array"}]}),
    ] = Field(description="A string, or structured content (an OpenAI-format message is a dict).")
    metadata: Annotated[Any, AfterValidator(_check_metadata_object), WithJsonSchema({"type": "object"})]
    created_at: Annotated[datetime, AfterValidator(require_aware)] = Field(
        description="ISO-8601 with an offset."
    )
    user_id: Id | None = None


class DeleteThreadEnvelope(_EnvelopeBase):
    """`delete_by_thread`: every event of the thread goes, and its seq starts again at 1."""

    op: Literal["delete_thread"]


class DeleteRunEnvelope(_EnvelopeBase):
    """`delete_by_run`: every event of one run of the thread goes; the thread's seq goes on."""

    op: Literal["delete_run"]
    run_id: Id


class ExpireEnvelope(_EnvelopeBase):
    """Retention's expiry: the thread's events at these seqs go; its seq goes on and its counts stay exact."""

    op: Literal["expire"]
    seqs: list[Annotated[int, Field(ge=1, le=2**63 - 1)]] = Field(
        min_length=1, max_length=MAX_EXPIRED_SEQS, description="The seqs removed, as retention chose them."
    )


class SetRetentionEnvelope(_EnvelopeBase):
    """`set_retention`: the thread's own retention policy (its JSON document), or none (null)."""

    op: Literal["set_retention"]
    policy: dict[str, Any] | None = Field(
        description="The policy's JSON document (runevents.lifecycle.retention), or null for none of its own."
    )


class SealedPart(BaseModel):
    """A sealed put's content and metadata, encrypted with its thread's data key (runevents.crypto)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    key: str = Field(pattern=UUID_PATTERN, description="The data key's id, as the runevents-key header.")
    nonce: str = Field(description="AES-256-GCM's 96-bit nonce, base64.")
    data: str = Field(
        description='AES-256-GCM over {"content": ..., "metadata": ...} (base64), with the event id, '
        "thread id and key id as associated data; opened with the key service only."
    )


class SealedPutEnvelope(_EnvelopeBase):
    """A put whose content and metadata are sealed (header runevents-key); the rest as a put's."""

    op: Literal["put", "put_if_absent"]
    run_id: Id
    event_type: EventType
    category: Category
    sealed: SealedPart
    created_at: Annotated[datetime, AfterValidator(require_aware)] = Field(
        description="ISO-8601 with an offset."
    )
    user_id: Id | None = None


Ops = DeleteThreadEnvelope | DeleteRunEnvelope | ExpireEnvelope | SetRetentionEnvelope
Envelope = Annotated[PutEnvelope | Ops, Field(discriminator="op")]
ENVELOPE: Final[TypeAdapter[PutEnvelope | Ops]] = TypeAdapter(Envelope)


def envelope_json_schema() -> dict[str, Any]:
    """The JSON Schema of a topic record's value (version 1), as published for analytics consumers."""
    schema = TypeAdapter(Envelope | SealedPutEnvelope).json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://runevents.dev/schema/run-event.v1.json",
        "title": "runevents topic record, version 1",
        "description": (
            "The value of one record of the run-events topic. Key: the thread id in UTF-8. Headers: "
            f"{SCHEMA_HEADER} (the version), {OP_HEADER}, and {EVENT_TYPE_HEADER} for puts; a sealed put "
            "(sealed in place of content and metadata) also runevents-key."
        ),
        **schema,
    }


def encode_put(event: PreparedEvent, op: str = PUT) -> bytes:
    """The topic record value of a put (or put_if_absent) of a prepared event."""
    # The content and metadata were serialized while preparing; Fragment splices them in as they are.
    return orjson.dumps(
        {
            "v": ENVELOPE_VERSION,
            "op": op,
            "event_id": event.event_id,
            "thread_id": event.thread_id,
            "run_id": event.run_id,
            "event_type": event.event_type,
            "category": event.category,
            "content": orjson.Fragment(event.content_json),
            "metadata": orjson.Fragment(event.metadata_json),
            "created_at": event.created_at,
            "user_id": event.user_id,
        }
    )


def encode_expire(event_id: str, thread_id: str, seqs: list[int]) -> bytes:
    """The topic record value of an expiry of some of a thread's events."""
    return orjson.dumps(
        {"v": ENVELOPE_VERSION, "op": EXPIRE, "event_id": event_id, "thread_id": thread_id, "seqs": seqs}
    )


def encode_set_retention(event_id: str, thread_id: str, policy: dict[str, Any] | None) -> bytes:
    """The topic record value of a thread's own retention policy (None: back to the default)."""
    return orjson.dumps(
        {
            "v": ENVELOPE_VERSION,
            "op": SET_RETENTION,
            "event_id": event_id,
            "thread_id": thread_id,
            "policy": policy,
        }
    )


def encode_delete(event_id: str, thread_id: str, run_id: str | None = None) -> bytes:
    """The topic record value of a delete of a thread (or, with `run_id`, of one run)."""
    document: dict[str, Any] = {"v": ENVELOPE_VERSION, "event_id": event_id, "thread_id": thread_id}
    if run_id is None:
        document["op"] = DELETE_THREAD
    else:
        document |= {"op": DELETE_RUN, "run_id": run_id}
    return orjson.dumps(document)


def headers_of(op: str, event_type: str | None = None) -> list[tuple[str, bytes]]:
    """The record headers: schema version, op and, for puts, the event type."""
    headers = [(SCHEMA_HEADER, b"1"), (OP_HEADER, op.encode())]
    if event_type is not None:
        headers.append((EVENT_TYPE_HEADER, event_type.encode()))
    return headers


class UndecodableRecordError(RunEventsError):
    """A topic record that is not a valid envelope of a version this code reads; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# The projector's fast path for puts: msgspec decodes and checks a record in one pass, several times
# faster than orjson then pydantic. It is never more lenient than `PutEnvelope`: it takes a subset
# (RFC 3339 timestamps of at most microseconds, ids without forbidden characters) and declines
# everything else, which the pydantic path then decodes or rejects with its reason. A test checks
# that whatever it takes, the pydantic path decodes to the same event.
FastId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH)]
RFC3339_PATTERN: Final = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|[+-]\d\d:\d\d)$"


class _FastPut(msgspec.Struct, tag_field="op", tag=PUT, frozen=True):
    v: Literal[1]
    event_id: Annotated[str, msgspec.Meta(pattern=UUID_PATTERN)]
    thread_id: FastId
    run_id: FastId
    event_type: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_EVENT_TYPE_LENGTH)]
    category: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_CATEGORY_LENGTH)]
    content: str | dict[str, Any] | list[Any]
    metadata: dict[str, Any]
    created_at: Annotated[str, msgspec.Meta(pattern=RFC3339_PATTERN)]
    user_id: FastId | None = None


class _FastPutIfAbsent(_FastPut, tag=PUT_IF_ABSENT, frozen=True):
    pass


_FAST_PUT: Final = msgspec.json.Decoder(_FastPut | _FastPutIfAbsent)


def _decode_put_fast(
    value: bytes, max_trace_content: int | None
) -> PreparedEvent | tuple[str, PreparedEvent] | None:
    """A put record decoded on the fast path, or None where only the pydantic path may decide."""
    try:
        put = _FAST_PUT.decode(value)
        ids = put.thread_id + put.run_id + put.event_type + put.category + (put.user_id or "")
        # Printable ASCII, the usual id, cannot hold a forbidden character; only others need the search.
        if not (ids.isascii() and ids.isprintable()) and FORBIDDEN_IN_TEXT.search(ids) is not None:
            return None
        created = datetime.fromisoformat(put.created_at).astimezone(UTC)
        # orjson refuses what msgspec takes and JSON readers cannot (integers past 64 bits).
        content_json, metadata_json = to_json(put.content), to_json(put.metadata)
        prepared = prepared_from(
            put,
            put.content,
            content_json,
            put.metadata,
            metadata_json,
            put.event_id,
            created,
            max_trace_content,
        )
    # InvalidEventError is a ValueError. msgspec raises RecursionError (not a MsgspecError) for JSON
    # nested past Python's recursion limit: the pydantic path says what is wrong with it.
    except (msgspec.MsgspecError, ValueError, TypeError, RecursionError):
        return None
    return (PUT_IF_ABSENT, prepared) if isinstance(put, _FastPutIfAbsent) else prepared


def decode_record(
    value: bytes | None, *, max_trace_content: int | None = DEFAULT_MAX_TRACE_CONTENT
) -> PreparedEvent | Ops | tuple[str, PreparedEvent]:
    """A topic record's value as a prepared put, `(PUT_IF_ABSENT, prepared)`, or a delete or expiry."""
    if value is None:
        raise UndecodableRecordError("the record has no value")
    fast = _decode_put_fast(value, max_trace_content)
    return fast if fast is not None else _decode_validated(value, max_trace_content)


def _decode_validated(
    value: bytes, max_trace_content: int | None
) -> PreparedEvent | Ops | tuple[str, PreparedEvent]:
    """Decode with the envelope's pydantic models, which say what is wrong with a bad record."""
    return decode_document(json_document(value), max_trace_content)


def json_document(value: bytes) -> dict[str, Any]:
    """A record's value as the JSON object it must be; `UndecodableRecordError` if it is not one."""
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise UndecodableRecordError(f"the value is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise UndecodableRecordError(f"the value is JSON {type(document).__name__}, not an object")
    return document


def decode_document(
    document: dict[str, Any], max_trace_content: int | None
) -> PreparedEvent | Ops | tuple[str, PreparedEvent]:
    """A record's JSON object checked by the envelope's pydantic models, which say what is wrong."""
    if document.get("v") != ENVELOPE_VERSION:
        raise UndecodableRecordError(f"envelope version {document.get('v')!r}; this projector reads 1")
    try:
        envelope = ENVELOPE.validate_python(document)
    except ValidationError as exc:
        field, problem = first_problem(exc)
        raise UndecodableRecordError(f"{field} {problem}") from None
    if not isinstance(envelope, PutEnvelope):
        return envelope
    # Decoded from JSON, content and metadata are already what a read returns: serialize, no round trip.
    created = envelope.created_at.astimezone(UTC)
    try:
        prepared = prepared_from(
            envelope,
            envelope.content,
            to_json(envelope.content),
            envelope.metadata,
            to_json(envelope.metadata),
            envelope.event_id,
            created,
            max_trace_content,
        )
    except InvalidEventError as exc:
        raise UndecodableRecordError(f"{exc.field} {exc.problem}") from None
    except TypeError as exc:  # orjson refuses what JSON readers cannot hold (integers past 64 bits)
        raise UndecodableRecordError(f"content or metadata is not storable JSON: {exc}") from None
    return (PUT_IF_ABSENT, prepared) if envelope.op == PUT_IF_ABSENT else prepared


# The schema file sits beside the package, in runevents/schemas/.
SCHEMA_FILE: Final = Path(__file__).resolve().parent.parent / "schemas" / "run-event.v1.json"


def envelope_json_schema_text() -> str:
    """The published JSON Schema file's text: `envelope_json_schema()` indented, keys in order."""
    return orjson.dumps(envelope_json_schema(), option=orjson.OPT_INDENT_2).decode() + "\n"
