"""The live stream over a real server of each backend: order, resume, live records, deletes, disconnects."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from runevents.store import open_store
from tests.serve.conftest import ADMIN, HEARTBEAT_S, event, serve
from tests.serve.live import LiveServer, SseEvent, SseReader

STREAM = "/api/threads/t1/stream"


def records_of(events: list[SseEvent]) -> list[dict[str, Any]]:
    """The records a list of `record` events carries, checking each event's name and id."""
    for sse in events:
        assert sse.event == "record"
        assert sse.id == str(json.loads(sse.data)["seq"])
    return [json.loads(sse.data) for sse in events]


async def nothing_more(events: SseReader, seconds: float = 1.0) -> None:
    """Assert the stream sends no event for a while (pings may come)."""
    with pytest.raises(TimeoutError):
        await events.next(within=seconds)


async def open_streams(server: LiveServer) -> float:
    """The open-streams gauge, from /metrics."""
    async with server.client() as client:
        text = (await client.get("/metrics")).text
    for family in text_string_to_metric_families(text):
        if family.name == "runevents_http_open_streams":
            return float(family.samples[0].value)
    raise AssertionError("no runevents_http_open_streams on /metrics")


async def test_records_come_in_seq_order_then_new_ones_as_they_are_put(server: LiveServer) -> None:
    store = server.store
    written = await server.run(
        store.put_batch([event(), event(category="trace", event_type="llm.start"), event(run_id="r2")])
    )
    async with server.client(ADMIN) as client, client.stream("GET", STREAM) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = SseReader.of(response)
        assert records_of(await events.take(3)) == written
        later = await server.run(
            store.put(**event(category="outputs", event_type="run.end", content={"ok": 1}))
        )
        assert records_of(await events.take(1)) == [later]
        batch = await server.run(store.put_batch([event() for _ in range(4)]))
        assert records_of(await events.take(4)) == batch
        await nothing_more(events, 0.5)


async def test_last_event_id_resumes_with_no_gap_and_no_repeat(server: LiveServer) -> None:
    store = server.store
    written = await server.run(store.put_batch([event() for _ in range(5)]))
    async with server.client(ADMIN) as client:
        async with client.stream("GET", STREAM) as response:
            received = records_of(await SseReader.of(response).take(3))
        last_id = str(received[-1]["seq"])
        missed = await server.run(store.put_batch([event(), event(category="trace")]))
        # The header wins over after_seq, as a reconnecting EventSource sends both.
        headers = {"Last-Event-ID": last_id}
        async with client.stream("GET", STREAM, params={"after_seq": 1}, headers=headers) as response:
            events = SseReader.of(response)
            resumed = records_of(await events.take(4))
            await nothing_more(events, 0.5)
    assert received + resumed == written + missed
    assert [record["seq"] for record in received + resumed] == list(range(1, 8))


async def test_after_seq_starts_a_stream_past_what_the_client_has(server: LiveServer) -> None:
    written = await server.run(server.store.put_batch([event() for _ in range(6)]))
    async with (
        server.client(ADMIN) as client,
        client.stream("GET", STREAM, params={"after_seq": 4}) as response,
    ):
        events = SseReader.of(response)
        assert records_of(await events.take(2)) == written[4:]
        await nothing_more(events, 0.5)


async def test_an_idle_stream_gets_heartbeats(server: LiveServer) -> None:
    async with server.client(ADMIN) as client, client.stream("GET", STREAM) as response:
        assert response.status_code == 200  # an empty thread: a stream that waits for its first record
        events = SseReader.of(response)
        await nothing_more(events, HEARTBEAT_S * 4)
        assert events.comments[:2] == ["ping", "ping"]


async def test_deleting_the_thread_ends_the_stream_with_a_deleted_event(server: LiveServer) -> None:
    written = await server.run(server.store.put_batch([event(), event()]))
    async with server.client(ADMIN) as client, client.stream("GET", STREAM) as response:
        events = SseReader.of(response)
        assert records_of(await events.take(2)) == written
        assert await server.run(server.store.delete_by_thread("t1")) == 2
        deleted = await events.next()
        assert deleted is not None
        assert (deleted.event, json.loads(deleted.data), deleted.id) == ("deleted", {"thread_id": "t1"}, None)
        assert await events.next() is None  # and the response ends
    assert await open_streams(server) == 0


async def test_a_client_that_leaves_closes_its_subscription(server: LiveServer) -> None:
    await server.run(server.store.put(**event()))
    async with server.client(ADMIN) as client:
        for _ in range(2):
            async with client.stream("GET", STREAM) as response:
                # Held in a variable: a reader dropped mid-stream is finalized, closing the response.
                events = SseReader.of(response)
                await events.take(1)
                assert await open_streams(server) == 1
        for _ in range(200):  # the server notices a client gone when it next reads or writes
            if await open_streams(server) == 0:
                break
            await asyncio.sleep(0.05)
        assert await open_streams(server) == 0
    # Writes after the clients left reach nobody and trouble nothing.
    await server.run(server.store.put(**event()))
    assert await open_streams(server) == 0


async def test_a_stream_can_keep_one_run_or_some_categories(server: LiveServer) -> None:
    written = await server.run(
        server.store.put_batch(
            [event(), event(category="trace"), event(run_id="r2"), event(run_id="r2", category="outputs")]
        )
    )
    async with server.client(ADMIN) as client:
        async with client.stream("GET", STREAM, params={"categories": "message"}) as response:
            assert records_of(await SseReader.of(response).take(2)) == [written[0], written[2]]
        async with client.stream("GET", STREAM, params={"run_id": "r2"}) as response:
            assert records_of(await SseReader.of(response).take(2)) == written[2:]


async def test_line_separators_in_content_stay_inside_one_data_line(server: LiveServer) -> None:
    content = {"id": "m", "text": "a\u2028b\u2029c\r\nd\x85e\x00f"}
    written = await server.run(server.store.put(**event(content=content)))
    async with server.client(ADMIN) as client, client.stream("GET", STREAM) as response:
        (received,) = await SseReader.of(response).take(1)
    assert "\n" not in received.data
    assert json.loads(received.data) == written


async def test_a_record_another_process_writes_to_postgresql_reaches_the_stream(pg_database: str) -> None:
    # The deployment's shape: the server reads, writers elsewhere write the same database.
    live = await serve(pg_database, tokens=None)
    writer = open_store(pg_database)
    try:
        first = await writer.put(**event())
        async with live.client() as client, client.stream("GET", STREAM) as response:
            events = SseReader.of(response)
            assert records_of(await events.take(1)) == [first]
            later = await writer.put_batch([event(), event(category="trace")])
            assert records_of(await events.take(2)) == later
            await writer.delete_by_thread("t1")
            deleted = await events.next()
            assert deleted is not None
            assert deleted.event == "deleted"
    finally:
        await writer.close()
        live.stop()
