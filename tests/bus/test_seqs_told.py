"""Writers told their seqs by the projector's notification, and reading back only what they were not told."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import REGISTRY

from runevents.bus.projector import Projector
from runevents.bus.projector.batch import SEQS_TOLD_MAX, seq_notifications
from runevents.bus.store import BusRunEventStore
from tests.bus.conftest import running


def _seqs(topic: str, how: str) -> float:
    value = REGISTRY.get_sample_value("runevents_read_your_writes_seqs_total", {"topic": topic, "how": how})
    return value or 0.0


def _event(thread_id: str, n: int) -> dict[str, Any]:
    return {"thread_id": thread_id, "run_id": "r1", "event_type": "e", "category": "trace", "content": f"{n}"}


def test_a_batch_s_seqs_are_told_in_payloads_postgresql_takes() -> None:
    seqs = [(f"0190a5c6-0000-7000-8000-{n:012d}", n + 1) for n in range(SEQS_TOLD_MAX)]
    payloads = seq_notifications("serving", "main", "run-events", seqs)
    assert len(payloads) > 1
    assert all(len(payload.encode()) < 8000 for payload in payloads)
    told = []
    for payload in payloads:
        schema, projection, topic, parts = payload.split("\t")
        assert (schema, projection, topic) == ("serving", "main", "run-events")
        told += [(event_id, int(seq)) for event_id, seq in (part.split(":") for part in parts.split(","))]
    assert told == seqs


async def test_writers_are_told_the_seqs_of_a_small_batch_and_read_none_back(
    bus_store: BusRunEventStore, make_projector: Callable[..., Projector], topic: str
) -> None:
    async with running(make_projector()):
        await bus_store.put(**_event("warm-up", 0))  # the listener is up before the counts start
        told, read = _seqs(topic, "told"), _seqs(topic, "read")
        records = [await bus_store.put(**_event("t1", n)) for n in range(5)]
        records += await bus_store.put_batch([_event(f"t{n % 3}", n) for n in range(20)])
        assert _seqs(topic, "told") - told == 25
        assert _seqs(topic, "read") - read == 0
        # Told, they are the seqs the read tables hold.
        stored = {
            record["event_id"]: record["seq"]
            for thread_id in ("t0", "t1", "t2")
            for record in await bus_store.list_events(thread_id, "r1", limit=100)
        }
        assert {record["event_id"]: record["seq"] for record in records} == stored
        assert [record["seq"] for record in records[:5]] == [1, 2, 3, 4, 5]


async def test_a_batch_too_large_to_tell_is_read_back(
    bus_store: BusRunEventStore, make_projector: Callable[..., Projector], topic: str
) -> None:
    async with running(make_projector()):
        await bus_store.put(**_event("warm-up", 0))
        told, read = _seqs(topic, "told"), _seqs(topic, "read")
        records = await bus_store.put_batch([_event("big", n) for n in range(SEQS_TOLD_MAX + 1)])
        assert [record["seq"] for record in records] == list(range(1, SEQS_TOLD_MAX + 2))
        assert _seqs(topic, "read") - read == SEQS_TOLD_MAX + 1
        assert _seqs(topic, "told") - told == 0
