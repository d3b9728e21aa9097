"""The envelope on the topic: the published JSON Schema, encoding and decoding."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runevents.bus.producer import EventProducer
from runevents.errors import InvalidQueryError
from runevents.events import (
    PUT,
    PUT_IF_ABSENT,
    SCHEMA_FILE,
    DeleteRunEnvelope,
    UndecodableRecordError,
    decode_record,
    encode_delete,
    encode_put,
    envelope,
    envelope_json_schema_text,
    prepare_event,
)

EVENT = {
    "thread_id": "t1",
    "run_id": "r1",
    "event_type": "llm.ai.response",
    "category": "message",
    "content": {"id": "m1", "content": "hi \u2028 there", "tool_calls": []},
    "metadata": {"caller": "lead_agent", "usage": {"input_tokens": 3}},
    "user_id": "u1",
}


def test_the_published_schema_file_is_what_the_models_generate():
    assert SCHEMA_FILE.read_text(encoding="utf-8") == envelope_json_schema_text(), (
        "runevents/schemas/run-event.v1.json lags the envelope models: run `make schema`"
    )


def test_the_schema_describes_every_op_and_requires_the_envelope_fields():
    schema = orjson.loads(SCHEMA_FILE.read_bytes())
    ops = {
        name: definition["properties"]["op"]
        for name, definition in schema["$defs"].items()
        if "op" in definition["properties"]
    }
    plain, sealed = schema["anyOf"]
    assert sealed == {"$ref": "#/$defs/SealedPutEnvelope"}
    assert set(plain["discriminator"]["mapping"]) == {
        "put",
        "put_if_absent",
        "delete_thread",
        "delete_run",
        "expire",
        "set_retention",
    }
    assert ops["PutEnvelope"]["enum"] == ["put", "put_if_absent"]
    put = schema["$defs"]["PutEnvelope"]
    assert {"v", "event_id", "thread_id", "op", "run_id", "event_type", "category"} <= set(put["required"])
    # A sealed put: the same clear fields, `sealed` in place of content and metadata.
    assert ops["SealedPutEnvelope"]["enum"] == ["put", "put_if_absent"]
    sealed_put = schema["$defs"]["SealedPutEnvelope"]
    assert {"v", "event_id", "thread_id", "op", "run_id", "sealed"} <= set(sealed_put["required"])
    assert "content" not in sealed_put["properties"]
    assert set(schema["$defs"]["SealedPart"]["required"]) == {"key", "nonce", "data"}


def test_a_put_decodes_to_the_event_that_was_encoded():
    prepared = prepare_event(EVENT)
    value = encode_put(prepared)
    document = orjson.loads(value)
    assert (document["v"], document["op"]) == (1, "put")
    assert document["content"] == EVENT["content"]
    assert decode_record(value) == prepared


def test_put_if_absent_and_deletes_decode_to_their_ops():
    prepared = prepare_event(EVENT)
    assert decode_record(encode_put(prepared, PUT_IF_ABSENT)) == (PUT_IF_ABSENT, prepared)
    delete = decode_record(encode_delete(prepared.event_id, "t1", "r1"))
    assert isinstance(delete, DeleteRunEnvelope)
    assert (delete.thread_id, delete.run_id, delete.event_id) == ("t1", "r1", prepared.event_id)


def test_unknown_fields_are_ignored_within_a_version():
    document = orjson.loads(encode_put(prepare_event(EVENT)))
    document["added_in_a_later_release"] = {"x": 1}
    decoded = decode_record(orjson.dumps(document))
    assert not isinstance(decoded, tuple)
    assert decoded.thread_id == "t1"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "no value"),
        (b"\xff not json", "not JSON"),
        (b"[1, 2]", "JSON list, not an object"),
        (b'{"v": 2, "op": "put"}', "envelope version 2"),
        (b'{"v": 1, "op": "explode", "event_id": "x", "thread_id": "t"}', "op"),
        (
            b'{"v": 1, "op": "delete_thread", "event_id": "not-a-uuid", "thread_id": "t1"}',
            "event_id",
        ),
    ],
)
def test_a_bad_record_is_refused_with_a_reason(value: bytes | None, reason: str):
    with pytest.raises(UndecodableRecordError, match=reason):
        decode_record(value)


def test_a_put_breaking_the_event_rules_is_refused_naming_the_field():
    document = orjson.loads(encode_put(prepare_event(EVENT)))
    document["thread_id"] = "x" * 65
    with pytest.raises(UndecodableRecordError, match="thread_id must be at most 64"):
        decode_record(orjson.dumps(document))
    document["thread_id"] = "t1"
    document["created_at"] = "2026-01-01T00:00:00"
    with pytest.raises(UndecodableRecordError, match="created_at must be timezone-aware"):
        decode_record(orjson.dumps(document))


# The projector decodes puts on a msgspec fast path and falls back to the pydantic models for
# anything it declines. It must never take what the models refuse, nor decode anything differently.
_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=70) | st.sampled_from(
    ["", "t1", "x" * 64, "x" * 65, "a\x00b", "tab\there", "é" * 64, "\x7f"]
)
_TIMESTAMPS = (
    st.sampled_from(
        [
            "2026-01-01T00:00:00+00:00",
            "2026-01-01T00:00:00Z",
            "2026-01-01T00:00:00z",
            "2026-01-01T00:00:00.5+05:30",
            "2026-01-01T00:00:00.123456-08:00",
            "2026-01-01T00:00:00.1234567Z",
            "2026-01-01 00:00:00+00:00",
            "2026-01-01T00:00:00",
            "2026-01-01T24:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-01-01T00:00:60Z",
            "2026-01-01T00:00Z",
            "2026-01-01T00:00:00+0100",
            "2026-01-01T00:00:00+24:00",
            "2026-01-01",
        ]
    )
    | st.integers()
    | st.none()
)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=8,
)
_FIELDS = {
    "v": st.sampled_from([1, 1.0, True, 2, "1"]),
    "op": st.sampled_from(["put", "put_if_absent", "delete_run", "PUT", 1]),
    "event_id": st.sampled_from(
        ["0190a5c6-0000-7000-8000-000000000001", "0190A5C6-0000-7000-8000-000000000001", "x"]
    ),
    "thread_id": _TEXT,
    "run_id": _TEXT,
    "event_type": _TEXT,
    "category": st.sampled_from(["message", "trace", "x" * 17, ""]) | _TEXT,
    "content": _JSON,
    "metadata": _JSON,
    "created_at": _TIMESTAMPS,
    "user_id": st.none() | _TEXT,
}


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    changes=st.dictionaries(st.sampled_from(sorted(_FIELDS)), st.none(), max_size=4).flatmap(
        lambda chosen: st.fixed_dictionaries({name: _FIELDS[name] for name in chosen})
    ),
    dropped=st.sets(st.sampled_from(sorted(_FIELDS)), max_size=1),
    trace_limit=st.sampled_from([None, 40]),
)
def test_the_fast_path_decodes_only_what_the_models_take_and_to_the_same_event(
    changes: dict[str, Any], dropped: set[str], trace_limit: int | None
):
    document = orjson.loads(encode_put(prepare_event(EVENT))) | changes
    for name in dropped:
        document.pop(name, None)
    try:
        value = orjson.dumps(document)
    except TypeError:
        return  # not JSON that could be on a topic (an integer past 64 bits)
    fast = envelope._decode_put_fast(value, trace_limit)
    if fast is None:
        return
    assert envelope._decode_validated(value, trace_limit) == fast


def test_the_fast_path_takes_what_the_producer_writes():
    for op in (PUT, PUT_IF_ABSENT):
        value = encode_put(prepare_event(EVENT), op)
        assert envelope._decode_put_fast(value, None) is not None, f"a {op} record fell back to the slow path"


@pytest.mark.parametrize(
    ("changed", "field"),
    [
        ({"content": {"id": "m\u0000"}}, "content.id"),
        ({"metadata": {"task_id": "t\u0000"}}, "metadata.task_id"),
        ({"metadata": {"caller": "mid\u0000dleware:x"}}, "metadata.caller"),
    ],
)
@pytest.mark.parametrize("created_at", ["2026-01-01T00:00:00+00:00", "2026-01-01T00:00:00.1234567+00:00"])
def test_a_record_with_nul_in_a_column_field_is_undecodable(
    changed: dict[str, Any], field: str, created_at: str
) -> None:
    # Both decoding paths (the second timestamp is one only the validated path reads) refuse it, as a
    # writer's validation would: the projector dead-letters it instead of storing what a read cannot.
    document = {
        "v": 1,
        "op": "put",
        "event_id": "0190a6f0-8c2e-7b3a-9e4f-1a2b3c4d5e6f",
        **EVENT,
        "created_at": created_at,
        **changed,
    }
    with pytest.raises(UndecodableRecordError, match=field):
        decode_record(orjson.dumps(document))


async def test_a_delete_of_a_run_needs_the_run() -> None:
    # Before, publish_delete(thread, None) published a delete of the whole thread.
    producer = EventProducer("127.0.0.1:9", topic="never-reached")
    with pytest.raises(InvalidQueryError, match="run_id"):
        await producer.publish_delete_run("t1", None)  # type: ignore[arg-type]
    with pytest.raises(InvalidQueryError, match="thread_id"):
        await producer.publish_delete_thread("")
    await producer.stop()


@pytest.mark.parametrize("depth", [300, 999, 1000, 1023, 1100, 5000])
def test_content_nested_past_the_recursion_limit_is_undecodable_not_a_crash(depth: int) -> None:
    # A foreign producer's record: msgspec raises RecursionError for it, which would have escaped the
    # decoder and failed every retry of the batch (a poison record) instead of going to the dead letters.
    document = orjson.loads(encode_put(prepare_event(EVENT)))
    value = orjson.dumps(document).replace(b'"content":', b'"content":' + b"[" * depth, 1)
    value = value.replace(b',"metadata"', b"]" * depth + b',"metadata"', 1)
    with pytest.raises(UndecodableRecordError, match="JSON"):  # not JSON, or not storable JSON
        decode_record(value)
