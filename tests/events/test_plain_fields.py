"""The write path's fast validation (`plain_fields`) against the model's (`validated_fields`).

Every backend prepares events through `prepare_event`, which takes the fields of a plainly valid event
on a fast path and leaves everything else to the pydantic model. The fast path must never take what
the model refuses, nor take anything differently: same fields, so the same prepared event, and every
error still the model's.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.events import make_event
from runevents.errors import InvalidEventError
from runevents.events import PreparedEvent, new_event_id, prepare_event
from runevents.events.input import plain_fields, validated_fields
from runevents.events.prepared import prepared_from_fields


class _Str(str):
    pass


class _Dict(dict[str, Any]):
    pass


class _Moment(datetime):
    pass


_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=70) | st.sampled_from(
    [
        "",
        "t1",
        "x" * 16,
        "x" * 17,
        "x" * 32,
        "x" * 33,
        "x" * 64,
        "x" * 65,
        "a\x00b",
        "tab\there",
        "é" * 64,
        "\x7f",
        "\u2028",
        "\ud800",
        "ok\udfff",
        "日本語",
        " ",
        "a b",
    ]
)
_ID = _TEXT | st.sampled_from([_Str("t1"), b"t1", 1, None, ["t1"]])
_DATETIMES = st.sampled_from(
    [
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 1, 1, 12, 30, 0, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(2026, 3, 29, 2, 30, tzinfo=ZoneInfo("Europe/Paris")),
        datetime(2026, 1, 1),
        _Moment(2026, 1, 1, tzinfo=UTC),
    ]
)
_TIMESTAMPS = (
    st.sampled_from(
        [
            "2026-01-01T00:00:00+00:00",
            "2026-01-01T00:00:00Z",
            "2026-01-01T00:00:00.5+05:30",
            "2026-01-01 00:00:00-08:00",
            "2026-01-01T00:00:00",
            "2026-01-01",
            "2026-02-30T00:00:00Z",
            "yesterday",
            "",
        ]
    )
    | _DATETIMES
    | st.none()
    | st.integers()
    | st.just(_Str("2026-01-01T00:00:00+00:00"))
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=8,
)
VALUES = JSON_VALUES | st.sampled_from([(1, 2), _Dict(a=1), {1: "x"}, {"id": "m\x00"}, {"task_id": "t\x00"}])
_FIELDS: dict[Any, st.SearchStrategy[Any]] = {
    "thread_id": _ID,
    "run_id": _ID,
    "event_type": _ID,
    "category": st.sampled_from(["message", "trace", "x" * 16, "x" * 17, ""]) | _ID,
    "content": VALUES,
    "metadata": VALUES,
    "created_at": _TIMESTAMPS,
    "user_id": _ID,
    "seq": st.integers(),
    1: st.just("x"),
}
# What a prepared event holds besides its timestamps.
FIELDS = (
    "thread_id",
    "run_id",
    "event_type",
    "category",
    "content",
    "metadata",
    "user_id",
    "event_id",
    "content_json",
    "metadata_json",
)
BASE = make_event("thread-1", "run-1", 1) | {"user_id": "user-1", "created_at": "2026-01-01T00:00:00+00:00"}


def _events() -> st.SearchStrategy[Any]:
    """Mostly valid events with a few fields changed or dropped, and some that are not dicts at all."""
    changed = st.dictionaries(st.sampled_from(sorted(_FIELDS, key=str)), st.none(), max_size=3).flatmap(
        lambda chosen: st.fixed_dictionaries({name: _FIELDS[name] for name in chosen})
    )
    dropped = st.sets(st.sampled_from(sorted(BASE)), max_size=2)
    dicts = st.builds(
        lambda changes, gone: {k: v for k, v in (BASE | changes).items() if k not in gone}, changed, dropped
    )
    return dicts | st.builds(_Dict, dicts) | st.sampled_from([None, [], "event", 1])


def _plain_prepared(raw: Any, index: int, event_id: str, limit: int | None) -> PreparedEvent:
    """`prepare_event` on the model's path only."""
    return prepared_from_fields(
        validated_fields(raw, index), index=index, max_trace_content=limit, event_id=event_id
    )


def _outcome(prepare: Any, *, timed: bool) -> Any:
    """What a preparation gives: the event's fields (its times if `timed`), or the error's."""
    try:
        event = prepare()
    except InvalidEventError as exc:
        return ("error", exc.field, exc.problem, exc.index)
    fields = [getattr(event, name) for name in FIELDS]
    return [*fields, event.created_at, event.created] if timed else fields


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=_events())
def test_the_fast_path_takes_only_what_the_model_takes_and_the_same_fields(raw: Any):
    fast = plain_fields(raw)
    try:
        model = validated_fields(raw)
    except InvalidEventError:
        assert fast is None, f"the fast path took an event the model refuses: {raw!r}"
        return
    if fast is not None:
        assert fast == model
        # Equal is not enough for a timestamp (equal instants at other offsets): the very same value.
        assert repr(fast[6]) == repr(model[6])


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=_events(), limit=st.sampled_from([None, 40, 10240]))
def test_prepare_event_gives_what_the_model_path_gives_events_and_errors(raw: Any, limit: int | None):
    event_id = new_event_id()
    # No timestamp given: each call takes its own now.
    timed = not isinstance(raw, dict) or raw.get("created_at") is not None
    fast = _outcome(
        lambda: prepare_event(raw, index=3, max_trace_content=limit, event_id=event_id), timed=timed
    )
    plain = _outcome(lambda: _plain_prepared(raw, 3, event_id, limit), timed=timed)
    assert fast == plain


@pytest.mark.parametrize("index", range(4))
def test_the_fast_path_takes_the_events_the_benchmarks_write(index: int):
    event = make_event("thread-1", "run-1", index)
    assert plain_fields(event) is not None
    assert plain_fields(event | {"user_id": "u1", "created_at": "2026-01-01T00:00:00+00:00"}) is not None
    assert plain_fields(event | {"created_at": datetime.now(UTC), "metadata": None}) is not None
