"""Projector processes killed, rebalanced and paused under load: every acknowledged event projected once.

Real processes (`runevents project`), the real broker and PostgreSQL; nothing mocked. Each run draws
a seed (printed; set RUNEVENTS_FAULT_SEED to repeat one) for the events, the victims and the moments.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
import uuid
from typing import Any

import pytest

from runevents.bus.store import BusRunEventStore
from runevents.tables.migrate import upgrade_async
from tests.faults.exactly_once import (
    Acknowledged,
    assert_each_acknowledged_event_once,
    checksums,
    connect,
    wait_for_rows,
)
from tests.faults.projectors import ASSIGNED, ProjectorFleet, ProjectorProcess

THREADS = 200
# Threads written only by read-your-writes puts: their seqs must follow the order the puts returned.
PUT_THREADS = 4
STALE_WARNING = "is no longer at offset"


def fault_seed() -> int:
    """The run's seed: RUNEVENTS_FAULT_SEED, else a fresh one; printed, so a failure can be repeated."""
    seed = int(os.environ.get("RUNEVENTS_FAULT_SEED") or random.SystemRandom().randrange(2**32))
    print(f"fault seed {seed} (RUNEVENTS_FAULT_SEED={seed} repeats it)")
    return seed


def varied_event(rng: random.Random, thread: str, n: int) -> dict[str, Any]:
    """An event whose every column varies: messages, traces, dict/list/string content, a user or none."""
    kind = rng.randrange(4)
    return {
        "thread_id": thread,
        "run_id": f"r{n // 500}",
        "event_type": ("llm.human.input", "llm.ai.response", "trace.step", "tool.result")[kind],
        "category": "message" if kind < 2 else "trace",
        "content": (
            {"id": f"m-{thread}-{n}", "content": f"answer {n} " + "x" * rng.randrange(40)},
            {"id": f"m-{thread}-{n}", "content": [{"type": "text", "text": f"part {n}"}]},
            f"step {n}: " + "y" * rng.randrange(80),
            [n, rng.random(), {"ok": bool(n % 2)}],
        )[kind],
        "metadata": {"n": n, "usage": {"output_tokens": rng.randrange(1000)}} if kind else {},
        "user_id": f"u{rng.randrange(7)}" if kind != 2 else None,
    }


async def publish_load(
    store: BusRunEventStore,
    acked: Acknowledged,
    total: int,
    seed: int,
    *,
    writers: int = 4,
    batch: int = 500,
    pause_s: float = 0.0,
) -> None:
    """Publish `total` events over `THREADS` threads from `writers` coroutines, recording every ack."""
    remaining = total

    async def writer(number: int) -> None:
        nonlocal remaining
        rng = random.Random(f"{seed}-writer-{number}")
        n = 0
        while remaining > 0:
            size = min(batch, remaining)
            remaining -= size
            events = [
                varied_event(rng, f"t{rng.randrange(THREADS):03d}", number * total + n + i)
                for i in range(size)
            ]
            n += size
            acked.add_published(await store.publish_batch(events))
            await asyncio.sleep(pause_s)

    await asyncio.gather(*(writer(number) for number in range(writers)))


async def put_with_read_your_writes(
    store: BusRunEventStore, acked: Acknowledged, seed: int, stop: asyncio.Event
) -> None:
    """Put events one at a time on each of `PUT_THREADS` threads, each waiting for its projection,
    until `stop` is set."""

    async def putter(thread: str) -> None:
        rng = random.Random(f"{seed}-{thread}")
        n = 0
        while not stop.is_set():
            acked.add_put(await store.put(**varied_event(rng, thread, n)))
            n += 1
            await asyncio.sleep(0.05)

    await asyncio.gather(*(putter(f"rw{number}") for number in range(PUT_THREADS)))


async def kill_mid_batch(fleet: ProjectorFleet, url: str, kills: int, seed: int) -> int:
    """SIGKILL a random projector with a batch in flight `kills` times, each replaced at once;
    return how many kills caught their victim inside a batch's transaction."""
    rng = random.Random(f"{seed}-kills")
    probe = await connect(url)
    caught = 0
    try:
        for _ in range(kills):
            await asyncio.sleep(rng.uniform(0.2, 1.2))
            deadline = time.monotonic() + 10
            busy: list[ProjectorProcess] = []
            while not busy and time.monotonic() < deadline:
                fleet.check_alive()
                busy = await fleet.in_batch(probe)
                if not busy:
                    await asyncio.sleep(0.01)
            caught += bool(busy)
            victim = rng.choice(busy or fleet.live)
            code = fleet.stop(victim, signal.SIGKILL)
            assert code == -signal.SIGKILL, f"{victim.name} ended {code}, not by SIGKILL:\n{victim.output()}"
            fleet.start()
    finally:
        await probe.close()
    return caught


async def replay_into_new_schema(
    kafka: str, url: str, topic: str, acked: Acknowledged, *projector_options: str
) -> str:
    """Rebuild the projection from offset 0 with one projector, under a new name in a new schema."""
    schema = f"replay_{uuid.uuid4().hex[:8]}"
    await upgrade_async(url, schema=schema)
    options = ("--projection", f"replay_{schema}", "--schema", schema, *projector_options)
    with ProjectorFleet(kafka, url, topic, *options) as replay:
        replay.start()
        await wait_for_rows(url, len(acked), replay, schema=schema, within_s=300)
        replay.stop_all()
    return schema


async def assert_replay_gives_the_same_rows(kafka: str, url: str, topic: str, acked: Acknowledged) -> None:
    schema = await replay_into_new_schema(kafka, url, topic, acked)
    await assert_each_acknowledged_event_once(url, acked, schema=schema)
    live, replayed = await checksums(url, "public", schema)
    assert live == replayed, (
        f"the live projection (rows, checksum) {live} differs from its replay from offset 0 into "
        f"{schema}: {replayed}"
    )


@pytest.mark.parametrize(
    ("total", "kills"),
    [
        pytest.param(100_000, 20, id="100k-events-20-kills"),
        pytest.param(1_000_000, 100, id="1m-events-100-kills", marks=pytest.mark.soak),
    ],
)
async def test_projectors_killed_mid_batch_project_every_acknowledged_event_exactly_once(
    kafka_bootstrap: str, bus_db: str, wide_topic: str, total: int, kills: int
):
    seed = fault_seed()
    acked = Acknowledged()
    # A put waits behind the whole backlog of its partition: the bigger the ingest, the longer.
    wait_s = 120 * max(1, total // 100_000)
    store = BusRunEventStore(
        kafka_bootstrap, bus_db, topic=wide_topic, poll_interval_s=0.1, wait_timeout_s=wait_s
    )
    started = time.monotonic()
    marks: dict[str, float] = {}
    with ProjectorFleet(kafka_bootstrap, bus_db, wide_topic) as fleet:
        for _ in range(3):
            fleet.start()
        stop_puts = asyncio.Event()
        load = asyncio.create_task(publish_load(store, acked, total, seed))
        putter = asyncio.create_task(put_with_read_your_writes(store, acked, seed, stop_puts))
        try:
            load.add_done_callback(lambda _: marks.setdefault("published", time.monotonic() - started))
            caught = await kill_mid_batch(fleet, bus_db, kills, seed)
            killed_at = time.monotonic() - started
            await load
            stop_puts.set()
            await putter
        finally:
            for task in (load, putter):
                task.cancel()
            await store.close()
        waited = await wait_for_rows(bus_db, len(acked), fleet, within_s=wait_s + 60)
        fleet.stop_all()
    print(
        f"{len(acked.published)} published and {len(acked) - len(acked.published)} put; {kills} kills in "
        f"{killed_at:.1f}s, {caught} inside a batch; published by {marks['published']:.1f}s; all projected "
        f"{waited:.1f}s later; {fleet.started} projector processes"
    )
    assert caught >= kills * 3 // 4, (
        f"only {caught} of {kills} kills found their victim inside a batch: the ingest ended too soon"
    )
    await assert_each_acknowledged_event_once(bus_db, acked)
    await assert_replay_gives_the_same_rows(kafka_bootstrap, bus_db, wide_topic, acked)


async def test_projectors_joining_and_leaving_under_load_project_every_event_once(
    kafka_bootstrap: str, bus_db: str, wide_topic: str
):
    seed = fault_seed()
    rng = random.Random(f"{seed}-members")
    acked = Acknowledged()
    store = BusRunEventStore(
        kafka_bootstrap, bus_db, topic=wide_topic, poll_interval_s=0.1, wait_timeout_s=60
    )
    with ProjectorFleet(kafka_bootstrap, bus_db, wide_topic) as fleet:
        fleet.start()
        stop_puts = asyncio.Event()
        # ~30,000 events over ~12 s: the membership changes below all happen while they are written.
        load = asyncio.create_task(
            publish_load(store, acked, 30_000, seed, writers=3, batch=250, pause_s=0.25)
        )
        putter = asyncio.create_task(put_with_read_your_writes(store, acked, seed, stop_puts))
        try:
            for change in ("join", "join", "leave", "join"):
                await asyncio.sleep(2)
                assert not load.done(), f"the writers finished before the {change}: write for longer"
                if change == "join":
                    fleet.start()
                else:
                    # A member that has partitions: one started a moment ago under load may not have
                    # its signal handlers yet, and a SIGTERM then ends it as any Python process.
                    leaving = rng.choice([p for p in fleet.live if ASSIGNED in p.output()])
                    code = fleet.stop(leaving, signal.SIGTERM)
                    assert code == 0, f"{leaving.name} exited {code} on SIGTERM:\n{leaving.output()}"
            await load
            stop_puts.set()
            await putter
        finally:
            for task in (load, putter):
                task.cancel()
            await store.close()
        await wait_for_rows(bus_db, len(acked), fleet)
        fleet.stop_all()
    await assert_each_acknowledged_event_once(bus_db, acked)


async def pause_outside_a_batch(fleet: ProjectorFleet, projector: ProjectorProcess, url: str) -> None:
    """SIGSTOP `projector` between two batches' transactions (it then holds the rows it fetched, no locks)."""
    probe = await connect(url)
    try:
        for _ in range(200):
            if projector not in await fleet.in_batch(probe):
                projector.process.send_signal(signal.SIGSTOP)
                await asyncio.sleep(0.05)
                if projector not in await fleet.in_batch(probe):
                    return
                # Stopped inside a transaction: it would hold its offset rows' locks. Try again.
                projector.process.send_signal(signal.SIGCONT)
            await asyncio.sleep(0.003)
    finally:
        await probe.close()
    raise AssertionError(f"{projector.name} could not be paused outside a batch's transaction")


async def test_a_projector_paused_past_its_session_and_resumed_is_fenced_off_its_stale_batch(
    kafka_bootstrap: str, bus_db: str, wide_topic: str
):
    seed = fault_seed()
    total = 40_000
    acked = Acknowledged()
    store = BusRunEventStore(
        kafka_bootstrap, bus_db, topic=wide_topic, poll_interval_s=0.1, wait_timeout_s=60
    )
    try:
        await publish_load(store, acked, total, seed)
        with ProjectorFleet(kafka_bootstrap, bus_db, wide_topic) as fleet:
            paused = fleet.start()
            await wait_for_rows(bus_db, 1000, fleet)
            await pause_outside_a_batch(fleet, paused, bus_db)
            paused_at = time.monotonic()
            connection = await connect(bus_db)
            try:
                at_pause = await connection.fetchval("SELECT count(*) FROM run_events")
            finally:
                await connection.close()
            assert at_pause < total, "the first projector finished before it could be paused"
            fleet.start()  # takes every partition once the paused one's session (2 s) expires
            await wait_for_rows(bus_db, total, fleet)
            await asyncio.sleep(max(0.0, paused_at + 5 - time.monotonic()))
            paused.process.send_signal(signal.SIGCONT)

            deadline = time.monotonic() + 30
            while STALE_WARNING not in paused.output() and time.monotonic() < deadline:
                fleet.check_alive()
                await asyncio.sleep(0.1)
            rng = random.Random(f"{seed}-puts")
            for n in range(5):  # both projectors working again: writes still go through
                acked.add_put(await store.put(**varied_event(rng, f"rw{n}", n)))
            fleet.stop_all()
    finally:
        await store.close()
    print(f"paused at {at_pause} of {total} events projected")
    await assert_each_acknowledged_event_once(bus_db, acked)
    assert STALE_WARNING in paused.output(), (
        f"the resumed projector did not report a fenced-off batch ({STALE_WARNING!r}); it said:\n"
        f"{paused.output()}"
    )
