"""The HTTP tests' servers: a real uvicorn on a port of its own over a real store of each backend."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from runevents.bus.projector import Projector
from runevents.bus.topic import create_topic
from runevents.serve import Tokens, create_app
from runevents.store import open_store
from runevents.tables.migrate import upgrade_async
from tests.backends.registry import ProjectorThread, run_aside
from tests.serve.live import LiveServer

# The backends served in these tests: in-process memory and JSONL, sql on the session's PostgreSQL, and
# the bus on the session's broker with a projector beside the test.
BACKENDS = ("memory", "jsonl", "sql", "bus")
BUS_PARTITIONS = 3

ALICE = "alice-0123456789-token"
BOB = "bob-0123456789abc-token"
ADMIN = "admin-0123456789-token"
TOKENS = {ALICE: "alice", BOB: "bob", ADMIN: "admin"}
# Short, so a test sees pings without waiting 15 s.
HEARTBEAT_S = 0.3

_ids = itertools.count(1)


def event(thread_id: str = "t1", run_id: str = "r1", **fields: Any) -> dict[str, Any]:
    """One event as `put_batch` takes it: a message unless `category` says otherwise."""
    return {
        "thread_id": thread_id,
        "run_id": run_id,
        "event_type": "llm.ai.response",
        "category": "message",
        "content": {"type": "ai", "id": f"msg-{next(_ids)}", "content": "hello"},
        "metadata": {},
        **fields,
    }


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of an empty store of the backend under test."""
    if request.param == "memory":
        yield "memory://"
    elif request.param == "jsonl":
        yield f"jsonl://{tmp_path / 'events'}"
    elif request.param == "sql":
        yield request.getfixturevalue("pg_database")
    else:
        yield from _bus_url(request)


def _bus_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A kafka:// URL of a fresh topic and database, with a projector applying the topic meanwhile."""
    database: str = request.getfixturevalue("pg_database")
    bootstrap: str = request.getfixturevalue("kafka_bootstrap")
    topic = f"serve-{uuid.uuid4().hex[:12]}"
    run_aside(upgrade_async(database))
    run_aside(_create_topic(bootstrap, topic))
    projector = ProjectorThread(Projector(bootstrap, database, topic=topic, partitions=range(BUS_PARTITIONS)))
    projector.start()
    try:
        yield f"kafka://{bootstrap}/{topic}?database={quote(database, safe='')}"
    finally:
        projector.stop()


async def _create_topic(bootstrap: str, topic: str) -> None:
    assert await create_topic(bootstrap, topic, partitions=BUS_PARTITIONS)


async def serve(url: str, *, tokens: Tokens | None) -> LiveServer:
    """A started server of a store opened from `url` (the read tables migrated first for sql)."""
    if url.startswith("postgresql"):
        await upgrade_async(url)
    store = open_store(url)
    return LiveServer(create_app(store, tokens=tokens, heartbeat_s=HEARTBEAT_S), store).start()


@pytest.fixture
async def server(store_url: str) -> AsyncIterator[LiveServer]:
    """A server of a store of each backend, auth on: alice's, bob's and an admin's tokens."""
    live = await serve(store_url, tokens=Tokens.from_plain(TOKENS))
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture
async def open_server() -> AsyncIterator[LiveServer]:
    """A server of a memory store with auth off."""
    live = await serve("memory://", tokens=None)
    try:
        yield live
    finally:
        live.stop()
