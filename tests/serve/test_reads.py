"""The read routes over a real server of each backend: shapes and paging, against the store's own answers."""

from __future__ import annotations

from typing import Any

from tests.serve.conftest import ADMIN, event
from tests.serve.live import LiveServer

ALL = 100_000


async def write_thread(server: LiveServer) -> list[dict[str, Any]]:
    """A thread of two runs: 23 messages between traces, tool records of two tasks, a run end."""
    events: list[dict[str, Any]] = []
    for n in range(23):
        run = "r1" if n < 15 else "r2"
        events.append(event(run_id=run))
        if n % 3 == 0:
            events.append(event(run_id=run, event_type="llm.start", category="trace", content=f"trace {n}"))
        if n % 5 == 0:
            task = {"task_id": f"task-{n % 2}"}
            events.append(event(run_id=run, event_type="tool.end", category="trace", metadata=task))
    events.append(event(run_id="r2", event_type="run.end", category="outputs", content={"status": "ok"}))
    return await server.run(server.store.put_batch(events))


async def test_thread_pages_go_backwards_through_every_message(server: LiveServer) -> None:
    await write_thread(server)
    store = server.store
    expected = await server.run(store.list_messages("t1", limit=ALL))
    pages: list[list[dict[str, Any]]] = []
    before: int | None = None
    async with server.client(ADMIN) as client:
        while True:
            params = {"limit": 7} if before is None else {"limit": 7, "before_seq": before}
            response = await client.get("/api/threads/t1/messages/page", params=params)
            assert response.status_code == 200, response.text
            body = response.json()
            assert set(body) == {"data", "has_more", "next_before_seq"}
            direct = await server.run(store.list_messages("t1", limit=7, before_seq=before))
            assert body["data"] == direct
            pages.append(body["data"])
            if not body["has_more"]:
                assert body["next_before_seq"] is None
                break
            assert body["next_before_seq"] == body["data"][0]["seq"]
            before = body["next_before_seq"]
    assert [len(page) for page in pages] == [7, 7, 7, 2]
    assert [record for page in reversed(pages) for record in page] == expected
    assert all(record["category"] == "message" for record in expected)


async def test_a_page_that_holds_the_whole_thread_has_no_more(server: LiveServer) -> None:
    written = await write_thread(server)
    async with server.client(ADMIN) as client:
        body = (await client.get("/api/threads/t1/messages/page", params={"limit": 23})).json()
        assert (body["has_more"], body["next_before_seq"], len(body["data"])) == (False, None, 23)
        default = (await client.get("/api/threads/t1/messages/page")).json()
        assert default["data"] == body["data"]  # limit 50 by default
        empty = (await client.get("/api/threads/t1/messages/page", params={"before_seq": 1})).json()
        assert empty == {"data": [], "has_more": False, "next_before_seq": None}
    assert body["data"][0]["created_at"].endswith("+00:00")
    assert set(body["data"][0]) == set(written[0])


async def test_run_messages_page_forwards_and_backwards(server: LiveServer) -> None:
    await write_thread(server)
    store = server.store
    run = await server.run(store.list_messages_by_run("t1", "r1", limit=ALL))
    assert len(run) == 15
    async with server.client(ADMIN) as client:
        url = "/api/threads/t1/runs/r1/messages"
        forward: list[dict[str, Any]] = []
        after = 0
        while True:
            body = (await client.get(url, params={"limit": 4, "after_seq": after})).json()
            assert set(body) == {"data", "has_more"}
            direct = await server.run(store.list_messages_by_run("t1", "r1", limit=4, after_seq=after))
            assert body["data"] == direct
            forward += body["data"]
            if not body["has_more"]:
                break
            after = body["data"][-1]["seq"]
        assert forward == run

        latest = (await client.get(url, params={"limit": 4})).json()
        assert latest == {"data": run[-4:], "has_more": True}
        older = (await client.get(url, params={"limit": 4, "before_seq": run[-4]["seq"]})).json()
        assert older == {"data": run[-8:-4], "has_more": True}
        first = (await client.get(url, params={"limit": 4, "before_seq": run[3]["seq"]})).json()
        assert first == {"data": run[:3], "has_more": False}
        window = {"after_seq": run[2]["seq"], "before_seq": run[9]["seq"], "limit": 3}
        between = (await client.get(url, params=window)).json()
        assert between == {"data": run[3:6], "has_more": True}
        other = (await client.get("/api/threads/t1/runs/r2/messages", params={"limit": 200})).json()
        assert other == {
            "data": await server.run(store.list_messages_by_run("t1", "r2", limit=ALL)),
            "has_more": False,
        }


async def test_run_events_filter_and_page_as_the_store_does(server: LiveServer) -> None:
    await write_thread(server)
    store = server.store
    url = "/api/threads/t1/runs/r1/events"
    async with server.client(ADMIN) as client:
        every = (await client.get(url)).json()
        assert every == await server.run(store.list_events("t1", "r1"))
        assert {record["category"] for record in every} == {"message", "trace"}
        cases: list[tuple[dict[str, Any], dict[str, Any]]] = [
            ({"event_types": "llm.start,tool.end"}, {"event_types": ["llm.start", "tool.end"]}),
            (
                {"event_types": "tool.end", "task_id": "task-0"},
                {"event_types": ["tool.end"], "task_id": "task-0"},
            ),
            ({"task_id": "task-1"}, {"task_id": "task-1"}),
            ({"limit": 5, "after_seq": 4}, {"limit": 5, "after_seq": 4}),
            ({"event_types": "nothing.like.this"}, {"event_types": ["nothing.like.this"]}),
            # As deer-flow: an empty list means no filter, not "no type".
            ({"event_types": ""}, {}),
        ]
        for params, arguments in cases:
            response = await client.get(url, params=params)
            assert response.status_code == 200, response.text
            assert response.json() == await server.run(store.list_events("t1", "r1", **arguments)), params
        outputs = (
            await client.get("/api/threads/t1/runs/r2/events", params={"event_types": "run.end"})
        ).json()
        assert [record["content"] for record in outputs] == [{"status": "ok"}]


async def test_count_and_message_seqs(server: LiveServer) -> None:
    written = await write_thread(server)
    messages = [record for record in written if record["category"] == "message"]
    wanted = [messages[0]["content"]["id"], messages[7]["content"]["id"]]
    async with server.client(ADMIN) as client:
        assert (await client.get("/api/threads/t1/messages/count")).json() == {"count": 23}
        assert (await client.get("/api/threads/nobody/messages/count")).json() == {"count": 0}
        url = "/api/threads/t1/messages/seqs"
        joined = (await client.get(url, params={"ids": f"{wanted[0]},{wanted[1]},unknown-id"})).json()
        expected = await server.run(server.store.get_message_seqs("t1", [*wanted, "unknown-id"]))
        assert (
            joined
            == {"seqs": expected}
            == {"seqs": {wanted[0]: messages[0]["seq"], wanted[1]: messages[7]["seq"]}}
        )
        repeated = (await client.get(url, params=[("ids", wanted[0]), ("ids", wanted[1])])).json()
        assert repeated == joined
        assert (await client.get(url, params={"ids": ""})).json() == {"seqs": {}}


async def test_a_legacy_credential_in_metadata_is_never_served(server: LiveServer) -> None:
    leaky = {"auth_token": "sk-legacy-credential", "caller": "lead"}
    await server.run(server.store.put_batch([event(metadata=leaky), event(category="trace", metadata=leaky)]))
    async with server.client(ADMIN) as client:
        for path in (
            "/api/threads/t1/messages/page",
            "/api/threads/t1/runs/r1/messages",
            "/api/threads/t1/runs/r1/events",
        ):
            response = await client.get(path)
            assert response.status_code == 200
            assert "sk-legacy-credential" not in response.text, path
            assert response.json()["data" if "events" not in path else 0]
        records = (await client.get("/api/threads/t1/runs/r1/events")).json()
        assert [record["metadata"] for record in records] == [{"caller": "lead"}] * 2


async def test_unicode_content_comes_back_as_stored(server: LiveServer) -> None:
    content = {"id": "m-1", "type": "ai", "content": "line\u2028sep\u2029para\r\nnul\x00 \U0001f600 \x85"}
    await server.run(server.store.put(**event(content=content)))
    async with server.client(ADMIN) as client:
        body = (await client.get("/api/threads/t1/messages/page")).json()
    assert body["data"][0]["content"] == content
