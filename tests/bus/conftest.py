"""Fixtures of the bus tests: a migrated database, a fresh topic, projectors running in the test."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from runevents.bus.projector import Projector
from runevents.bus.store import BusRunEventStore
from runevents.bus.topic import create_topic
from runevents.tables.migrate import upgrade_async

PARTITIONS = 4


@pytest.fixture
async def bus_db(pg_database: str) -> str:
    """A fresh database with the read tables at head."""
    await upgrade_async(pg_database)
    return pg_database


@pytest.fixture
async def topic(kafka_bootstrap: str) -> str:
    """A fresh topic of `PARTITIONS` partitions."""
    name = f"bus-{uuid.uuid4().hex[:12]}"
    assert await create_topic(kafka_bootstrap, name, partitions=PARTITIONS)
    return name


@contextlib.asynccontextmanager
async def running(projector: Projector) -> AsyncIterator[Projector]:
    """Run `projector` as a task of this loop while the block runs; stop it cleanly afterwards."""
    stop = asyncio.Event()
    task = asyncio.create_task(projector.run(stop))
    try:
        yield projector
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


def projector_process(kafka: str, url: str, topic: str, *options: str) -> subprocess.Popen[bytes]:
    """`runevents project` in an OS process of its own (group mode, fast group joins)."""
    command = [sys.executable, "-m", "runevents.cli", "project", "--kafka", kafka, "--database", url]
    command += ["--metrics-port", "0"]  # several on one host: no port of their own
    return subprocess.Popen(
        [*command, "--topic", topic, "--session-timeout-ms", "2000", *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.fixture
def make_projector(kafka_bootstrap: str, bus_db: str, topic: str) -> Callable[..., Projector]:
    """Projectors of the test's topic and database (all partitions owned unless told otherwise)."""

    def make(**options: Any) -> Projector:
        options.setdefault("partitions", range(PARTITIONS))
        return Projector(kafka_bootstrap, bus_db, topic=topic, **options)

    return make


@pytest.fixture
async def bus_store(kafka_bootstrap: str, bus_db: str, topic: str) -> AsyncIterator[BusRunEventStore]:
    """A bus store of the test's topic and database (no projector: tests start their own)."""
    store = BusRunEventStore(kafka_bootstrap, bus_db, topic=topic, poll_interval_s=0.1, wait_timeout_s=20)
    yield store
    await store.close()
