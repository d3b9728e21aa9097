"""Large contents kept whole in a blob store (issue 20), on every backend: the cut, the reference, the
whole content read back (also by a store opened again), and the collection of blobs nothing points at."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from runevents.lifecycle.blobs import BlobMissingError, FileBlobStore
from runevents.lifecycle.retention import parse_policy
from runevents.ops.retention import apply_retention
from tests.backends.registry import Backend
from tests.conformance.builders import message, opened, trace

LIMIT = 200
MESSAGE_LIMIT = 1000
LONG_TRACE = "a line of tool output\n" * 100  # 2,200 bytes
LONG_MESSAGE = {"id": "m-long", "type": "ai", "content": "a long answer " * 200}


def _options(tmp_path: Path) -> dict[str, Any]:
    return {
        "max_trace_content": LIMIT,
        "blobs": FileBlobStore(tmp_path / "blobs", fsync=False),
        "offload_over": {"message": MESSAGE_LIMIT},
    }


def _address(record: dict[str, Any]) -> str:
    found: str = record["metadata"]["content_blob"]["sha256"]
    return found


async def test_cut_contents_are_kept_whole_and_read_back_by_any_store_over_the_storage(
    backend: Backend, tmp_path: Path
) -> None:
    options = _options(tmp_path)
    async with opened(backend, **options) as store:
        cut_trace = await store.put(**trace(content=LONG_TRACE))
        cut_message, short = await store.put_batch(
            [message(content=LONG_MESSAGE), message(content={"id": "m2", "content": "short"})]
        )
        assert cut_trace["content"] == LONG_TRACE[:LIMIT]
        assert cut_trace["metadata"]["content_truncated"] is True
        assert cut_trace["metadata"]["original_byte_length"] == len(LONG_TRACE.encode())
        assert cut_trace["metadata"]["content_blob"]["media_type"] == "text/plain; charset=utf-8"
        assert cut_message["metadata"]["content_blob"]["media_type"] == "application/json"
        assert "content_blob" not in short["metadata"]
        assert await store.get_full_content("t1", cut_trace["event_id"]) == LONG_TRACE
        assert await store.get_full_content("t1", cut_message["event_id"]) == LONG_MESSAGE
        assert await store.get_full_content("t1", short["event_id"]) == short["content"]
        assert await store.blob_references("t1") == {_address(cut_trace), _address(cut_message)}
        assert await store.blob_references("nobody") == set()
    if backend.persistent:
        async with opened(backend, **options) as again:
            assert await again.get_full_content("t1", cut_message["event_id"]) == LONG_MESSAGE


async def test_retention_collects_the_blobs_of_deleted_and_expired_events_and_keeps_the_rest(
    backend: Backend, tmp_path: Path
) -> None:
    options = _options(tmp_path)
    blobs = options["blobs"]
    old = (datetime.now(UTC) - timedelta(days=40)).isoformat()
    async with opened(backend, **options) as store:
        expired = await store.put(**trace(content="expired " * 100, created_at=old))
        kept = await store.put(**trace(content="kept " * 100))
        deleted = await store.put(**trace(thread_id="t2", content="deleted " * 100))
        await store.delete_by_thread("t2")
        report = await apply_retention(store, parse_policy("max_age=30d"), blob_grace=timedelta(0))
        assert report.expired == 1
        assert report.blobs_collected == 2
        assert set(await blobs.addresses()) == {_address(kept)}
        assert await store.get_full_content("t1", kept["event_id"]) == "kept " * 100
        for gone in (expired, deleted):
            with pytest.raises(BlobMissingError):
                await blobs.get(_address(gone))
