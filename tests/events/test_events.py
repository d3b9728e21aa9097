"""The envelope module on its own: messages, ids, truncation, normalization."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runevents.errors import InvalidEventError, RunEventsError
from runevents.events import (
    RunEventRecord,
    derived_event_id,
    make_record,
    new_event_id,
    prepare_event,
    prepare_events,
    to_json,
    truncate_trace,
)

GOOD = {"thread_id": "t", "run_id": "r", "event_type": "run.start", "category": "trace"}


def test_an_invalid_event_error_names_the_field_the_limit_and_the_batch_position() -> None:
    with pytest.raises(InvalidEventError) as caught:
        prepare_events([GOOD, {**GOOD, "thread_id": "x" * 65}])
    assert str(caught.value) == "events[1].thread_id: must be at most 64 characters (got 65)"
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, RunEventsError)
    with pytest.raises(InvalidEventError, match=r"^event_type: must be at most 32 characters \(got 33\)$"):
        prepare_event({**GOOD, "event_type": "e" * 33})
    with pytest.raises(InvalidEventError, match=r"^category: must be at most 16 characters \(got 17\)$"):
        prepare_event({**GOOD, "category": "c" * 17})
    with pytest.raises(InvalidEventError, match=r"^run_id: must not be empty$"):
        prepare_event({**GOOD, "run_id": ""})


@pytest.mark.parametrize("batch", ["not a list", b"bytes", 42, None])
def test_a_batch_that_is_not_a_list_is_an_invalid_event_error(batch: object) -> None:
    with pytest.raises(InvalidEventError, match=r"^events: must be a list of dicts"):
        prepare_events(batch)  # type: ignore[arg-type]


def test_an_event_that_is_not_a_dict_names_its_position() -> None:
    with pytest.raises(InvalidEventError, match=r"^events\[0\].event: must be a dict, got str$"):
        prepare_events(["thread_id=t"])  # type: ignore[list-item]


def test_created_at_comes_back_as_the_same_instant_in_utc() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    for given_as in (moment, moment.isoformat()):
        prepared = prepare_event({**GOOD, "created_at": given_as})
        assert prepared.created_at == "2026-01-01T21:34:05.678901+00:00"
    assert (
        prepare_event({**GOOD, "created_at": "2026-01-02T03:04:05Z"}).created_at
        == "2026-01-02T03:04:05+00:00"
    )


def test_created_at_defaults_to_now_in_utc() -> None:
    before = datetime.now(UTC)
    stamped = datetime.fromisoformat(prepare_event(GOOD).created_at)
    assert before <= stamped <= datetime.now(UTC)
    assert stamped.utcoffset() == timedelta(0)


def test_non_finite_floats_are_stored_as_null_as_json_requires() -> None:
    prepared = prepare_event({**GOOD, "content": {"nan": float("nan"), "inf": float("inf")}})
    assert prepared.content == {"nan": None, "inf": None}


def test_values_json_cannot_hold_are_stringified_and_tuples_become_lists() -> None:
    when = datetime(2026, 1, 1, tzinfo=UTC)
    ident = uuid.UUID(int=7)
    prepared = prepare_event(
        {**GOOD, "content": {"when": when, "id": ident, "pair": (1, 2)}, "metadata": {"tags": ("a",)}}
    )
    assert prepared.content == {"when": str(when), "id": str(ident), "pair": [1, 2]}
    assert prepared.metadata == {"tags": ["a"]}


def test_event_ids_are_time_ordered_uuid7s() -> None:
    ids = [new_event_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(uuid.UUID(i).version == 7 for i in ids)
    assert ids == sorted(ids)


def test_derived_event_ids_are_deterministic_and_distinct() -> None:
    assert derived_event_id("t", "r", 1) == derived_event_id("t", "r", 1)
    assert (
        len({derived_event_id("t", "r", 1), derived_event_id("t", "r", 2), derived_event_id("t", "r2", 1)})
        == 3
    )
    # The separator keeps ("a", "b-c") and ("a-b", "c") apart.
    assert derived_event_id("a", "b-c", 1) != derived_event_id("a-b", "c", 1)


# Lone surrogates never reach truncation: validation rejects them first.
@given(st.text(st.characters(exclude_categories=["Cs"])), st.integers(min_value=0, max_value=64))
def test_truncation_never_cuts_inside_a_character(text: str, limit: int) -> None:
    encoded = text.encode("utf-8")
    cut, metadata = truncate_trace(text, to_json(text), {"caller": "x"}, limit)
    assert isinstance(cut, str)
    if len(encoded) <= limit:
        assert (cut, metadata) == (text, {"caller": "x"})
        return
    assert text.startswith(cut)
    assert len(cut.encode("utf-8")) <= limit
    # Only the character the cut split is dropped, never more.
    assert limit - len(cut.encode("utf-8")) < 4
    assert metadata == {"caller": "x", "content_truncated": True, "original_byte_length": len(encoded)}


def test_the_record_model_reads_back_what_make_record_writes() -> None:
    record = make_record(prepare_event({**GOOD, "content": ["part"], "user_id": "u"}), 3)
    model = RunEventRecord.model_validate(record)
    assert (model.seq, model.content, model.user_id) == (3, ["part"], "u")
    schema = RunEventRecord.model_json_schema()
    assert set(schema["required"]) >= {"thread_id", "run_id", "seq", "event_id", "content", "created_at"}


def test_derived_event_ids_never_change_between_versions() -> None:
    # A backfill run again, by a later runevents, must derive the same ids or it would import twice.
    assert derived_event_id("thread-1", "run-1", 7) == "7ec6dbcf-8a7f-5c54-92d0-4e603a3d7e59"
