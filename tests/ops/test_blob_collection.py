"""The retention job removes the blobs no event points at any more, and never one that is still wanted."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from runevents.bus.projector import Projector
from runevents.bus.store import BusRunEventStore
from runevents.bus.topic import create_topic
from runevents.lifecycle.blobs import BlobMissingError, BlobStore, FileBlobStore
from runevents.lifecycle.retention import parse_policy
from runevents.metrics import RETENTION_OLDEST_AGE
from runevents.ops.retention import apply_retention
from runevents.store import RunEventStore
from runevents.tables.blobs import PostgresBlobStore
from runevents.tables.migrate import upgrade_async
from runevents.tables.schema import blobs as blobs_table
from runevents.tables.sql import engine_for
from tests.bus.conftest import running
from tests.lifecycle.stores import BLOB_BACKENDS, store_keeping_blobs

LIMIT = 100
NOW = datetime.now(UTC)
OLD = (NOW - timedelta(days=40)).isoformat()
POLICY = parse_policy("max_age=30d")


@pytest.fixture(params=BLOB_BACKENDS)
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, pg_database: str
) -> AsyncIterator[RunEventStore]:
    """A store of each backend whose traces over LIMIT bytes are kept whole in a blob store."""
    async with store_keeping_blobs(request, tmp_path, pg_database, max_trace_content=LIMIT) as opened:
        yield opened


def _trace(thread_id: str, text: str, created_at: str | None = None) -> dict[str, Any]:
    event = {"thread_id": thread_id, "run_id": "r1", "event_type": "tool.result", "category": "trace",
             "content": text * 50}  # fmt: skip
    if created_at is not None:
        event["created_at"] = created_at
    return event


async def _addresses(blobs: BlobStore) -> set[str]:
    return set(await blobs.addresses(limit=1000))


async def test_blobs_no_event_points_at_are_collected_and_the_others_kept(store: RunEventStore) -> None:
    blobs = store.blobs
    assert blobs is not None
    expired = await store.put(**_trace("t1", "expired ", OLD))
    kept = await store.put(**_trace("t1", "kept "))
    shared_old = await store.put(**_trace("t1", "shared ", OLD))
    shared_new = await store.put(**_trace("t3", "shared "))  # the same content: one blob, two events
    deleted = await store.put(**_trace("t2", "deleted "))
    orphan = (await blobs.put(b"written, and its event never came", "text/plain")).sha256

    def address(record: dict[str, Any]) -> str:
        found: str = record["metadata"]["content_blob"]["sha256"]
        return found

    assert address(shared_old) == address(shared_new)
    await store.delete_by_thread("t2")
    # Everything was written a moment ago: inside the grace, nothing goes.
    report = await apply_retention(store, POLICY, now=NOW)
    assert report.expired == 2
    assert report.blobs_collected == 0
    assert await _addresses(blobs) == {address(r) for r in (expired, kept, shared_new, deleted)} | {orphan}
    # A dry run counts the unreferenced ones and removes nothing.
    dry = await apply_retention(store, POLICY, now=NOW, dry_run=True, blob_grace=timedelta(0))
    assert dry.blobs_collected == 3
    assert len(await _addresses(blobs)) == 5
    report = await apply_retention(store, POLICY, now=NOW, blob_grace=timedelta(0))
    assert report.blobs_collected == 3
    assert "3 unreferenced blobs removed" in report.line()
    assert await _addresses(blobs) == {address(kept), address(shared_new)}
    assert await store.get_full_content("t1", kept["event_id"]) == "kept " * 50
    assert await store.get_full_content("t3", shared_new["event_id"]) == "shared " * 50
    with pytest.raises(BlobMissingError):
        await blobs.get(orphan)


async def test_the_oldest_event_a_limiting_policy_kept_is_said_and_measured(store: RunEventStore) -> None:
    ten_days = NOW - timedelta(days=10)
    await store.put_batch(
        [
            {
                "thread_id": "t1",
                "run_id": "r1",
                "event_type": "e",
                "category": "trace",
                "content": "x",
                "created_at": at.isoformat(),
            }
            for at in (NOW - timedelta(days=50), ten_days, NOW - timedelta(days=1))
        ]
    )
    report = await apply_retention(store, POLICY, now=NOW)
    assert report.expired == 1
    assert report.oldest_kept == ten_days
    assert f"oldest event kept under a limiting policy: {ten_days.isoformat()}" in report.line()
    assert RETENTION_OLDEST_AGE._value.get() == pytest.approx(timedelta(days=10).total_seconds())


async def test_a_blob_put_again_is_young_again_and_a_collection_of_it_is_refused(
    tmp_path: Path, pg_database: str
) -> None:
    await upgrade_async(pg_database)
    engine = engine_for(pg_database)
    files = FileBlobStore(tmp_path / "blobs", fsync=False)
    tables = PostgresBlobStore(engine)
    try:
        for blobs in (files, tables):
            ref = await blobs.put(b"an old blob", "text/plain")
            await _age(blobs, ref.sha256, days=2)
            cutoff = datetime.now(UTC) - timedelta(days=1)
            await blobs.put(b"an old blob", "text/plain")  # a new event points at it
            assert not await blobs.collect(ref.sha256, written_before=cutoff)
            assert await blobs.get(ref.sha256) == b"an old blob"
            await _age(blobs, ref.sha256, days=2)
            assert await blobs.collect(ref.sha256, written_before=cutoff)
            assert not await blobs.collect(ref.sha256, written_before=cutoff)  # gone already
    finally:
        await engine.dispose()


async def _age(blobs: BlobStore, sha256: str, *, days: int) -> None:
    """Make the blob at `sha256` look written `days` ago."""
    if isinstance(blobs, FileBlobStore):
        then = time.time() - days * 86_400
        os.utime(blobs.directory / sha256[:2] / sha256, (then, then))
        return
    assert isinstance(blobs, PostgresBlobStore)
    async with blobs._engine.begin() as connection:
        await connection.execute(
            update(blobs_table)
            .where(blobs_table.c.sha256 == sha256)
            .values(created_at=datetime.now(UTC) - timedelta(days=days))
        )


async def test_on_the_bus_blobs_are_collected_only_once_the_projection_has_everything_published(
    kafka_bootstrap: str, pg_database: str, tmp_path: Path
) -> None:
    await upgrade_async(pg_database)
    topic = f"collect-{uuid.uuid4().hex[:12]}"
    assert await create_topic(kafka_bootstrap, topic, partitions=1)
    files = FileBlobStore(tmp_path / "blobs", fsync=False)
    store = BusRunEventStore(
        kafka_bootstrap, pg_database, topic=topic, max_trace_content=LIMIT, blobs=files, wait_timeout_s=2
    )
    try:
        # Published, its blob written, but no projector has applied it: the walk could not see it.
        (published,) = await store.publish_batch([_trace("t1", "unprojected ")])
        (address,) = await _addresses(files)
        report = await apply_retention(store, POLICY, now=NOW, blob_grace=timedelta(0))
        assert report.blobs_skipped
        assert report.blobs_collected == 0
        assert "no blobs collected (the projection was behind the topic)" in report.line()
        assert await _addresses(files) == {address}
        orphan = (await files.put(b"no event points here", "text/plain")).sha256
        async with running(Projector(kafka_bootstrap, pg_database, topic=topic, partitions=[0])):
            report = await apply_retention(store, POLICY, now=NOW, blob_grace=timedelta(0))
            assert not report.blobs_skipped
            assert report.blobs_collected == 1
            assert await _addresses(files) == {address}
            assert await store.get_full_content("t1", published.event_id) == "unprojected " * 50
        assert orphan not in await _addresses(files)
    finally:
        await store.close()


async def test_a_blob_table_in_a_schema_of_its_own_is_not_the_projection_s(pg_database: str) -> None:
    await upgrade_async(pg_database)
    await upgrade_async(pg_database, schema="projection_2")
    engine = engine_for(pg_database, schema="projection_2")
    public = engine_for(pg_database)
    try:
        outside = PostgresBlobStore(engine, schema="public")
        ref = await outside.put(b"kept outside the projection", "text/plain")
        assert await PostgresBlobStore(public).get(ref.sha256) == b"kept outside the projection"
        with pytest.raises(BlobMissingError):
            await PostgresBlobStore(engine).get(ref.sha256)
        assert await outside.collect(ref.sha256, written_before=datetime.now(UTC) + timedelta(minutes=1))
    finally:
        await engine.dispose()
        await public.dispose()
