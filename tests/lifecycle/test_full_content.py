"""Contents cut to their preview kept whole in a blob store, and `get_full_content`, on every backend."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from runevents.bus.producer import EventTooLargeError
from runevents.bus.projector import Projector
from runevents.bus.store import BusRunEventStore
from runevents.bus.topic import create_topic
from runevents.errors import EventNotFoundError, InvalidQueryError
from runevents.lifecycle.blobs import BlobMissingError, BlobStore, FileBlobStore
from runevents.store import RunEventStore
from runevents.store.jsonl import JsonlRunEventStore
from runevents.store.memory import MemoryRunEventStore
from runevents.tables.migrate import upgrade_async
from tests.bus.conftest import running
from tests.lifecycle.stores import BLOB_BACKENDS, store_keeping_blobs

LIMIT = 1000
# Messages are kept whole past this size (offload_over), traces past LIMIT (max_trace_content).
MESSAGE_LIMIT = 2000
WHOLE_TEXT = "step output " * 2000  # 24,000 bytes
OVER = {"message": MESSAGE_LIMIT}
WHOLE_DICT = {"tool": "search", "results": [{"rank": n, "text": "é" * 50} for n in range(100)]}


@pytest.fixture(params=BLOB_BACKENDS)
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, pg_database: str
) -> AsyncIterator[RunEventStore]:
    """A store of each backend that keeps cut contents whole (files, or the blobs table)."""
    async with store_keeping_blobs(
        request, tmp_path, pg_database, max_trace_content=LIMIT, offload_over=OVER
    ) as opened:
        yield opened


def _trace(content: Any, thread_id: str = "t1") -> dict[str, Any]:
    return {"thread_id": thread_id, "run_id": "r1", "event_type": "tool.result", "category": "trace",
            "content": content}  # fmt: skip


async def test_a_cut_content_is_kept_whole_and_the_record_says_where(store: RunEventStore) -> None:
    text = await store.put(**_trace(WHOLE_TEXT))
    whole = WHOLE_TEXT.encode()
    assert text["content"] == WHOLE_TEXT[:LIMIT]
    assert text["metadata"]["content_truncated"] is True
    assert text["metadata"]["original_byte_length"] == len(whole)
    pointer = text["metadata"]["content_blob"]
    assert pointer["size"] == len(whole)
    assert pointer["media_type"] == "text/plain; charset=utf-8"
    assert await store.get_full_content("t1", text["event_id"]) == WHOLE_TEXT
    (structured,) = await store.put_batch([_trace(WHOLE_DICT)])
    assert structured["metadata"]["content_blob"]["media_type"] == "application/json"
    assert await store.get_full_content("t1", structured["event_id"]) == WHOLE_DICT
    # What is read back is what put returned: the preview, pointing at the whole.
    assert (await store.list_events("t1", "r1"))[:2] == [text, structured]


async def test_a_content_not_cut_is_its_own_full_content(store: RunEventStore) -> None:
    record = await store.put(**_trace({"short": True}))
    assert "content_blob" not in record["metadata"]
    assert await store.get_full_content("t1", record["event_id"]) == {"short": True}


async def test_an_unknown_event_is_named(store: RunEventStore) -> None:
    await store.put(**_trace("x"))
    missing = str(uuid.uuid4())
    with pytest.raises(EventNotFoundError, match=f"thread 't1' holds no event {missing}"):
        await store.get_full_content("t1", missing)
    with pytest.raises(InvalidQueryError, match="event_id: must be a UUID"):
        await store.get_full_content("t1", "not-an-id")


async def test_without_a_blob_store_the_rest_of_a_cut_content_is_said_to_be_lost(tmp_path: Path) -> None:
    store = MemoryRunEventStore(max_trace_content=LIMIT)
    record = await store.put(**_trace(WHOLE_TEXT))
    with pytest.raises(BlobMissingError, match="was cut to its preview and its whole content was not kept"):
        await store.get_full_content("t1", record["event_id"])


async def test_a_collected_blob_is_a_missing_blob_not_a_wrong_content(tmp_path: Path) -> None:
    blobs: BlobStore = FileBlobStore(tmp_path / "blobs", fsync=False)
    store = MemoryRunEventStore(max_trace_content=LIMIT, blobs=blobs)
    record = await store.put(**_trace(WHOLE_TEXT))
    assert await blobs.delete(record["metadata"]["content_blob"]["sha256"])
    with pytest.raises(BlobMissingError, match="no blob"):
        await store.get_full_content("t1", record["event_id"])


def _message(content: Any, thread_id: str = "t1") -> dict[str, Any]:
    return {"thread_id": thread_id, "run_id": "r1", "event_type": "ai_message", "category": "message",
            "content": content}  # fmt: skip


async def test_a_category_over_its_own_size_is_kept_whole_and_one_under_it_is_not(
    store: RunEventStore,
) -> None:
    short = await store.put(**_message({"id": "m1", "text": "hello"}))
    assert short["content"] == {"id": "m1", "text": "hello"}
    assert "content_blob" not in short["metadata"]
    whole = {"id": "m2", "text": "a long answer " * 500}
    cut = await store.put(**_message(whole))
    assert isinstance(cut["content"], str)
    assert len(cut["content"].encode()) <= MESSAGE_LIMIT
    assert cut["metadata"]["content_truncated"] is True
    assert cut["metadata"]["content_blob"]["media_type"] == "application/json"
    assert await store.get_full_content("t1", cut["event_id"]) == whole
    # A trace keeps its own limit (max_trace_content), smaller than the messages'.
    trace = await store.put(**_trace("t" * (LIMIT + 500)))
    assert len(trace["content"]) == LIMIT
    assert [m["event_id"] for m in await store.list_messages("t1")] == [short["event_id"], cut["event_id"]]


@pytest.mark.parametrize(
    ("over", "blobs", "problem"),
    [
        ({"message": 100}, False, "offload_over needs a blob store"),
        ({"message": 0}, True, r"offload_over\['message'\] is a size in bytes of at least 1, got 0"),
        ({"message": "100"}, True, "got '100'"),
        ({"": 100}, True, "offload_over's keys are categories, got ''"),
    ],
)
async def test_offload_sizes_are_checked_when_the_store_is_made(
    tmp_path: Path, over: dict[str, Any], blobs: bool, problem: str
) -> None:
    kept = FileBlobStore(tmp_path / "blobs") if blobs else None
    with pytest.raises(ValueError, match=problem):
        MemoryRunEventStore(blobs=kept, offload_over=over)
    with pytest.raises(ValueError, match=problem):
        JsonlRunEventStore(tmp_path / "jsonl", blobs=kept, offload_over=over)
    assert not (tmp_path / "jsonl").exists()


async def test_on_the_bus_a_content_too_large_for_its_record_is_kept_whole_instead_of_refused(
    kafka_bootstrap: str, pg_database: str, tmp_path: Path
) -> None:
    await upgrade_async(pg_database)
    topic = f"small-{uuid.uuid4().hex[:12]}"
    assert await create_topic(kafka_bootstrap, topic, partitions=1, max_message_bytes=16_384)
    whole = {"id": "m-big", "rows": [{"n": n, "text": 'quoted "text"\n' * 4} for n in range(400)]}
    refusing = BusRunEventStore(kafka_bootstrap, pg_database, topic=topic)
    keeping = BusRunEventStore(
        kafka_bootstrap, pg_database, topic=topic, blobs=FileBlobStore(tmp_path / "blobs", fsync=False)
    )
    try:
        with pytest.raises(EventTooLargeError, match=r"takes at most 16384 \(max.message.bytes\)"):
            await refusing.publish(**_message(whole))
        async with running(Projector(kafka_bootstrap, pg_database, topic=topic, partitions=[0])):
            small, big = await keeping.put_batch([_message({"id": "m-small"}), _message(whole)])
            assert small["content"] == {"id": "m-small"}
            assert big["metadata"]["content_truncated"] is True
            assert big["metadata"]["original_byte_length"] > 16_384
            assert 0 < len(big["content"].encode()) <= 10_240
            assert await keeping.get_full_content("t1", big["event_id"]) == whole
            assert [m["content"] for m in await keeping.list_messages("t1")] == [
                {"id": "m-small"},
                big["content"],
            ]
    finally:
        await refusing.close()
        await keeping.close()
