"""The prepared event: an input event validated and normalized, content and metadata serialized once."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import orjson
import uuid_utils

from runevents.errors import InvalidEventError
from runevents.events.codec import to_json
from runevents.events.input import (
    TRACE_CATEGORY,
    Content,
    Fields,
    column_problem,
    plain_fields,
    validated_fields,
)

_NUL_ESCAPE: Final = b"\\u0000"
# How a content kept whole in a blob is told apart: a string's UTF-8, or a dict's or list's JSON.
TEXT_MEDIA_TYPE: Final = "text/plain; charset=utf-8"
JSON_MEDIA_TYPE: Final = "application/json"
# A fixed namespace so an event id derived from the same coordinates is the same on every machine.
_DERIVED_ID_NAMESPACE: Final = uuid_utils.UUID("5d0f3c8e-9a57-4c1e-8f0b-2b7f6c1d4e90")


class PreparedEvent:
    """A validated, normalized event that only lacks its seq.

    `content_json` and `metadata_json` are the JSON of `content` and `metadata` as stored, kept so no
    backend serializes them twice; `created` is `created_at` as an aware datetime in UTC, for the
    backends whose column is a timestamp. `content` and `metadata` given as None are what their JSON
    decodes to, decoded when first read: a publish sends the JSON and never needs them. `created_at`
    given as None is `created` in ISO-8601, written when first read: the projector never needs it.
    """

    # Slots, not a frozen dataclass: a frozen dataclass sets each field through object.__setattr__,
    # a measurable share of preparing an event on the write path. Nothing mutates one once made.
    __slots__ = (
        "_content",
        "_created_at",
        "_metadata",
        "category",
        "content_json",
        "created",
        "event_id",
        "event_type",
        "full",
        "full_sealed_by",
        "metadata_json",
        "run_id",
        "thread_id",
        "user_id",
    )

    def __init__(
        self,
        thread_id: str,
        run_id: str,
        event_type: str,
        category: str,
        content: Content | None,
        metadata: dict[str, Any] | None,
        created_at: str | None,
        user_id: str | None,
        event_id: str,
        content_json: bytes,
        metadata_json: bytes,
        created: datetime,
    ) -> None:
        self.thread_id, self.run_id, self.event_type, self.category = thread_id, run_id, event_type, category
        self._content, self._metadata = content, metadata
        self._created_at, self.user_id, self.event_id = created_at, user_id, event_id
        self.content_json, self.metadata_json, self.created = content_json, metadata_json, created
        # A content cut to its preview (trace truncation): its whole bytes and their media type, for a
        # blob store to keep. Not part of the event's value: what is stored is the preview.
        self.full: tuple[bytes, str] | None = None
        # The data key `full`'s bytes are sealed with (runevents.crypto), if they are: the blob says so.
        self.full_sealed_by: str | None = None

    @property
    def content(self) -> Content:
        """The content: a str, or the dict or list `content_json` decodes to."""
        if self._content is None:
            self._content = orjson.loads(self.content_json)
        return self._content

    @property
    def created_at(self) -> str:
        """`created` in ISO-8601 with its +00:00 offset."""
        if self._created_at is None:
            self._created_at = self.created.isoformat()
        return self._created_at

    @property
    def metadata(self) -> dict[str, Any]:
        """The metadata: the dict `metadata_json` decodes to."""
        if self._metadata is None:
            self._metadata = orjson.loads(self.metadata_json)
        return self._metadata

    def with_metadata(self, metadata: dict[str, Any]) -> PreparedEvent:
        """The same event with other metadata (a blob's reference added)."""
        changed = PreparedEvent(
            self.thread_id,
            self.run_id,
            self.event_type,
            self.category,
            self._content,
            metadata,
            self._created_at,
            self.user_id,
            self.event_id,
            self.content_json,
            to_json(metadata),
            self.created,
        )
        changed.full = self.full
        changed.full_sealed_by = self.full_sealed_by
        return changed

    def _values(self) -> tuple[Any, ...]:
        return (
            self.thread_id,
            self.run_id,
            self.event_type,
            self.category,
            self.content,
            self.metadata,
            self.created_at,
            self.user_id,
            self.event_id,
            self.content_json,
            self.metadata_json,
            self.created,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PreparedEvent):
            return NotImplemented
        return self._values() == other._values()

    __hash__ = None  # type: ignore[assignment]  # equal by value and mutable, as the dataclass was

    def __repr__(self) -> str:
        return f"PreparedEvent{self._values()!r}"


def new_event_id() -> str:
    """A fresh UUIDv7 event id: unique and ordered by creation time."""
    return str(uuid_utils.uuid7())


def derived_event_id(*coordinates: str | int) -> str:
    """A deterministic event id for a record that was stored without one."""
    name = "\x1f".join(str(part) for part in coordinates)
    # uuid_utils' uuid5 is RFC 4122's, as the standard library's, at a tenth of the cost: a backfill
    # derives one for every record it reads.
    return str(uuid_utils.uuid5(_DERIVED_ID_NAMESPACE, name))


def _json_value(value: Any, field: str, index: int | None) -> tuple[str | None, bytes]:
    # Serializing once both checks the value and normalizes it (tuples become lists, non-JSON
    # values strings): every backend returns what its JSON decodes to (None here: decoded when
    # read), what a persistent one would read back. A str is its own normal form.
    try:
        encoded = to_json(value)
    except TypeError as exc:
        raise InvalidEventError(field, f"not JSON-serializable: {exc}", index=index) from None
    return (value if isinstance(value, str) else None), encoded


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


def cut_to_preview(event: PreparedEvent, max_bytes: int) -> PreparedEvent:
    """`event` with its content cut to a `max_bytes` preview, its whole bytes in `full` (as is if it fits)."""
    content = event.content
    if isinstance(content, str):
        full = (content.encode(), TEXT_MEDIA_TYPE)
    else:
        full = (event.content_json, JSON_MEDIA_TYPE)
    if len(full[0]) <= max_bytes:
        return event
    preview, metadata = truncate_trace(content, event.content_json, event.metadata, max_bytes)
    cut = PreparedEvent(
        event.thread_id,
        event.run_id,
        event.event_type,
        event.category,
        preview,
        metadata,
        event._created_at,
        event.user_id,
        event.event_id,
        to_json(preview),
        to_json(metadata),
        event.created,
    )
    cut.full = full
    return cut


def prepare_event(
    raw: Mapping[str, Any],
    *,
    index: int | None = None,
    max_trace_content: int | None = None,
    event_id: str | None = None,
) -> PreparedEvent:
    """Validate and normalize one event (a new id unless it brings one); raise `InvalidEventError`."""
    fields = plain_fields(raw)
    return prepared_from_fields(
        validated_fields(raw, index) if fields is None else fields,
        index=index,
        max_trace_content=max_trace_content,
        event_id=event_id,
    )


def prepared_from_fields(
    fields: Fields, *, index: int | None, max_trace_content: int | None, event_id: str | None
) -> PreparedEvent:
    """Normalize the fields of a validated event (content and metadata serialized once) into an event."""
    thread_id, run_id, event_type, category, raw_content, raw_metadata, created_at, user_id = fields
    content, content_json = _json_value(raw_content, "content", index)
    _, metadata_json = _json_value(raw_metadata or {}, "metadata", index)
    created = datetime.now(UTC) if created_at is None else created_at.astimezone(UTC)
    return _prepared(
        thread_id,
        run_id,
        event_type,
        category,
        user_id,
        content,
        content_json,
        None,
        metadata_json,
        new_event_id() if event_id is None else event_id,
        created,
        max_trace_content,
        index,
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
    """The prepared event of a validated one whose content and metadata are serialized."""
    return _prepared(
        event.thread_id,
        event.run_id,
        event.event_type,
        event.category,
        event.user_id,
        content,
        content_json,
        metadata,
        metadata_json,
        event_id,
        created,
        max_trace_content,
        index,
    )


def _prepared(
    thread_id: str,
    run_id: str,
    event_type: str,
    category: str,
    user_id: str | None,
    content: Content | None,
    content_json: bytes,
    metadata: dict[str, Any] | None,
    metadata_json: bytes,
    event_id: str,
    created: datetime,
    max_trace_content: int | None,
    index: int | None,
) -> PreparedEvent:
    # Only a string holding NUL is written with this escape (orjson writes no other for it): the
    # values need looking at, and decoding, only then.
    if _NUL_ESCAPE in content_json or _NUL_ESCAPE in metadata_json:
        content = orjson.loads(content_json) if content is None else content
        metadata = orjson.loads(metadata_json) if metadata is None else metadata
        problem = column_problem(category, content, metadata)
        if problem is not None:
            raise InvalidEventError(*problem, index=index)
    full: tuple[bytes, str] | None = None
    if max_trace_content is not None and category == TRACE_CATEGORY:
        size = len(content.encode()) if isinstance(content, str) else len(content_json)
        if size > max_trace_content:
            content = orjson.loads(content_json) if content is None else content
            metadata = orjson.loads(metadata_json) if metadata is None else metadata
            if isinstance(content, str):
                full = (content.encode(), TEXT_MEDIA_TYPE)
            else:
                full = (content_json, JSON_MEDIA_TYPE)
            content, metadata = truncate_trace(content, content_json, metadata, max_trace_content)
            content_json, metadata_json = to_json(content), to_json(metadata)
    prepared = PreparedEvent(
        thread_id,
        run_id,
        event_type,
        category,
        content,
        metadata,
        None,
        user_id,
        event_id,
        content_json,
        metadata_json,
        created,
    )
    prepared.full = full
    return prepared


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
