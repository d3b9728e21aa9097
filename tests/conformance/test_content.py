"""Content and metadata (guarantees 5, 7, 10): round trips, normalization, isolation, Unicode, truncation."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest

from runevents.store import RunEventStore
from tests.backends.registry import Backend
from tests.conformance.builders import assert_same, event, message, opened, run_records, trace

OPENAI_PARTS: list[Any] = [
    {"type": "text", "text": "What is in this image?"},
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "auto"}},
    {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
    [{"nested": [1, [2, [3, {"deep": True}]]]}],
]
LANGCHAIN_AI_MESSAGE: dict[str, Any] = {
    "type": "ai",
    "id": "run-7f3c-0",
    "content": [{"type": "text", "text": "Searching."}],
    "tool_calls": [{"name": "search", "args": {"q": "kafka", "k": 3}, "id": "call_1", "type": "tool_call"}],
    "additional_kwargs": {},
    "response_metadata": {"finish_reason": "tool_calls", "model_name": "gpt-4o"},
    "usage_metadata": None,
    "example": False,
}
CONTENTS: list[Any] = [
    pytest.param("", id="empty-str"),
    pytest.param("plain text", id="str"),
    pytest.param('{"a": 1}', id="str-that-looks-like-a-dict"),
    pytest.param("[1, 2]", id="str-that-looks-like-a-list"),
    pytest.param("null", id="str-null"),
    pytest.param("123", id="str-number"),
    pytest.param("true", id="str-true"),
    pytest.param('"quoted"', id="str-quoted"),
    pytest.param({}, id="empty-dict"),
    pytest.param([], id="empty-list"),
    pytest.param(LANGCHAIN_AI_MESSAGE, id="langchain-message"),
    pytest.param(OPENAI_PARTS, id="openai-content-parts"),
    pytest.param(
        {"int": 1, "float": 1.0, "frac": 0.1, "neg": -2.25, "true": True, "false": False, "none": None},
        id="json-scalars",
    ),
    pytest.param({"big": 2**63 - 1, "small": -(2**63), "zero": 0}, id="big-ints"),
    pytest.param(["a", 1, 1.5, None, True, {"k": []}], id="mixed-list"),
    pytest.param({"content_is_json": True, "content_is_dict": False}, id="dict-with-marker-names"),
]
METADATAS: list[Any] = [
    pytest.param({"caller": "agent", "task_id": "k1"}, id="flat"),
    pytest.param({"nested": {"a": [1, {"b": None}], "c": 1.0}, "flag": False}, id="nested"),
    pytest.param({"content_is_json": "user value"}, id="user-key-named-like-a-marker"),
]


@pytest.mark.parametrize("content", CONTENTS)
@pytest.mark.parametrize("category", ["message", "trace", "lifecycle"])
async def test_content_comes_back_as_written(store: RunEventStore, content: Any, category: str) -> None:
    record = await store.put(**event(category=category, content=content))
    assert_same(record["content"], content)
    assert type(record["content"]) is type(content)
    assert record["metadata"] == {}
    (read,) = await run_records(store, "t1", "r1")
    assert_same(read, record)
    (batched,) = await store.put_batch([event(category=category, content=content)])
    assert_same(batched["content"], content)
    if category == "message":
        assert_same([r["content"] for r in await store.list_messages("t1")], [content, content])


@pytest.mark.parametrize("metadata", METADATAS)
@pytest.mark.parametrize("content", ["text", {"k": "v"}, [{"type": "text", "text": "x"}]])
async def test_metadata_comes_back_exactly_as_written(
    store: RunEventStore, metadata: Any, content: Any
) -> None:
    record = await store.put(**message(content=content, metadata=metadata))
    assert_same(record["metadata"], metadata)
    (read,) = await store.list_messages("t1")
    assert_same(read["metadata"], metadata)
    assert_same(read["content"], content)


async def test_no_storage_markers_leak_into_metadata(store: RunEventStore) -> None:
    written = await store.put_batch(
        [
            message(content="s"),
            message(content={"d": 1}),
            message(content=[1]),
            trace(content={"d": 2}, metadata={"x": 1}),
            message(content=[], metadata={}),
        ]
    )
    expected = [{}, {}, {}, {"x": 1}, {}]
    assert [r["metadata"] for r in written] == expected
    assert [r["metadata"] for r in await run_records(store, "t1", "r1")] == expected


async def test_tuples_come_back_as_lists(store: RunEventStore) -> None:
    record = await store.put(
        **message(
            content={"pair": (1, "a"), "nested": [(2, (3, 4))]},
            metadata={"tags": ("x", "y"), "empty": ()},
        )
    )
    (listed,) = await store.put_batch([message(content=[(1, 2), {"t": ()}])])
    expected_content = {"pair": [1, "a"], "nested": [[2, [3, 4]]]}
    expected_metadata = {"tags": ["x", "y"], "empty": []}
    assert_same(record["content"], expected_content)
    assert_same(record["metadata"], expected_metadata)
    assert_same(listed["content"], [[1, 2], {"t": []}])
    first, second = await store.list_messages("t1")
    assert_same((first["content"], first["metadata"]), (expected_content, expected_metadata))
    assert_same(second["content"], [[1, 2], {"t": []}])


class Custom:
    def __str__(self) -> str:
        return "custom value"


class Colour(enum.Enum):
    RED = "red"


@dataclass
class Point:
    x: int
    y: int


NON_JSON: list[Any] = [
    pytest.param(datetime(2024, 5, 1, 10, 30, 45, 123456, tzinfo=UTC), id="datetime"),
    pytest.param(uuid.UUID("0190a6f0-8c2e-7b3a-9e4f-1a2b3c4d5e6f"), id="uuid"),
    pytest.param(Decimal("1.10"), id="decimal"),
    pytest.param({"only"}, id="set"),
    pytest.param(Custom(), id="object"),
    pytest.param(date(2024, 5, 1), id="date"),
    pytest.param(Point(1, 2), id="dataclass"),
    pytest.param(b"raw", id="bytes"),
]


@pytest.mark.parametrize("value", NON_JSON)
async def test_values_json_cannot_hold_are_stringified(store: RunEventStore, value: Any) -> None:
    record = await store.put(
        **message(content={"value": value, "list": [value]}, metadata={"value": value, "n": {"v": value}})
    )
    text = str(value)
    assert_same(record["content"], {"value": text, "list": [text]})
    assert_same(record["metadata"], {"value": text, "n": {"v": text}})
    (read,) = await store.list_messages("t1")
    assert_same(read, record)


async def test_nan_and_infinity_become_null(store: RunEventStore) -> None:
    # JSON has no such numbers; orjson writes null, and so every backend returns None (README).
    record = await store.put(
        **message(content={"a": float("nan"), "b": [float("inf")]}, metadata={"c": float("-inf"), "d": 1.5})
    )
    assert_same(record["content"], {"a": None, "b": [None]})
    assert_same(record["metadata"], {"c": None, "d": 1.5})
    (read,) = await store.list_messages("t1")
    assert_same(read, record)


async def test_a_datetime_inside_content_is_its_str(store: RunEventStore) -> None:
    # str(), as deer-flow's json.dumps(default=str): a space between date and time, not ISO's T.
    moment = datetime(2024, 5, 1, 10, 30, 45, 123456, tzinfo=UTC)
    record = await store.put(**message(content={"at": moment}, metadata={"s": {7}}))
    assert_same(record["content"], {"at": "2024-05-01 10:30:45.123456+00:00"})
    assert_same(record["metadata"], {"s": "{7}"})


async def test_an_enum_is_stored_as_its_value(store: RunEventStore) -> None:
    # Pinned where the contract is silent: orjson writes an Enum's value, which is what a reader of
    # the record wants; deer-flow's json.dumps(default=str) would have written "Colour.RED".
    record = await store.put(**message(content={"value": Colour.RED}, metadata={"c": [Colour.RED]}))
    assert_same(record["content"], {"value": "red"})
    assert_same(record["metadata"], {"c": ["red"]})
    (read,) = await store.list_messages("t1")
    assert_same(read, record)


# --- isolation -------------------------------------------------------------------------------------


async def test_a_returned_record_is_not_the_stored_one(store: RunEventStore) -> None:
    record = await store.put(
        **message(content={"parts": [{"text": "a"}]}, metadata={"tags": ["x"], "n": {"k": 1}})
    )
    pristine = orjson.loads(orjson.dumps(record))
    record["content"]["parts"][0]["text"] = "changed"
    record["content"]["new"] = True
    record["metadata"]["tags"].append("y")
    record["metadata"]["n"]["k"] = 2
    record["seq"] = 99
    (read,) = await store.list_messages("t1")
    assert read == pristine
    read["content"]["parts"].clear()
    read["metadata"].clear()
    assert await store.list_messages("t1") == [pristine]
    assert await run_records(store, "t1", "r1") == [pristine]
    (batched,) = await store.put_batch([trace(content=["a", {"b": 1}], metadata={"m": [1]})])
    batched_pristine = orjson.loads(orjson.dumps(batched))
    batched["content"][1]["b"] = 2
    batched["metadata"]["m"].append(2)
    assert await run_records(store, "t1", "r1") == [pristine, batched_pristine]


async def test_a_record_from_put_if_absent_is_not_the_stored_one(store: RunEventStore) -> None:
    created, _ = await store.put_if_absent(**message(event_type="run.end", content={"a": [1]}))
    pristine = orjson.loads(orjson.dumps(created))
    created["content"]["a"].append(2)
    found, was_created = await store.put_if_absent(**message(event_type="run.end"))
    assert not was_created
    assert found == pristine
    found["content"]["a"].append(3)
    assert await store.list_messages("t1") == [pristine]


async def test_changing_the_callers_input_after_put_changes_nothing(store: RunEventStore) -> None:
    content: dict[str, Any] = {"parts": [{"text": "a"}]}
    metadata: dict[str, Any] = {"tags": ["x"]}
    parts: list[Any] = [{"type": "text", "text": "p"}]
    await store.put(**message(content=content, metadata=metadata))
    batch = [message(content=parts, metadata={"m": 1}), trace(content={"t": [1]})]
    await store.put_batch(batch)
    receipt_content: dict[str, Any] = {"r": 1}
    await store.put_if_absent(**message(event_type="run.end", content=receipt_content))
    content["parts"][0]["text"] = "changed"
    content["extra"] = 1
    metadata["tags"].append("y")
    parts.append({"type": "text", "text": "q"})
    batch[0]["metadata"]["m"] = 2
    batch[1]["content"]["t"].append(2)
    receipt_content["r"] = 2
    assert [(r["content"], r["metadata"]) for r in await run_records(store, "t1", "r1")] == [
        ({"parts": [{"text": "a"}]}, {"tags": ["x"]}),
        ([{"type": "text", "text": "p"}], {"m": 1}),
        ({"t": [1]}, {}),
        ({"r": 1}, {}),
    ]


# --- Unicode (guarantee 10) --------------------------------------------------------------------------

TEXTS: dict[str, str] = {
    "line-separators": "a\u2028b\u2029c",
    "cr-lf": "one\rtwo\nthree\r\nfour",
    "nul": "nul\x00byte\x00",
    "controls": "\x01\x0b\x0c\x1c\x1d\x1e\x1b[31m\x07\x7f\x85",
    "emoji": "🧪 👩\u200d👩\u200d👧 🇩🇪",
    "cjk": "中文 日本語 한국어",
    "rtl": "עברית العربية \u200f!",
    "combining": "e\u0301 a\u0308",
    "bom-and-nonchars": "\ufeffx\ufffe\uffff",
    "astral": "𝄞 \U0010fffd",
    "json-specials": 'a\\"b\\\\n\t"',
}


def unicode_events(thread_id: str) -> list[dict[str, Any]]:
    events = []
    for name, text in TEXTS.items():
        events.append(message(thread_id, content=text, metadata={"text": text, text: name}))
        events.append(trace(thread_id, content={"text": text, text: [text]}, metadata={"n": {"t": text}}))
        events.append(
            message(thread_id, content=[{"type": "text", "text": text}, text], metadata={"p": [text]})
        )
    return events


async def test_any_unicode_round_trips(store: RunEventStore) -> None:
    events = unicode_events("t1")
    written = await store.put_batch(events)
    for given, record in zip(events, written, strict=True):
        assert_same(record["content"], given["content"])
        assert_same(record["metadata"], given["metadata"])
    assert await run_records(store, "t1", "r1") == written
    assert await store.list_messages("t1", limit=1000) == [r for r in written if r["category"] == "message"]
    one_by_one = [await store.put(**given) for given in events]
    assert [r["content"] for r in one_by_one] == [r["content"] for r in written]


async def test_any_unicode_survives_reopening(backend: Backend) -> None:
    events = unicode_events("t1")
    async with opened(backend) as first:
        written = await first.put_batch(events)
        after = await first.put(**message(content="after"))
    if not backend.persistent:
        return
    async with opened(backend) as second:
        assert await run_records(second, "t1", "r1") == [*written, after]
        assert (await second.put(**message()))["seq"] == len(events) + 2


async def test_unicode_user_ids_and_event_types_round_trip(store: RunEventStore) -> None:
    user_id = "用户🧪\u2028x"
    record = await store.put(**message(user_id=user_id, event_type="ответ.ai", content="x"))
    await store.put(**message(user_id="other"))
    assert (record["user_id"], record["event_type"]) == (user_id, "ответ.ai")
    assert await store.list_messages("t1", user_id=user_id) == [record]
    assert await store.list_events("t1", "r1", event_types=["ответ.ai"]) == [record]
    assert await store.count_messages("t1", user_id=user_id) == 1


# --- trace truncation (guarantee 7) -----------------------------------------------------------------

LIMIT = 16


def utf8(text: str) -> int:
    return len(text.encode("utf-8"))


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param("abcdefghijklmnopqrstuvwxyz0123456789", "abcdefghijklmnop", id="ascii"),
        pytest.param("a" * 17, "a" * 16, id="one-byte-over"),
        # A 4-byte emoji over bytes 16-19 is dropped whole.
        pytest.param("abcdefghijklmno🧪xyz", "abcdefghijklmno", id="emoji-across-the-cut"),
        pytest.param("abcdefghijkl🧪xyz", "abcdefghijkl🧪", id="emoji-ending-at-the-cut"),
        # 3-byte CJK: five fit in 15 bytes, the sixth would end at 18.
        pytest.param("中文字符测试", "中文字符测", id="cjk-across-the-cut"),
        pytest.param("a中文字符测试", "a中文字符测", id="cjk-ending-at-the-cut"),
        pytest.param("ab中文字符测试", "ab中文字符", id="cjk-two-bytes-in"),
        pytest.param("🧪🧪🧪🧪🧪", "🧪🧪🧪🧪", id="emoji-only"),
        pytest.param("é" * 9, "é" * 8, id="two-byte"),
    ],
)
async def test_trace_str_content_over_the_limit_is_cut_on_a_character(
    backend: Backend, content: str, expected: str
) -> None:
    assert utf8(content) > LIMIT
    assert utf8(expected) <= LIMIT
    async with opened(backend, max_trace_content=LIMIT) as store:
        record = await store.put(**trace(content=content))
        (batched,) = await store.put_batch([trace(content=content, metadata={"caller": "agent"})])
        receipt, _ = await store.put_if_absent(**trace(event_type="run.end", content=content))
        markers = {"content_truncated": True, "original_byte_length": utf8(content)}
        for written in (record, batched, receipt):
            assert written["content"] == expected
            assert content.startswith(written["content"])
        assert record["metadata"] == markers
        assert batched["metadata"] == {"caller": "agent", **markers}
        assert receipt["metadata"] == markers
        assert await run_records(store, "t1", "r1") == [record, batched, receipt]


@pytest.mark.parametrize(
    "content",
    [
        pytest.param("a" * 16, id="ascii"),
        pytest.param("中文字符测a", id="cjk"),
        pytest.param("🧪🧪🧪🧪", id="emoji"),
        pytest.param("short", id="short"),
        pytest.param("", id="empty"),
    ],
)
async def test_trace_str_content_within_the_limit_is_kept(backend: Backend, content: str) -> None:
    assert utf8(content) <= LIMIT
    async with opened(backend, max_trace_content=LIMIT) as store:
        record = await store.put(**trace(content=content, metadata={"caller": "agent"}))
        assert (record["content"], record["metadata"]) == (content, {"caller": "agent"})
        assert await run_records(store, "t1", "r1") == [record]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param({"key": "v" * 30}, '{"key":"vvvvvvvv', id="dict"),
        # '{"k":"' is 6 bytes; three 3-byte characters reach 15, the fourth would end at 18.
        pytest.param({"k": "中文字符测试"}, '{"k":"中文字', id="dict-cjk"),
        pytest.param({"k": "🧪🧪🧪🧪"}, '{"k":"🧪🧪', id="dict-emoji"),
        pytest.param([{"type": "text", "text": "hello world"}], '[{"type":"text",', id="list"),
    ],
)
async def test_trace_json_content_is_measured_as_compact_json_and_cut_to_a_string(
    backend: Backend, content: Any, expected: str
) -> None:
    compact = orjson.dumps(content)
    assert len(compact) > LIMIT
    assert compact.decode().startswith(expected)
    async with opened(backend, max_trace_content=LIMIT) as store:
        record = await store.put(**trace(content=content, metadata={"task_id": "k1"}))
        assert record["content"] == expected
        assert utf8(record["content"]) <= LIMIT
        assert record["metadata"] == {
            "task_id": "k1",
            "content_truncated": True,
            "original_byte_length": len(compact),
        }
        assert await run_records(store, "t1", "r1") == [record]


async def test_trace_json_content_within_the_limit_is_kept_as_json(backend: Backend) -> None:
    fits: dict[str, Any] = {"k": "中文"}  # '{"k":"中文"}' is 14 bytes
    exactly: list[Any] = ["a" * 12]  # '["aaaaaaaaaaaa"]' is 16 bytes
    assert len(orjson.dumps(fits)) == 14
    assert len(orjson.dumps(exactly)) == LIMIT
    async with opened(backend, max_trace_content=LIMIT) as store:
        written = await store.put_batch([trace(content=fits), trace(content=exactly)])
        assert [(r["content"], r["metadata"]) for r in written] == [(fits, {}), (exactly, {})]
        assert await run_records(store, "t1", "r1") == written


@pytest.mark.parametrize("category", ["message", "lifecycle", "traces", "Trace"])
async def test_only_the_trace_category_is_cut(backend: Backend, category: str) -> None:
    long_text = "中文字符测试" * 10
    long_dict = {"k": "v" * 100}
    async with opened(backend, max_trace_content=LIMIT) as store:
        written = await store.put_batch(
            [
                event(category=category, content=long_text, metadata={"caller": "agent"}),
                event(category=category, content=long_dict),
            ]
        )
        assert [(r["content"], r["metadata"]) for r in written] == [
            (long_text, {"caller": "agent"}),
            (long_dict, {}),
        ]
        assert await run_records(store, "t1", "r1") == written
