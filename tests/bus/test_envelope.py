"""The envelope on the topic: the published JSON Schema, encoding and decoding."""

from __future__ import annotations

import orjson
import pytest

from runevents.events import (
    PUT_IF_ABSENT,
    SCHEMA_FILE,
    DeleteRunEnvelope,
    UndecodableRecordError,
    decode_record,
    encode_delete,
    encode_put,
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
    ops = {name: definition["properties"]["op"] for name, definition in schema["$defs"].items()}
    assert set(schema["discriminator"]["mapping"]) == {"put", "put_if_absent", "delete_thread", "delete_run"}
    assert ops["PutEnvelope"]["enum"] == ["put", "put_if_absent"]
    put = schema["$defs"]["PutEnvelope"]
    assert {"v", "event_id", "thread_id", "op", "run_id", "event_type", "category"} <= set(put["required"])


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
