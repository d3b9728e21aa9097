"""Bad input on a real server: a 422 naming the parameter, whether FastAPI or the store found it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.serve.conftest import ADMIN, event, serve
from tests.serve.live import LiveServer

PAGE = "/api/threads/t1/messages/page"
RUN = "/api/threads/t1/runs/r1/messages"
EVENTS = "/api/threads/t1/runs/r1/events"
SEQS = "/api/threads/t1/messages/seqs"
STREAM = "/api/threads/t1/stream"

# (path, query, headers, the parameter's location as the 422 names it)
CASES: list[tuple[str, dict[str, Any], dict[str, str], list[str]]] = [
    (PAGE, {"limit": 0}, {}, ["query", "limit"]),
    (PAGE, {"limit": 201}, {}, ["query", "limit"]),
    (PAGE, {"limit": "ten"}, {}, ["query", "limit"]),
    (PAGE, {"before_seq": 0}, {}, ["query", "before_seq"]),
    (PAGE, {"before_seq": 2**63}, {}, ["query", "before_seq"]),
    (PAGE, {"after_seq": 3}, {}, ["query", "after_seq"]),
    (RUN, {"limit": 201}, {}, ["query", "limit"]),
    (RUN, {"after_seq": -1}, {}, ["query", "after_seq"]),
    (RUN, {"before_seq": "1.5"}, {}, ["query", "before_seq"]),
    (EVENTS, {"limit": 2001}, {}, ["query", "limit"]),
    (EVENTS, {"after_seq": "x"}, {}, ["query", "after_seq"]),
    (EVENTS, {"task_id": "a\x00b"}, {}, ["query", "task_id"]),
    (EVENTS, {"event_types": "llm.start,a\x00b"}, {}, ["query", "event_types"]),
    ("/api/threads/" + "t" * 65 + "/messages/count", {}, {}, ["path", "thread_id"]),
    ("/api/threads/a%01b/messages/count", {}, {}, ["path", "thread_id"]),
    ("/api/threads/t1/runs/" + "r" * 65 + "/events", {}, {}, ["path", "run_id"]),
    ("/api/threads/t1/runs/r%07/messages", {}, {}, ["path", "run_id"]),
    (SEQS, {}, {}, ["query", "ids"]),
    (SEQS, {"ids": "ok," + "m" * 513}, {}, ["query", "ids"]),
    (STREAM, {}, {"Last-Event-ID": "abc"}, ["header", "Last-Event-ID"]),
    (STREAM, {}, {"Last-Event-ID": "-2"}, ["header", "Last-Event-ID"]),
    (STREAM, {"after_seq": -1}, {}, ["query", "after_seq"]),
    (STREAM, {"run_id": "r" * 65}, {}, ["query", "run_id"]),
    (STREAM, {"run_id": "r\x01"}, {}, ["query", "run_id"]),
    (STREAM, {"categories": "message,\x00"}, {}, ["query", "categories"]),
    ("/api/threads/a%1fb/stream", {}, {}, ["path", "thread_id"]),
]


async def test_each_bad_parameter_is_a_422_that_names_it(server: LiveServer) -> None:
    await server.run(server.store.put(**event()))
    async with server.client(ADMIN) as client:
        for path, params, headers, loc in CASES:
            response = await client.get(path, params=params, headers=headers)
            assert response.status_code == 422, (path, params, headers, response.text)
            problems = response.json()["detail"]
            assert [problem["loc"] for problem in problems] == [loc], (path, params, headers)
            assert all(problem["msg"] for problem in problems)
            assert ADMIN not in response.text


async def test_without_auth_everything_is_read_and_a_token_is_not_needed(open_server: LiveServer) -> None:
    await open_server.run(open_server.store.put_batch([event(user_id="alice"), event(user_id="bob")]))
    for token in (None, "any-token-at-all-is-ignored"):
        async with open_server.client(token) as client:
            page = (await client.get(PAGE)).json()
            assert [record["user_id"] for record in page["data"]] == ["alice", "bob"]
            assert (await client.get("/api/threads/nobody/messages/count")).json() == {"count": 0}


@pytest.fixture
async def jsonl_server(tmp_path: Path) -> AsyncIterator[LiveServer]:
    """A server of a JSONL store, whose ids must also be safe file names."""
    live = await serve(f"jsonl://{tmp_path}", tokens=None)
    try:
        yield live
    finally:
        live.stop()


async def test_an_id_the_backend_cannot_hold_is_a_422_before_any_stream(jsonl_server: LiveServer) -> None:
    async with jsonl_server.client() as client:
        for path in (
            "/api/threads/a%20b/messages/count",
            "/api/threads/a:b/stream",
            "/api/threads/.hidden/stream",
        ):
            response = await client.get(path)
            assert response.status_code == 422, path
            assert [problem["loc"] for problem in response.json()["detail"]] == [["path", "thread_id"]]
