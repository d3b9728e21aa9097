"""The input event: its limits and its validation (normalizing it into a `PreparedEvent` is `prepared`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Final

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from runevents.errors import InvalidEventError

MAX_ID_LENGTH: Final = 64
MAX_EVENT_TYPE_LENGTH: Final = 32
MAX_CATEGORY_LENGTH: Final = 16
DEFAULT_MAX_TRACE_CONTENT: Final = 10240
# Longer message ids are not indexed (a btree entry has a size limit), so no backend looks them up.
MAX_INDEXED_MESSAGE_ID: Final = 512

MESSAGE_CATEGORY: Final = "message"
TRACE_CATEGORY: Final = "trace"

Content = str | dict[str, Any] | list[Any]

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


# The fields of a validated input event: thread_id, run_id, event_type, category, content, metadata,
# created_at (aware, or None for now) and user_id, as `EventInput` has them.
Fields = tuple[str, str, str, str, Any, Any, datetime | None, str | None]

_FIELD_NAMES: Final = frozenset(EventInput.model_fields)


def validated_fields(raw: Mapping[str, Any], index: int | None = None) -> Fields:
    """The fields of a valid input event as `EventInput` validates them; raise `InvalidEventError`."""
    if not isinstance(raw, Mapping):
        raise InvalidEventError("event", f"must be a dict, got {type(raw).__name__}", index=index)
    try:
        event = EventInput.model_validate(raw)
    except ValidationError as exc:
        field, problem = first_problem(exc)
        raise InvalidEventError(field, problem, index=index) from None
    return (
        event.thread_id,
        event.run_id,
        event.event_type,
        event.category,
        event.content,
        event.metadata,
        event.created_at,
        event.user_id,
    )


def plain_fields(raw: Any) -> Fields | None:
    """The fields of an event that is plainly valid (what `validated_fields` gives), else None.

    The fast path of the write path: plain dicts of plain str ids, checked in a few comparisons instead
    of a model validation. It takes a subset of what `EventInput` takes and declines everything else,
    which `validated_fields` then accepts or refuses with its reason; a test holds the two to the same
    fields on whatever this one takes.
    """
    if type(raw) is not dict or not _FIELD_NAMES.issuperset(raw):
        return None
    thread_id, run_id = raw.get("thread_id"), raw.get("run_id")
    event_type, category = raw.get("event_type"), raw.get("category")
    user_id, created_at = raw.get("user_id"), raw.get("created_at")
    content, metadata = raw.get("content", ""), raw.get("metadata")
    if not (
        type(thread_id) is str
        and type(run_id) is str
        and type(event_type) is str
        and type(category) is str
        and 0 < len(thread_id) <= MAX_ID_LENGTH
        and 0 < len(run_id) <= MAX_ID_LENGTH
        and 0 < len(event_type) <= MAX_EVENT_TYPE_LENGTH
        and 0 < len(category) <= MAX_CATEGORY_LENGTH
        and (user_id is None or (type(user_id) is str and 0 < len(user_id) <= MAX_ID_LENGTH))
        and isinstance(content, str | dict | list)
        and (metadata is None or isinstance(metadata, dict))
    ):
        return None
    ids = thread_id + run_id + event_type + category + (user_id or "")
    # Printable ASCII, the usual id, cannot hold a forbidden character; only others need the search.
    if not (ids.isascii() and ids.isprintable()) and FORBIDDEN_IN_TEXT.search(ids) is not None:
        return None
    if created_at is not None:
        if type(created_at) is str:
            try:
                created_at = datetime.fromisoformat(created_at)
            except ValueError:
                return None
        elif type(created_at) is not datetime:
            return None
        if created_at.utcoffset() is None:
            return None
    return thread_id, run_id, event_type, category, content, metadata, created_at, user_id


def column_problem(category: str, content: Content, metadata: dict[str, Any]) -> tuple[str, str] | None:
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
