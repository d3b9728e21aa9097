"""The input event: its limits, its validation and its normalization into a `PreparedEvent`."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Protocol

import orjson
import uuid_utils
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from runevents.errors import InvalidEventError
from runevents.events.codec import to_json

MAX_ID_LENGTH: Final = 64
MAX_EVENT_TYPE_LENGTH: Final = 32
MAX_CATEGORY_LENGTH: Final = 16
DEFAULT_MAX_TRACE_CONTENT: Final = 10240
# Longer message ids are not indexed (a btree entry has a size limit), so no backend looks them up.
MAX_INDEXED_MESSAGE_ID: Final = 512

MESSAGE_CATEGORY: Final = "message"
TRACE_CATEGORY: Final = "trace"

Content = str | dict[str, Any] | list[Any]

# A fixed namespace so an event id derived from the same coordinates is the same on every machine.
_DERIVED_ID_NAMESPACE: Final = uuid_utils.UUID("5d0f3c8e-9a57-4c1e-8f0b-2b7f6c1d4e90")


# Control characters and lone surrogates in an id break file paths, PostgreSQL text and Kafka keys
# alike; they are never meaningful in one. A text column (and UTF-8) cannot hold NUL or a lone
# surrogate at all, whatever the field.
FORBIDDEN_IN_TEXT = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
_FORBIDDEN_IN_COLUMN = re.compile("[\x00\ud800-\udfff]")


def text_problem(value: str, *, control_allowed: bool = False) -> str | None:
    """Why `value` cannot be an id (or, `control_allowed`, a text column's value), or None."""
    found = (_FORBIDDEN_IN_COLUMN if control_allowed else FORBIDDEN_IN_TEXT).search(value)
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


def require_aware(value: datetime | None) -> datetime | None:
    if value is not None and value.utcoffset() is None:
        raise ValueError(
            "must be timezone-aware (a naive timestamp is ambiguous; add an offset such as +00:00)"
        )
    return value


def check_content(value: Any) -> Any:
    if not isinstance(value, str | dict | list):
        raise ValueError(f"must be a str, a dict or a list, got {type(value).__name__}")
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
    content: Annotated[Any, AfterValidator(check_content)] = ""
    metadata: Annotated[Any, AfterValidator(_check_metadata)] = None
    created_at: Annotated[
        datetime | None, BeforeValidator(_parse_created_at), AfterValidator(require_aware)
    ] = None
    user_id: Id | None = None


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


def first_problem(error: ValidationError) -> tuple[str, str]:
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
        field, problem = first_problem(exc)
        raise InvalidEventError(field, problem, index=index) from None
    content, content_json = _json_value(event.content, "content", index)
    metadata, metadata_json = _json_value(event.metadata or {}, "metadata", index)
    created = datetime.now(UTC) if event.created_at is None else event.created_at.astimezone(UTC)
    event_id = new_event_id() if event_id is None else event_id
    return prepared_from(
        event, content, content_json, metadata, metadata_json, event_id, created, max_trace_content, index
    )


class _EventFields(Protocol):
    # What `prepared_from` reads of a validated event: an `EventInput` or a put the envelope module
    # decoded. Structural, so this module need not import the envelope module, which imports it.
    @property
    def thread_id(self) -> str: ...
    @property
    def run_id(self) -> str: ...
    @property
    def event_type(self) -> str: ...
    @property
    def category(self) -> str: ...
    @property
    def user_id(self) -> str | None: ...


def prepared_from(
    event: _EventFields,
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


def message_id_of(category: str, content: Any) -> str | None:
    """The message id a message record carries in its dict content (`content["id"]`), if any."""
    if category != MESSAGE_CATEGORY or not isinstance(content, dict):
        return None
    value = content.get("id")
    return value if isinstance(value, str) else None


def prepare_events(
    events: Sequence[Mapping[str, Any]],
    *,
    max_trace_content: int | None = None,
    event_ids: Sequence[str] | None = None,
) -> list[PreparedEvent]:
    """Validate a whole batch before any of it is written; the first bad event names its index.

    `event_ids`: the ids the events keep (a retry of a write that may have reached the log), one per
    event, each a UUID; None gives each a new one.
    """
    if not isinstance(events, Sequence) or isinstance(events, str | bytes):
        raise InvalidEventError("events", f"must be a list of dicts, got {type(events).__name__}")
    ids: Sequence[str | None] = [None] * len(events) if event_ids is None else _checked_ids(event_ids, events)
    return [
        prepare_event(raw, index=i, max_trace_content=max_trace_content, event_id=ids[i])
        for i, raw in enumerate(events)
    ]


def _checked_ids(event_ids: Sequence[str], events: Sequence[Mapping[str, Any]]) -> list[str]:
    if isinstance(event_ids, str | bytes) or len(event_ids) != len(events):
        raise InvalidEventError("event_ids", f"must be a list of {len(events)} ids, one an event")
    checked = []
    for index, event_id in enumerate(event_ids):
        try:
            checked.append(str(uuid.UUID(str(event_id))))
        except ValueError:
            raise InvalidEventError("event_ids", f"{event_id!r} is not a UUID", index=index) from None
    if len(set(checked)) != len(checked):
        raise InvalidEventError("event_ids", "an id is given twice")
    return checked
