"""The operator's side of a real server: /openapi.json, /healthz, /metrics, the store closed at the end."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from runevents.devstack.postgres import free_port
from runevents.serve import create_app
from runevents.store import JsonlRunEventStore, open_store
from tests.serve.conftest import ADMIN, event, serve
from tests.serve.live import LiveServer, SseReader

ROUTES = {
    "/api/threads/{thread_id}/messages/page": "#/components/schemas/ThreadMessagesPage",
    "/api/threads/{thread_id}/runs/{run_id}/messages": "#/components/schemas/RunMessagesPage",
    "/api/threads/{thread_id}/runs/{run_id}/events": "#/components/schemas/StoredRecord",
    "/api/threads/{thread_id}/messages/count": "#/components/schemas/MessageCount",
    "/api/threads/{thread_id}/messages/seqs": "#/components/schemas/MessageSeqs",
    "/api/threads/{thread_id}/token-usage": "#/components/schemas/ThreadTokenUsage",
    "/healthz": "#/components/schemas/Health",
}


async def test_openapi_lists_every_route_with_its_response_model(open_server: LiveServer) -> None:
    async with open_server.client() as client:
        document = (await client.get("/openapi.json")).json()
    assert set(document["paths"]) == {*ROUTES, "/api/threads/{thread_id}/stream", "/metrics"}
    for path, schema in ROUTES.items():
        ok = document["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        assert schema in str(ok), path
    stream = document["paths"]["/api/threads/{thread_id}/stream"]["get"]
    assert "text/event-stream" in stream["responses"]["200"]["content"]
    assert {parameter["name"] for parameter in stream["parameters"]} == {
        "thread_id",
        "after_seq",
        "Last-Event-ID",
        "run_id",
        "categories",
    }
    page = document["paths"]["/api/threads/{thread_id}/messages/page"]["get"]
    limit = next(parameter for parameter in page["parameters"] if parameter["name"] == "limit")
    assert (limit["schema"]["minimum"], limit["schema"]["maximum"], limit["schema"]["default"]) == (
        1,
        200,
        50,
    )
    assert set(page["responses"]) == {"200", "401", "404", "422"}
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    record = document["components"]["schemas"]["StoredRecord"]
    assert set(record["required"]) >= {"thread_id", "run_id", "seq", "event_type", "category", "content"}


async def test_healthz_is_ok_while_the_store_answers(server: LiveServer) -> None:
    async with server.client() as client:
        response = await client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok", "reason": None})


async def test_healthz_says_why_when_the_store_does_not_answer_and_shows_no_password() -> None:
    url = f"postgresql://carol:planted-s3cret@127.0.0.1:{free_port()}/events"
    store = open_store(url)
    live = LiveServer(create_app(store), store).start()
    try:
        async with live.client() as client:
            response = await client.get("/healthz")
            page = await client.get("/api/threads/t1/messages/page")
    finally:
        live.stop()
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"
    assert response.json()["reason"].startswith("the store failed: ")
    assert (page.status_code, page.json()) == (500, {"detail": "internal error"})
    assert "planted-s3cret" not in response.text + page.text


async def test_metrics_count_requests_by_route_and_status_and_open_streams(server: LiveServer) -> None:
    await server.run(server.store.put(**event()))
    async with server.client(ADMIN) as client:
        await client.get("/api/threads/t1/messages/page")
        await client.get("/api/threads/t1/messages/page")
        await client.get("/api/threads/t1/messages/page", params={"limit": 0})
        await client.get("/no/such/route")
        async with client.stream("GET", "/api/threads/t1/stream") as response:
            # Held in a variable: a reader dropped mid-stream is finalized, and that closes the response.
            events = SseReader.of(response)
            await events.take(1)
            text = (await client.get("/metrics")).text
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }

    def requests(route: str, status: str) -> float:
        return samples[
            ("runevents_http_requests_total", (("method", "GET"), ("route", route), ("status", status)))
        ]

    assert requests("/api/threads/{thread_id}/messages/page", "200") == 2
    assert requests("/api/threads/{thread_id}/messages/page", "422") == 1
    assert requests("unmatched", "404") == 1
    assert requests("/api/threads/{thread_id}/stream", "200") == 1
    assert samples[("runevents_http_open_streams", ())] == 1
    started = (
        "runevents_http_response_start_seconds_count",
        (("route", "/api/threads/{thread_id}/messages/page"),),
    )
    assert samples[started] == 3


async def test_the_server_closes_its_store_when_it_stops(tmp_path: Path) -> None:
    live = await serve(f"jsonl://{tmp_path}", tokens=None)
    await live.run(live.store.put(**event()))
    live.stop()
    # The JSONL store holds its directory's lock until closed: a new store can take it only now.
    async with JsonlRunEventStore(tmp_path) as reopened:
        assert await reopened.count_messages("t1") == 1
