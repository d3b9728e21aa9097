"""Benchmark: how soon a subscription sees a new record, against a bare LISTEN/NOTIFY and the put's own wait.

sql on PostgreSQL: a `SqlRunEventStore` puts one record at a time and a subscription through a second
store object in the same process receives it; timed from the put's return to the receipt (0 when the
record came first), against a bare asyncpg LISTEN/NOTIFY round trip on the same server, the samples of
the two taken in turn. bus: a `BusRunEventStore` puts with read-your-writes while projector processes
run (bus_e2e's broker and projectors) and a second bus store subscribes; timed from the put's return,
and from its start, to the receipt, against the put's own duration.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Final

import asyncpg
from sqlalchemy.engine import URL

# bus_e2e's own helpers, reused as they are: the broker (Tansu or RUNEVENTS_BENCH_KAFKA), the projectors.
from bench.bus_e2e import PARTITIONS, PROJECTORS, broker, projectors
from bench.events import make_event
from bench.machine import load
from bench.postgres import postgres_server, scratch_database
from runevents.bus.store import BusRunEventStore
from runevents.bus.topic import create_topic
from runevents.store.base import RunEventStore
from runevents.tables.sql import SqlRunEventStore
from runevents.tables.writes import libpq_dsn

SAMPLES: Final = 500
QUICK_SAMPLES: Final = 50
WARM_UP: Final = 10
SPACING_S: Final = 0.005  # between samples, so each write is measured alone
RECEIPT_TIMEOUT_S: Final = 30.0
CHANNEL: Final = "runevents_bench_subscribe"
THREAD: Final = "subscribe-bench"
SQL_TARGET: Final = 2.0  # put returned -> received, p50, over a bare LISTEN/NOTIFY round trip p50
BUS_TARGET: Final = 1.5  # put returned -> received, p50, over the put's read-your-writes wait p50

Arrival = Callable[[int], Awaitable[float]]
Samples = dict[str, list[float]]


@contextlib.asynccontextmanager
async def subscribed(store: RunEventStore, thread_id: str) -> AsyncIterator[Arrival]:
    """A subscription to `thread_id` in a task; yields `arrival(seq)`: when that record was received."""
    arrivals: asyncio.Queue[tuple[int, float]] = asyncio.Queue()

    async def follow() -> None:
        async for record in store.subscribe(thread_id):
            arrivals.put_nowait((record["seq"], time.perf_counter()))

    task = asyncio.create_task(follow())

    async def arrival(seq: int) -> float:
        try:
            async with asyncio.timeout(RECEIPT_TIMEOUT_S):
                got, at = await arrivals.get()
        except TimeoutError:
            if task.done():
                task.result()  # the subscription's own error, rather than the timeout
            raise
        if got != seq:
            raise RuntimeError(f"the subscription yielded seq {got}, expected {seq}")
        return at

    try:
        yield arrival
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def bare_notify(dsn: str) -> AsyncIterator[Callable[[], Awaitable[float]]]:
    """A LISTEN connection and an autocommit sender; yields `round_trip()`: pg_notify to callback, s."""
    heard: asyncio.Queue[float] = asyncio.Queue()

    def on_notify(*_: object) -> None:
        heard.put_nowait(time.perf_counter())

    listener = await asyncpg.connect(dsn)
    sender = await asyncpg.connect(dsn)

    async def round_trip() -> float:
        started = time.perf_counter()
        await sender.fetchval("SELECT pg_notify($1, $2)", CHANNEL, "ping")
        async with asyncio.timeout(RECEIPT_TIMEOUT_S):
            return await heard.get() - started

    try:
        await listener.add_listener(CHANNEL, on_notify)
        yield round_trip
    finally:
        await sender.close()
        await listener.close()


async def timed_put(store: RunEventStore, arrival: Arrival, index: int) -> tuple[float, float, float]:
    """Seconds of one put, from its return to the receipt (0 if received first), and from its start."""
    started = time.perf_counter()
    record = await store.put(**make_event(THREAD, "run-subscribe", index))
    returned = time.perf_counter()
    received = await arrival(record["seq"])
    return returned - started, max(0.0, received - returned), received - started


async def take(samples: Samples, store: RunEventStore, arrival: Arrival, index: int) -> None:
    """One put sample into `samples` ("put", "after", "from start"), then the pause."""
    put, after, from_start = await timed_put(store, arrival, index)
    samples["put"].append(put)
    samples["after"].append(after)
    samples["from start"].append(from_start)
    await asyncio.sleep(SPACING_S)


async def sql_samples(server: URL, count: int) -> Samples:
    """Bare LISTEN/NOTIFY round trips and sql put -> subscription receipts, in turn, on a scratch database."""
    samples: Samples = {"notify": [], "put": [], "after": [], "from start": []}
    async with scratch_database(server) as url:
        dsn = libpq_dsn(url)
        async with (
            SqlRunEventStore(dsn) as writer,
            SqlRunEventStore(dsn) as reader,
            bare_notify(dsn) as round_trip,
            subscribed(reader, THREAD) as arrival,
        ):
            for index in range(WARM_UP):  # pools, prepared statements, the listener's connection
                await timed_put(writer, arrival, index)
                await round_trip()
            for index in range(WARM_UP, WARM_UP + count):
                samples["notify"].append(await round_trip())
                await asyncio.sleep(SPACING_S)
                await take(samples, writer, arrival, index)
    return samples


async def bus_samples(kafka: str, server: URL, count: int) -> Samples:
    """Bus put -> subscription receipts with projector processes running, on a fresh topic and database."""
    samples: Samples = {"put": [], "after": [], "from start": []}
    async with scratch_database(server) as url:
        topic = f"bench-subscribe-{uuid.uuid4().hex[:10]}"
        await create_topic(kafka, topic, partitions=PARTITIONS)
        dsn = libpq_dsn(url)
        with projectors(kafka, url, topic):
            async with (
                BusRunEventStore(kafka, dsn, topic=topic) as writer,
                BusRunEventStore(kafka, dsn, topic=topic) as reader,
                subscribed(reader, THREAD) as arrival,
            ):
                for index in range(WARM_UP):  # the first put waits for the group to take its partitions
                    await timed_put(writer, arrival, index)
                for index in range(WARM_UP, WARM_UP + count):
                    await take(samples, writer, arrival, index)
    return samples


def ms(values: list[float], percentile: int) -> float:
    """The `percentile` of `values` (seconds) in milliseconds, within the values' range."""
    return statistics.quantiles(values, n=100, method="inclusive")[percentile - 1] * 1000


def row(label: str, values: list[float]) -> str:
    """A report line: label, p50 and p99 in ms."""
    return f"  {label:44}{ms(values, 50):>9.2f}{ms(values, 99):>9.2f}"


def verdict(ratio: float, target: float) -> str:
    """MET or MISSED."""
    return "MET" if ratio <= target else "MISSED"


def report(sql: Samples, bus: Samples) -> None:
    """Print both parts' percentiles, ratios and targets."""
    count = len(sql["after"])
    print(f"{'':46}{'p50 ms':>9}{'p99 ms':>9}")
    print("sql+postgresql: writer and subscriber are two SqlRunEventStores in this process")
    print(row("bare LISTEN/NOTIFY round trip (baseline)", sql["notify"]))
    print(row("put duration", sql["put"]))
    print(row("put returned -> subscriber received", sql["after"]))
    print(row("put started -> subscriber received", sql["from start"]))
    ratio = ms(sql["after"], 50) / ms(sql["notify"], 50)
    first = sum(1 for value in sql["after"] if value == 0.0)
    print(
        f"  ratio p50/p50 {ratio:.2f}x   target: p50 <= {SQL_TARGET:.1f}x a bare LISTEN/NOTIFY round trip: "
        f"{verdict(ratio, SQL_TARGET)}   (received before put returned: {first} of {count})"
    )
    print(f"bus: {PROJECTORS} projector processes; writer and subscriber are two BusRunEventStores")
    print(row("put, read-your-writes (baseline)", bus["put"]))
    print(row("put returned -> subscriber received", bus["after"]))
    print(row("put started -> subscriber received", bus["from start"]))
    ratio = ms(bus["after"], 50) / ms(bus["put"], 50)
    from_start = ms(bus["from start"], 50) / ms(bus["put"], 50)
    first = sum(1 for value in bus["after"] if value == 0.0)
    print(
        f"  ratio p50/p50 {ratio:.2f}x   target: p50 <= {BUS_TARGET:.1f}x the put's read-your-writes wait: "
        f"{verdict(ratio, BUS_TARGET)}   (received before put returned: {first} of {count})"
    )
    print(
        f"  from the put's start: p50/p50 {from_start:.2f}x   same target: {verdict(from_start, BUS_TARGET)}"
    )


async def run(kafka: str, kafka_description: str, server: URL, description: str, count: int) -> None:
    """Take both parts' samples and print the report."""
    print(
        f"runevents bench subscribe: {count} samples each, one write at a time, {SPACING_S * 1000:.0f} ms "
        f"apart, after {WARM_UP} warm-up writes; {os.cpu_count()} CPUs"
    )
    print(f"PostgreSQL: {description}; Kafka: {kafka_description}")
    print(f"load average before: {load()}")
    sql = await sql_samples(server, count)
    bus = await bus_samples(kafka, server, count)
    print(f"load average after:  {load()}")
    report(sql, bus)


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line, start or name the servers, and run the benchmark."""
    parser = argparse.ArgumentParser(prog="python -m bench subscribe", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SAMPLES} samples: a smoke test")
    args = parser.parse_args(argv)
    with broker() as (kafka, kafka_description), postgres_server() as (server, description):
        count = QUICK_SAMPLES if args.quick else SAMPLES
        asyncio.run(run(kafka, kafka_description, server, description, count))
