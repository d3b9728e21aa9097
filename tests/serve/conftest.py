"""The HTTP tests' servers: a real uvicorn on a port of its own over a real store of each backend."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from runevents.serve import Tokens, create_app
from runevents.store import open_store
from runevents.tables.migrate import upgrade_async
from tests.serve.live import LiveServer

# The backends served in these tests: in-process memory and JSONL, and sql on the session's PostgreSQL.
BACKENDS = ("memory", "jsonl", "sql")

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
    else:
        yield request.getfixturevalue("pg_database")


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
