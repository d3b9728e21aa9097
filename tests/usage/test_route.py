"""`GET /api/threads/{id}/token-usage` through real `runevents serve` processes: shape, auth, not kept."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from runevents.bus.projector import Projector
from runevents.bus.store import BusRunEventStore
from runevents.usage import UsageConsumer
from tests.bus.conftest import PARTITIONS, running
from tests.bus.test_projector import eventually
from tests.serve.conftest import ADMIN, ALICE, BOB, TOKENS
from tests.serve.test_cli import serving
from tests.usage.caught_up import wait_caught_up
from tests.usage.test_consumer import consuming


def call(thread: str, run: str, user: str, caller: str, usage: dict[str, Any] | None) -> dict[str, Any]:
    """One model call of deer-flow's shape."""
    return {
        "thread_id": thread,
        "run_id": run,
        "event_type": "llm.ai.response",
        "category": "message",
        "content": {"type": "ai", "content": "", "response_metadata": {"model_name": "gpt-4o"}},
        "metadata": {"caller": caller, **({"usage": usage} if usage else {})},
        "user_id": user,
    }


CALLS = [
    call("t-alice", "r1", "alice", "lead_agent", {"input_tokens": 100, "output_tokens": 20}),
    call("t-alice", "r1", "alice", "subagent:research", {"input_tokens": 10, "output_tokens": 2}),
    call("t-alice", "r2", "alice", "middleware:title", None),
    call("t-bob", "r1", "bob", "lead_agent", {"prompt_tokens": 5, "completion_tokens": 5}),
]


def token_file(directory: Path) -> Path:
    """alice's, bob's and an admin's tokens, as `runevents serve --token-file` reads them."""
    path = directory / "tokens"
    path.write_text(
        "".join(f"{hashlib.sha256(t.encode()).hexdigest()} {user}\n" for t, user in TOKENS.items())
    )
    return path


def get(url: str, thread: str, token: str | None) -> tuple[int, Any]:
    """Status and body of the route."""
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    response = httpx.get(f"{url}/api/threads/{thread}/token-usage", headers=headers, timeout=30)
    return response.status_code, response.json()


async def test_token_usage_over_the_bus_and_sql_stores_with_auth(
    kafka_bootstrap: str, bus_db: str, topic: str, tmp_path: Path
) -> None:
    store = BusRunEventStore(kafka_bootstrap, bus_db, topic=topic)
    try:
        await store.publish_batch(CALLS)
    finally:
        await store.close()
    group = f"usage-{uuid.uuid4().hex[:8]}"
    projector = Projector(kafka_bootstrap, bus_db, topic=topic, partitions=range(PARTITIONS))
    async with (
        running(projector),
        consuming(UsageConsumer(kafka_bootstrap, bus_db, topic=topic, group=group)),
    ):
        await eventually(bus_db, "SELECT count(*) FROM run_events", len(CALLS))
        await wait_caught_up(kafka_bootstrap, topic, bus_db, group)

    tokens = str(token_file(tmp_path))
    bus = f"kafka://{kafka_bootstrap}/{topic}?database={quote(bus_db, safe='')}"
    for store_url in (bus, bus_db):
        with serving("--store", store_url, "--token-file", tokens) as (_, url):
            code, body = await asyncio.to_thread(get, url, "t-alice", ALICE)
            assert code == 200, body
            assert body == {
                "thread_id": "t-alice",
                "total_tokens": 132,
                "total_input_tokens": 110,
                "total_output_tokens": 22,
                "total_runs": 2,
                "by_model": {"gpt-4o": {"tokens": 132, "runs": 2}},
                "by_caller": {"lead_agent": 120, "subagent": 12, "middleware": 0},
                "context_usage": None,
                "by_run": {
                    "r1": {
                        "total_tokens": 132,
                        "input_tokens": 110,
                        "output_tokens": 22,
                        "calls": 2,
                        "calls_without_usage": 0,
                    },
                    "r2": {
                        "total_tokens": 0,
                        "input_tokens": 0,
                        "output_tokens": 0,
                        "calls": 1,
                        "calls_without_usage": 1,
                    },
                },
                "cache_read_tokens": 0,
                "cache_creation_tokens": 0,
                "reasoning_tokens": 0,
                "calls": 3,
                "calls_without_usage": 1,
            }
            # No token, an unknown one: 401. Someone else's thread: 404, as on every other route.
            assert (await asyncio.to_thread(get, url, "t-alice", None))[0] == 401
            assert (await asyncio.to_thread(get, url, "t-alice", "not-a-token"))[0] == 401
            assert await asyncio.to_thread(get, url, "t-bob", ALICE) == (
                404,
                {"detail": "thread 't-bob' not found"},
            )
            assert await asyncio.to_thread(get, url, "t-alice", BOB) == (
                404,
                {"detail": "thread 't-alice' not found"},
            )
            code, body = await asyncio.to_thread(get, url, "t-bob", ADMIN)
            assert (code, body["total_tokens"], body["by_caller"]["lead_agent"]) == (200, 10, 10)
            # A thread with no model call yet: deer-flow's zeroed answer, for a reader who sees everything.
            code, body = await asyncio.to_thread(get, url, "t-empty", ADMIN)
            assert (code, body["calls"], body["total_tokens"], body["by_model"]) == (200, 0, 0, {})


async def test_a_store_that_keeps_no_usage_answers_404_saying_so(tmp_path: Path) -> None:
    directory = tmp_path / "events"
    directory.mkdir()
    with serving("--store", f"jsonl://{directory}") as (_, url):
        code, body = await asyncio.to_thread(get, url, "t1", None)
    assert (code, body) == (404, {"detail": "token usage is not kept by this store"})
