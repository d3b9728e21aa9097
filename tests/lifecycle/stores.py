"""A store of each backend that keeps its cut contents whole: files, or the blobs table (sql, bus)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from runevents.bus.projector import Projector
from runevents.bus.store import BusRunEventStore
from runevents.bus.topic import create_topic
from runevents.lifecycle.blobs import FileBlobStore
from runevents.store import RunEventStore
from runevents.store.jsonl import JsonlRunEventStore
from runevents.store.memory import MemoryRunEventStore
from runevents.tables.blobs import PostgresBlobStore
from runevents.tables.migrate import upgrade_async
from runevents.tables.sql import SqlRunEventStore, engine_for
from tests.bus.conftest import running

BLOB_BACKENDS = ["memory", "jsonl", "sqlite", "postgresql", "bus"]


@contextlib.asynccontextmanager
async def store_keeping_blobs(
    request: pytest.FixtureRequest, tmp_path: Path, pg_database: str, **options: Any
) -> AsyncIterator[RunEventStore]:
    """A store of the backend `request.param` names, with `options` (max_trace_content, offload_over)."""
    files = FileBlobStore(tmp_path / "blobs", fsync=False)
    if request.param == "memory":
        yield MemoryRunEventStore(blobs=files, **options)
        return
    if request.param == "jsonl":
        jsonl = JsonlRunEventStore(tmp_path / "jsonl", blobs=files, **options)
        yield jsonl
        await jsonl.close()
        return
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'read.db'}"
        await upgrade_async(url)
        sqlite = SqlRunEventStore(url, blobs=files, **options)
        yield sqlite
        await sqlite.close()
        return
    await upgrade_async(pg_database)
    engine = engine_for(pg_database)
    blobs = PostgresBlobStore(engine)
    try:
        if request.param == "postgresql":
            sql = SqlRunEventStore(pg_database, blobs=blobs, **options)
            yield sql
            await sql.close()
            return
        # The bus: the blob goes in the table before the record goes on the topic.
        kafka: str = request.getfixturevalue("kafka_bootstrap")
        topic = f"blobs-{uuid.uuid4().hex[:12]}"
        assert await create_topic(kafka, topic, partitions=2)
        bus = BusRunEventStore(kafka, pg_database, topic=topic, blobs=blobs, **options)
        async with running(Projector(kafka, pg_database, topic=topic, partitions=[0, 1])):
            yield bus
        await bus.close()
    finally:
        await engine.dispose()
