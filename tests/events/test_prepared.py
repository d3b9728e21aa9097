"""The prepared event decodes content and metadata from their JSON when read, not while preparing.

A publish only sends the JSON, so preparing no longer decodes it back; the NUL checks look at the JSON
first and at the values only where it holds a NUL escape, and trace truncation decodes only what it
cuts. The reference below is the eager preparation it replaces: same events, same errors.
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runevents.errors import InvalidEventError
from runevents.events import (
    TRACE_CATEGORY,
    PreparedEvent,
    make_record,
    new_event_id,
    prepare_event,
    to_json,
    truncate_trace,
)
from runevents.events.input import column_problem, validated_fields
from tests.events.test_plain_fields import BASE, FIELDS, JSON_VALUES, VALUES

_TRICKY = st.sampled_from(
    [
        {"id": "m\x00"},
        {"id": "back\\u0000slash"},
        {"id": ["m\x00"]},
        {"task_id": "t\x00", "caller": "c"},
        {"caller": "mid\x00dleware:x"},
        {"caller": 1, "task_id": None},
        {"nested": {"id": "m\x00"}},
        "x\x00" * 30,
        "é" * 30,
        [{"id": "m\x00"}],
    ]
)


def reference(raw: Any, index: int, limit: int | None, event_id: str) -> tuple[Any, ...]:
    """The eager preparation: serialize, decode back, check columns on the values, truncate."""
    thread_id, run_id, event_type, category, content, metadata, _, user_id = validated_fields(raw, index)
    values: list[tuple[Any, bytes]] = []
    for name, value in (("content", content), ("metadata", metadata or {})):
        try:
            encoded = to_json(value)
        except TypeError as exc:
            raise InvalidEventError(name, f"not JSON-serializable: {exc}", index=index) from None
        values.append((value if isinstance(value, str) else orjson.loads(encoded), encoded))
    (content, content_json), (metadata, metadata_json) = values
    problem = column_problem(category, content, metadata)
    if problem is not None:
        raise InvalidEventError(*problem, index=index)
    if limit is not None and category == TRACE_CATEGORY:
        cut, marked = truncate_trace(content, content_json, metadata, limit)
        if marked is not metadata:
            content, metadata = cut, marked
            content_json, metadata_json = to_json(content), to_json(metadata)
    return (
        thread_id,
        run_id,
        event_type,
        category,
        content,
        metadata,
        user_id,
        event_id,
        content_json,
        metadata_json,
    )


def _outcome(prepare: Any) -> Any:
    try:
        return prepare()
    except InvalidEventError as exc:
        return ("error", exc.field, exc.problem, exc.index)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    content=VALUES | _TRICKY | JSON_VALUES,
    metadata=st.none()
    | _TRICKY
    | st.dictionaries(st.sampled_from(["id", "task_id", "caller", "x"]), JSON_VALUES),
    category=st.sampled_from(["message", "trace", "other"]),
    limit=st.sampled_from([None, 5, 40, 10240]),
)
def test_preparing_gives_the_eager_preparation_s_events_and_errors(
    content: Any, metadata: Any, category: str, limit: int | None
):
    raw = BASE | {"content": content, "metadata": metadata, "category": category}
    event_id = new_event_id()
    prepared = _outcome(lambda: prepare_event(raw, index=2, max_trace_content=limit, event_id=event_id))
    eager = _outcome(lambda: reference(raw, 2, limit, event_id))
    if isinstance(prepared, PreparedEvent):
        prepared = tuple(getattr(prepared, name) for name in FIELDS)
    assert prepared == eager


def test_content_and_metadata_are_decoded_once_and_are_the_caller_s_own_copies():
    content, metadata = {"id": "m1", "parts": [1, (2, 3)]}, {"caller": "lead_agent"}
    event = prepare_event(BASE | {"content": content, "metadata": metadata})
    assert event.content == {"id": "m1", "parts": [1, [2, 3]]}
    assert event.content is event.content
    assert event.metadata is event.metadata
    assert event.content is not content
    assert event.metadata is not metadata
    content["id"] = "changed"
    assert make_record(event, 7)["content"]["id"] == "m1"


def test_prepared_events_compare_by_their_values_decoded_or_not():
    first = prepare_event(BASE | {"content": {"id": "m1"}}, event_id=new_event_id())
    second = prepare_event(BASE | {"content": {"id": "m1"}}, event_id=first.event_id)
    assert first.content == {"id": "m1"}  # decoded in one, not yet in the other
    assert first == second
    assert repr(first) == repr(second)
    assert first != prepare_event(BASE | {"content": {"id": "m2"}}, event_id=first.event_id)
