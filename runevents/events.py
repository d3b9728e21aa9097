"""The event envelope: input and record models, validation, trace truncation, JSON.

Every backend turns caller input into records through `prepare_events` and `make_record`; none
validates, serializes or truncates on its own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import msgspec
import orjson
import uuid_utils
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)

from runevents.errors import InvalidEventError, RunEventsError

MAX_ID_LENGTH: Final = 64
MAX_EVENT_TYPE_LENGTH: Final = 32
MAX_CATEGORY_LENGTH: Final = 16
DEFAULT_MAX_TRACE_CONTENT: Final = 10240
# Longer message ids are not indexed (a btree entry has a size limit), so no backend looks them up.
MAX_INDEXED_MESSAGE_ID: Final = 512

MESSAGE_CATEGORY: Final = "message"
TRACE_CATEGORY: Final = "trace"
AI_RESPONSE_EVENT_TYPES: Final = frozenset({"llm.ai.response", "ai_message"})
MIDDLEWARE_CALLER_PREFIX: Final = "middleware:"

Content = str | dict[str, Any] | list[Any]
Record = dict[str, Any]

# A fixed namespace so an event id derived from the same coordinates is the same on every machine.
_DERIVED_ID_NAMESPACE: Final = uuid_utils.UUID("5d0f3c8e-9a57-4c1e-8f0b-2b7f6c1d4e90")


# Control characters and lone surrogates in an id break file paths, PostgreSQL text and Kafka keys
# alike; they are never meaningful in one. A text column (and UTF-8) cannot hold NUL or a lone
# surrogate at all, whatever the field.
_FORBIDDEN_IN_TEXT = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
_FORBIDDEN_IN_COLUMN = re.compile("[\x00\ud800-\udfff]")


def text_problem(value: str, *, control_allowed: bool = False) -> str | None:
    """Why `value` cannot be an id (or, `control_allowed`, a text column's value), or None."""
    found = (_FORBIDDEN_IN_COLUMN if control_allowed else _FORBIDDEN_IN_TEXT).search(value)
    if found is None:
        return None
    code = ord(found.group())
    kind = "lone surrogate" if code >= 0xD800 else "NUL" if code == 0 else "control character"
    return f"must not contain {kind} U+{code:04X}"


def _check_text(value: str) -> str:
    problem = text_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def _parse_created_at(value: Any) -> Any:
    if value is None or isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"not an ISO-8601 timestamp: {value!r}") from None
    raise ValueError(f"must be an ISO-8601 string or a datetime, got {type(value).__name__}")


def _require_aware(value: datetime | None) -> datetime | None:
    if value is not None and value.utcoffset() is None:
        raise ValueError(
            "must be timezone-aware (a naive timestamp is ambiguous; add an offset such as +00:00)"
        )
    return value


def _assume_utc(value: datetime) -> datetime:
    # Records written before offsets were enforced (deer-flow's SQLite store drops them) are UTC.
    return value if value.utcoffset() is not None else value.replace(tzinfo=UTC)


def _check_content(value: Any) -> Any:
    if not isinstance(value, str | dict | list):
        raise ValueError(f"must be a str, a dict or a list, got {type(value).__name__}")
    return value


def _check_metadata_object(value: Any) -> Any:
    if not isinstance(value, dict):
        raise ValueError(f"must be a dict, got {type(value).__name__}")
    return value


def _check_metadata(value: Any) -> Any:
    if value is not None and not isinstance(value, dict):
        raise ValueError(f"must be a dict or None, got {type(value).__name__}")
    return value


Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH), AfterValidator(_check_text)]
EventType = Annotated[str, Field(min_length=1, max_length=MAX_EVENT_TYPE_LENGTH), AfterValidator(_check_text)]
Category = Annotated[str, Field(min_length=1, max_length=MAX_CATEGORY_LENGTH), AfterValidator(_check_text)]


class EventInput(BaseModel):
    """One event as a writer hands it to `put`/`put_batch` (before a seq is assigned)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    thread_id: Id
    run_id: Id
    event_type: EventType
    category: Category
    content: Annotated[Any, AfterValidator(_check_content)] = ""
    metadata: Annotated[Any, AfterValidator(_check_metadata)] = None
    created_at: Annotated[
        datetime | None, BeforeValidator(_parse_created_at), AfterValidator(_require_aware)
    ] = None
    user_id: Id | None = None


class RunEventRecord(BaseModel):
    """One stored event: the envelope every backend returns (guarantee 4)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    thread_id: str
    run_id: str
    seq: int = Field(ge=1)
    event_id: str
    event_type: str
    category: str
    content: str | dict[str, Any] | list[Any]
    metadata: dict[str, Any]
    created_at: Annotated[datetime, AfterValidator(_assume_utc)]
    user_id: str | None = None


# Not frozen: a frozen dataclass sets each field through object.__setattr__, which is a measurable
# share of preparing an event on the write path. Nothing mutates a PreparedEvent once made.
@dataclass(slots=True)
class PreparedEvent:
    """A validated, normalized event that only lacks its seq."""

    thread_id: str
    run_id: str
    event_type: str
    category: str
    content: Content
    metadata: dict[str, Any]
    created_at: str
    user_id: str | None
    event_id: str
    # The JSON of `content` and `metadata` as stored, kept so no backend serializes them twice.
    content_json: bytes
    metadata_json: bytes
    # `created_at` as an aware datetime in UTC, for the backends whose column is a timestamp.
    created: datetime


def new_event_id() -> str:
    """A fresh UUIDv7 event id: unique and ordered by creation time."""
    return str(uuid_utils.uuid7())


def derived_event_id(*coordinates: str | int) -> str:
    """A deterministic event id for a record that was stored without one."""
    name = "\x1f".join(str(part) for part in coordinates)
    # uuid_utils' uuid5 is RFC 4122's, as the standard library's, at a tenth of the cost: a backfill
    # derives one for every record it reads.
    return str(uuid_utils.uuid5(_DERIVED_ID_NAMESPACE, name))


# orjson would write datetimes as ISO-8601 and dataclasses as objects; the contract (and deer-flow,
# whose stores call json.dumps(default=str)) turns every value JSON cannot hold into str(value).
_JSON_OPTIONS: Final = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def to_json(value: Any) -> bytes:
    """Serialize a JSON value as the persistent backends store it (non-JSON values via str)."""
    return orjson.dumps(value, default=str, option=_JSON_OPTIONS)


def utc_iso(moment: datetime) -> str:
    """An aware timestamp as ISO-8601 in UTC with a +00:00 offset."""
    return moment.astimezone(UTC).isoformat()


def _json_value(value: Any, field: str, index: int | None) -> tuple[Any, bytes]:
    # Serializing once both checks the value and normalizes it (tuples become lists, non-JSON
    # values strings), so every backend returns what a persistent one would read back.
    try:
        encoded = to_json(value)
    except TypeError as exc:
        raise InvalidEventError(field, f"not JSON-serializable: {exc}", index=index) from None
    if isinstance(value, str):
        return value, encoded
    return orjson.loads(encoded), encoded


def truncate_trace(
    content: Content, content_json: bytes, metadata: dict[str, Any], max_bytes: int
) -> tuple[Content, dict[str, Any]]:
    """Cut trace content to `max_bytes` UTF-8 bytes, marking the metadata when it was cut."""
    encoded = content.encode("utf-8") if isinstance(content, str) else content_json
    if len(encoded) <= max_bytes:
        return content, metadata
    # The source is valid UTF-8, so ignoring errors drops only a character split by the cut.
    cut = encoded[:max_bytes].decode("utf-8", errors="ignore")
    return cut, {**metadata, "content_truncated": True, "original_byte_length": len(encoded)}


def _first_problem(error: ValidationError) -> tuple[str, str]:
    detail = error.errors(include_url=False)[0]
    field = ".".join(str(part) for part in detail["loc"]) or "event"
    kind = detail["type"]
    if kind == "missing":
        return field, "is required"
    if kind == "extra_forbidden":
        return field, "is not a field of an event"
    if kind == "string_unicode":
        return field, "must not contain lone surrogates"
    message = str(detail["msg"])
    message = message.removeprefix("Value error, ")
    if kind == "string_too_short":
        message = "must not be empty"
    elif kind == "string_too_long":
        limit = detail.get("ctx", {}).get("max_length")
        message = f"must be at most {limit} characters (got {len(detail['input'])})"
    elif kind == "string_type":
        message = f"must be a str, got {type(detail['input']).__name__}"
    return field, message


def prepare_event(
    raw: Mapping[str, Any],
    *,
    index: int | None = None,
    max_trace_content: int | None = None,
    event_id: str | None = None,
) -> PreparedEvent:
    """Validate and normalize one event (a new id unless it brings one); raise `InvalidEventError`."""
    if not isinstance(raw, Mapping):
        raise InvalidEventError("event", f"must be a dict, got {type(raw).__name__}", index=index)
    try:
        event = EventInput.model_validate(raw)
    except ValidationError as exc:
        field, problem = _first_problem(exc)
        raise InvalidEventError(field, problem, index=index) from None
    content, content_json = _json_value(event.content, "content", index)
    metadata, metadata_json = _json_value(event.metadata or {}, "metadata", index)
    created = datetime.now(UTC) if event.created_at is None else event.created_at.astimezone(UTC)
    event_id = new_event_id() if event_id is None else event_id
    return _prepared(
        event, content, content_json, metadata, metadata_json, event_id, created, max_trace_content, index
    )


def _prepared(
    event: EventInput | PutEnvelope | _FastPut,
    content: Content,
    content_json: bytes,
    metadata: dict[str, Any],
    metadata_json: bytes,
    event_id: str,
    created: datetime,
    max_trace_content: int | None,
    index: int | None = None,
) -> PreparedEvent:
    column_problem = _column_problem(event.category, content, metadata)
    if column_problem is not None:
        raise InvalidEventError(*column_problem, index=index)
    if max_trace_content is not None and event.category == TRACE_CATEGORY:
        cut, marked = truncate_trace(content, content_json, metadata, max_trace_content)
        if marked is not metadata:
            content, metadata = cut, marked
            content_json, metadata_json = to_json(content), to_json(metadata)
    return PreparedEvent(
        thread_id=event.thread_id,
        run_id=event.run_id,
        event_type=event.event_type,
        category=event.category,
        content=content,
        metadata=metadata,
        created_at=created.isoformat(),
        user_id=event.user_id,
        event_id=event_id,
        content_json=content_json,
        metadata_json=metadata_json,
        created=created,
    )


def _column_problem(category: str, content: Content, metadata: dict[str, Any]) -> tuple[str, str] | None:
    """The field and problem of a value that becomes a text column but could not be one, or None."""
    # The message id, task id and caller are columns of the read tables (indexed, filtered on), and
    # PostgreSQL text cannot hold NUL: refused here, every backend stores the same thing.
    message_id = message_id_of(category, content)
    if message_id is not None and "\x00" in message_id:
        return "content.id", "must not contain NUL U+0000 (it is the message id)"
    for key in ("task_id", "caller"):
        value = metadata.get(key)
        if isinstance(value, str) and "\x00" in value:
            return f"metadata.{key}", "must not contain NUL U+0000"
    return None


def prepare_events(
    events: Sequence[Mapping[str, Any]], *, max_trace_content: int | None = None
) -> list[PreparedEvent]:
    """Validate a whole batch before any of it is written; the first bad event names its index."""
    if not isinstance(events, Sequence) or isinstance(events, str | bytes):
        raise InvalidEventError("events", f"must be a list of dicts, got {type(events).__name__}")
    return [prepare_event(raw, index=i, max_trace_content=max_trace_content) for i, raw in enumerate(events)]


def make_record(event: PreparedEvent, seq: int) -> Record:
    """The envelope record of a prepared event once its seq is assigned."""
    return {
        "thread_id": event.thread_id,
        "run_id": event.run_id,
        "seq": seq,
        "event_id": event.event_id,
        "event_type": event.event_type,
        "category": event.category,
        "content": event.content,
        "metadata": event.metadata,
        "created_at": event.created_at,
        "user_id": event.user_id,
    }


def record_from_model(model: RunEventRecord) -> Record:
    """The envelope record of a validated stored record, timestamps in UTC."""
    return {
        "thread_id": model.thread_id,
        "run_id": model.run_id,
        "seq": model.seq,
        "event_id": model.event_id,
        "event_type": model.event_type,
        "category": model.category,
        "content": model.content,
        "metadata": model.metadata,
        "created_at": utc_iso(model.created_at),
        "user_id": model.user_id,
    }


def message_id_of(category: str, content: Any) -> str | None:
    """The message id a message record carries in its dict content (`content["id"]`), if any."""
    if category != MESSAGE_CATEGORY or not isinstance(content, dict):
        return None
    value = content.get("id")
    return value if isinstance(value, str) else None


def is_visible_ai_message(event_type: str, category: str, metadata: Mapping[str, Any]) -> bool:
    """Whether a record is an AI response a user sees (not written by middleware)."""
    if category != MESSAGE_CATEGORY or event_type not in AI_RESPONSE_EVENT_TYPES:
        return False
    caller = metadata.get("caller")
    return not str(caller if caller is not None else "").startswith(MIDDLEWARE_CALLER_PREFIX)


# ---------------------------------------------------------------------------------------------------
# The envelope on the topic (the bus backend): one JSON document a record, one event or op a record.

ENVELOPE_VERSION: Final = 1
SCHEMA_HEADER: Final = "runevents-schema"
EVENT_TYPE_HEADER: Final = "runevents-event-type"
OP_HEADER: Final = "runevents-op"

UUID_PATTERN: Final = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"

PUT: Final = "put"
PUT_IF_ABSENT: Final = "put_if_absent"
DELETE_THREAD: Final = "delete_thread"
DELETE_RUN: Final = "delete_run"


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
        AfterValidator(_check_content),
        WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "object"}, {"type": "array"}]}),
    ] = Field(description="A string, or structured content (an OpenAI-format message is a dict).")
    metadata: Annotated[Any, AfterValidator(_check_metadata_object), WithJsonSchema({"type": "object"})]
    created_at: Annotated[datetime, AfterValidator(_require_aware)] = Field(
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


Envelope = Annotated[PutEnvelope | DeleteThreadEnvelope | DeleteRunEnvelope, Field(discriminator="op")]
ENVELOPE: Final[TypeAdapter[PutEnvelope | DeleteThreadEnvelope | DeleteRunEnvelope]] = TypeAdapter(Envelope)


def envelope_json_schema() -> dict[str, Any]:
    """The JSON Schema of a topic record's value (version 1), as published for analytics consumers."""
    schema = ENVELOPE.json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://runevents.dev/schema/run-event.v1.json",
        "title": "runevents topic record, version 1",
        "description": (
            "The value of one record of the run-events topic. Key: the thread id in UTF-8. Headers: "
            f"{SCHEMA_HEADER} (the version), {OP_HEADER}, and {EVENT_TYPE_HEADER} for puts."
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
_FastId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH)]
_RFC3339: Final = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|[+-]\d\d:\d\d)$"


class _FastPut(msgspec.Struct, tag_field="op", tag=PUT, frozen=True):
    v: Literal[1]
    event_id: Annotated[str, msgspec.Meta(pattern=UUID_PATTERN)]
    thread_id: _FastId
    run_id: _FastId
    event_type: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_EVENT_TYPE_LENGTH)]
    category: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_CATEGORY_LENGTH)]
    content: str | dict[str, Any] | list[Any]
    metadata: dict[str, Any]
    created_at: Annotated[str, msgspec.Meta(pattern=_RFC3339)]
    user_id: _FastId | None = None


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
        if not (ids.isascii() and ids.isprintable()) and _FORBIDDEN_IN_TEXT.search(ids) is not None:
            return None
        created = datetime.fromisoformat(put.created_at).astimezone(UTC)
        # orjson refuses what msgspec takes and JSON readers cannot (integers past 64 bits).
        content_json, metadata_json = to_json(put.content), to_json(put.metadata)
        prepared = _prepared(
            put,
            put.content,
            content_json,
            put.metadata,
            metadata_json,
            put.event_id,
            created,
            max_trace_content,
        )
    except (msgspec.MsgspecError, ValueError, TypeError):  # InvalidEventError is a ValueError
        return None
    return (PUT_IF_ABSENT, prepared) if isinstance(put, _FastPutIfAbsent) else prepared


def decode_record(
    value: bytes | None, *, max_trace_content: int | None = DEFAULT_MAX_TRACE_CONTENT
) -> PreparedEvent | DeleteThreadEnvelope | DeleteRunEnvelope | tuple[str, PreparedEvent]:
    """A topic record's value as a prepared put, `(PUT_IF_ABSENT, prepared)`, or a delete envelope."""
    if value is None:
        raise UndecodableRecordError("the record has no value")
    fast = _decode_put_fast(value, max_trace_content)
    return fast if fast is not None else _decode_validated(value, max_trace_content)


def _decode_validated(
    value: bytes, max_trace_content: int | None
) -> PreparedEvent | DeleteThreadEnvelope | DeleteRunEnvelope | tuple[str, PreparedEvent]:
    """Decode with the envelope's pydantic models, which say what is wrong with a bad record."""
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise UndecodableRecordError(f"the value is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise UndecodableRecordError(f"the value is JSON {type(document).__name__}, not an object")
    if document.get("v") != ENVELOPE_VERSION:
        raise UndecodableRecordError(f"envelope version {document.get('v')!r}; this projector reads 1")
    try:
        envelope = ENVELOPE.validate_python(document)
    except ValidationError as exc:
        field, problem = _first_problem(exc)
        raise UndecodableRecordError(f"{field} {problem}") from None
    if not isinstance(envelope, PutEnvelope):
        return envelope
    # Decoded from JSON, content and metadata are already what a read returns: serialize, no round trip.
    created = envelope.created_at.astimezone(UTC)
    try:
        prepared = _prepared(
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


SCHEMA_FILE: Final = Path(__file__).resolve().parent / "schemas" / "run-event.v1.json"


def envelope_json_schema_text() -> str:
    """The published JSON Schema file's text: `envelope_json_schema()` indented, keys in order."""
    return orjson.dumps(envelope_json_schema(), option=orjson.OPT_INDENT_2).decode() + "\n"


if __name__ == "__main__":  # `python -m runevents.events` writes the schema file (`make schema`)
    SCHEMA_FILE.write_text(envelope_json_schema_text(), encoding="utf-8")
    print(f"wrote {SCHEMA_FILE}")
