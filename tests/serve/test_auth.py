"""Bearer tokens on a real server of each backend: 401 without one, 404 for a thread of someone else."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest

from tests.serve.conftest import ADMIN, ALICE, BOB, event
from tests.serve.live import LiveServer, SseReader

# Every thread route, as (path with {thread}, query).
ROUTES: list[tuple[str, dict[str, Any]]] = [
    ("/api/threads/{thread}/messages/page", {}),
    ("/api/threads/{thread}/runs/r1/messages", {}),
    ("/api/threads/{thread}/runs/r1/events", {}),
    ("/api/threads/{thread}/messages/count", {}),
    ("/api/threads/{thread}/messages/seqs", {"ids": "m-alice,m-bob"}),
    ("/api/threads/{thread}/stream", {}),
]


async def write_threads(server: LiveServer) -> None:
    """alice's thread, bob's thread, and a thread both wrote to (with a record of no user)."""
    await server.run(
        server.store.put_batch(
            [
                event(
                    "t-alice", user_id="alice", content={"id": "m-alice", "type": "human", "content": "hi"}
                ),
                event("t-alice", user_id="alice", category="trace", event_type="llm.start"),
                event("t-bob", user_id="bob", content={"id": "m-bob", "type": "human", "content": "yo"}),
                event(
                    "t-shared", user_id="alice", content={"id": "m-alice", "type": "human", "content": "a"}
                ),
                event("t-shared", user_id="bob", content={"id": "m-bob", "type": "human", "content": "b"}),
                event("t-shared", user_id=None, category="trace", event_type="llm.start"),
                event("t-shared", user_id="alice", category="trace", event_type="llm.start"),
            ]
        )
    )


async def fetch(client: httpx.AsyncClient, path: str, params: dict[str, Any]) -> tuple[int, Any]:
    """Status and body of a route; of the stream, its first record's seq (the first event only)."""
    if not path.endswith("/stream"):
        response = await client.get(path, params=params)
        return response.status_code, response.json()
    async with client.stream("GET", path, params=params) as response:
        if response.status_code != 200:
            await response.aread()
            return response.status_code, response.json()
        first = await SseReader.of(response).next()
        assert first is not None
        return 200, json.loads(first.data)


@pytest.mark.parametrize("token", [None, "not-a-known-token-at-all", "x"])
async def test_every_route_wants_a_known_token(server: LiveServer, token: str | None) -> None:
    await write_threads(server)
    async with server.client(token) as client:
        for path, params in ROUTES:
            status, body = await fetch(client, path.format(thread="t-alice"), params)
            assert status == 401, path
            assert body == {"detail": "a bearer token is required, and this one is not known"}
        response = await client.get("/api/threads/t-alice/messages/count")
        assert response.headers["www-authenticate"] == "Bearer"
        basic = await client.get(
            "/api/threads/t-alice/messages/count", headers={"Authorization": f"Basic {ALICE}"}
        )
        assert basic.status_code == 401
        # The probes, the metrics and the API's description need no token.
        for path in ("/healthz", "/metrics", "/openapi.json"):
            assert (await client.get(path)).status_code == 200, path


async def test_a_thread_of_someone_else_is_not_found_on_every_route(server: LiveServer) -> None:
    await write_threads(server)
    async with server.client(ALICE) as client:
        for path, params in ROUTES:
            status, body = await fetch(client, path.format(thread="t-bob"), params)
            assert (status, body) == (404, {"detail": "thread 't-bob' not found"}), path
            # Exactly what a thread nobody wrote gets: the answer says nothing of bob's thread.
            status, body = await fetch(client, path.format(thread="t-none"), params)
            assert (status, body) == (404, {"detail": "thread 't-none' not found"}), path


async def test_a_users_token_reads_only_that_users_records(server: LiveServer) -> None:
    await write_threads(server)
    async with server.client(ALICE) as client:
        for thread in ("t-alice", "t-shared"):
            page = (await client.get(f"/api/threads/{thread}/messages/page")).json()
            assert [record["user_id"] for record in page["data"]] == ["alice"]
            run = (await client.get(f"/api/threads/{thread}/runs/r1/messages")).json()
            assert [record["user_id"] for record in run["data"]] == ["alice"]
            events = (await client.get(f"/api/threads/{thread}/runs/r1/events")).json()
            assert [(record["user_id"], record["category"]) for record in events] == [
                ("alice", "message"),
                ("alice", "trace"),
            ]
            assert (await client.get(f"/api/threads/{thread}/messages/count")).json() == {"count": 1}
            seqs = (
                await client.get(f"/api/threads/{thread}/messages/seqs", params={"ids": "m-alice,m-bob"})
            ).json()
            assert list(seqs["seqs"]) == ["m-alice"]
        # The thread is hers, the run of no user of hers: an empty page, not a 404.
        assert (await client.get("/api/threads/t-alice/runs/r9/events")).json() == []


async def test_an_admin_token_reads_everyone(server: LiveServer) -> None:
    await write_threads(server)
    async with server.client(ADMIN) as client:
        events = (await client.get("/api/threads/t-shared/runs/r1/events")).json()
        assert [record["user_id"] for record in events] == ["alice", "bob", None, "alice"]
        assert (await client.get("/api/threads/t-bob/messages/count")).json() == {"count": 1}
        seqs = (
            await client.get("/api/threads/t-shared/messages/seqs", params={"ids": "m-alice,m-bob"})
        ).json()
        assert seqs == {"seqs": {"m-alice": 1, "m-bob": 2}}
        # A thread nobody wrote is an empty thread to an admin.
        assert (await client.get("/api/threads/t-none/messages/count")).json() == {"count": 0}


async def test_a_users_stream_carries_only_that_users_records(server: LiveServer) -> None:
    await write_threads(server)
    async with (
        server.client(BOB) as client,
        client.stream("GET", "/api/threads/t-shared/stream") as response,
    ):
        assert response.status_code == 200
        events = SseReader.of(response)
        (first,) = await events.take(1)
        assert json.loads(first.data)["user_id"] == "bob"
        await server.run(
            server.store.put_batch(
                [event("t-shared", user_id="alice"), event("t-shared", user_id="bob", category="trace")]
            )
        )
        (second,) = await events.take(1)
        assert (json.loads(second.data)["user_id"], second.id) == ("bob", "6")


async def test_no_token_reaches_a_log_line_or_an_answer(
    server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await write_threads(server)
    wrong = "wrong-token-that-must-not-leak"
    answers: list[str] = []
    for token in (ALICE, BOB, ADMIN, wrong):
        async with server.client(token) as client:
            for path, params in ROUTES:
                if not path.endswith("/stream"):
                    answers.append((await client.get(path.format(thread="t-alice"), params=params)).text)
            answers.append(
                (await client.get("/api/threads/t-alice/messages/page", params={"limit": -1})).text
            )
    logged = "\n".join(f"{record.getMessage()} {record.args}" for record in caplog.records)
    assert "GET /api/threads/t-alice/messages/page" in logged  # the access log was captured
    for token in (ALICE, BOB, ADMIN, wrong):
        assert token not in logged
        assert not any(token in answer for answer in answers)
