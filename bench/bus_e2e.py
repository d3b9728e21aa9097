"""Benchmark: the bus end to end, against a raw COPY of the same rows into the same table.

In one run on one PostgreSQL and one broker: (1) drain: a topic pre-filled with events, then two
projectors (OS processes, one consumer group) started and timed until every event is committed to
the read tables, with the projectors' peak RSS, and again with a small backlog to compare the RSS;
(2) live: writers publishing while the projectors run, timed from the first publish to the last
event committed; (3) `put` with read-your-writes from 64 coroutines, on distinct threads and on one
hot thread; and the latency of one `put` at a time against a raw aiokafka `send_and_wait` to the
same broker.
Each rate is set against a raw asyncpg COPY of the same number of rows into a copy of `run_events`,
measured in the same repetition, and printed beside its target (issue 19's, else issue 6's). Beside the rates,
the CPU each role used per event of the drain: this process filling the topic, the projectors draining
it, the PostgreSQL server and the broker (`bench.cpu`).

Over 400 lines: this benchmark, and the broker, projector, drain and COPY pieces `bench replay` and
`bench encryption` run too (one place for how the bus is set up and measured).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer
from sqlalchemy.engine import URL

from bench import cpu
from bench.events import COLUMNS, make_event, table_row
from bench.machine import inputs_frozen, load
from bench.postgres import postgres_server, scratch_database
from bench.roles import Servers, cpu_line, median_us
from runevents.bus.store import BusRunEventStore
from runevents.bus.topic import create_topic
from runevents.crypto.keyring import parse_keyring
from runevents.devstack.broker import LocalBroker
from runevents.heap import HEAP_TOP_PAD
from runevents.tables.writes import libpq_dsn

KAFKA_ENV: Final = "RUNEVENTS_BENCH_KAFKA"
PARTITIONS: Final = 12
PROJECTORS: Final = 2
THREADS: Final = 1_000
PUBLISHERS: Final = 4
PUBLISH_BATCH: Final = 500
# The drain's backlog goes out in publish_batch calls of the size issue 19's publisher target is set for.
FILL_BATCH: Final = 100
COROUTINES: Final = 64
COPY_SCHEMA: Final = "bench_copy"


@dataclass(frozen=True)
class Workload:
    """Events per measurement and repetitions."""

    drained: int
    small_drain: int
    live: int
    puts: int
    latency_samples: int
    repetitions: int


DEFAULT: Final = Workload(
    drained=1_000_000, small_drain=10_000, live=100_000, puts=3_200, latency_samples=300, repetitions=3
)
QUICK: Final = Workload(
    drained=50_000, small_drain=5_000, live=20_000, puts=640, latency_samples=100, repetitions=1
)
# Each rate as a share of the COPY of as many rows: issue 19's drain, live and put targets (issue 6 set
# 0.60, 0.40 and 0.063), issue 6's hot-thread one; and issue 6's two bounds.
TARGETS: Final = {"drain": 0.75, "live": 0.30, "put": 0.063, "hot": 0.034}
LATENCY_TARGET: Final = 3.0  # put p50 / send_and_wait p50
RSS_TARGET: Final = 2.0  # projector peak RSS, large backlog / small backlog
# Issue 19's targets, µs of CPU per event (user+sys); PostgreSQL's figure is the floor, with no target.
CPU_TARGETS_US: Final = {"publisher": 20.0, "projector": 20.0}


@contextlib.contextmanager
def broker() -> Iterator[tuple[str, str]]:
    """The broker to run on: `RUNEVENTS_BENCH_KAFKA`, or a throwaway local Tansu."""
    named = os.environ.get(KAFKA_ENV)
    if named:
        yield named, f"{KAFKA_ENV} ({named})"
        return
    with (
        tempfile.TemporaryDirectory(prefix="runevents-bench-kafka-") as scratch,
        LocalBroker(Path(scratch)) as local,
    ):
        yield local.bootstrap_servers, f"local Tansu at {local.bootstrap_servers}, memory storage"


def events(count: int, tag: str) -> list[dict[str, Any]]:
    """`count` events over `THREADS` threads, in the shape the sql benchmarks write (about 600 bytes)."""
    return [make_event(f"{tag}-{n % THREADS:04d}", f"run-{tag}", n) for n in range(count)]


@contextlib.contextmanager
def projectors(
    kafka: str, url: URL, topic: str, *, kek: str | None = None
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """`PROJECTORS` projector processes in one group (given the KEK `kek`, if any); stopped with SIGTERM
    at the end."""
    command = [sys.executable, "-m", "runevents.cli", "project", "--kafka", kafka, "--metrics-port", "0"]
    environment = os.environ | ({} if kek is None else {"RUNEVENTS_KEK": kek})
    processes = [
        subprocess.Popen(
            [*command, "--database", libpq_dsn(url), "--topic", topic, "--session-timeout-ms", "2000"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=environment,
        )
        for _ in range(PROJECTORS)
    ]
    try:
        yield processes
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(timeout=60)


def peak_rss_mib(processes: Sequence[subprocess.Popen[bytes]]) -> float:
    """The largest peak resident set (VmHWM) among `processes`, in MiB (Linux)."""
    peaks = []
    for process in processes:
        status = Path(f"/proc/{process.pid}/status").read_text()
        (line,) = [line for line in status.splitlines() if line.startswith("VmHWM:")]
        peaks.append(int(line.split()[1]) / 1024)
    return max(peaks)


async def rows(admin: asyncpg.Connection) -> int:
    """Events in the read tables (from the counters: one row per thread, not a scan)."""
    return int(await admin.fetchval("SELECT coalesce(sum(event_count), 0) FROM thread_counters"))


async def until_rows(admin: asyncpg.Connection, count: int) -> int:
    """Return, with their number, once the read tables hold at least `count` events."""
    while (held := await rows(admin)) < count:  # noqa: ASYNC110 (polling the database, not this process)
        await asyncio.sleep(0.01)
    return held


async def publish(
    store: BusRunEventStore, batch: Sequence[dict[str, Any]], size: int = PUBLISH_BATCH
) -> None:
    """Publish `batch` in chunks of `size` from `PUBLISHERS` concurrent publishers."""
    chunks = iter(range(0, len(batch), size))

    async def publisher() -> None:
        for start in chunks:
            await store.publish_batch(batch[start : start + size])

    await asyncio.gather(*(publisher() for _ in range(PUBLISHERS)))


async def latencies(store: BusRunEventStore, kafka: str, topic: str, samples: int) -> dict[str, float]:
    """p50/p99 ms of one `put` at a time (read-your-writes) and of a raw aiokafka `send_and_wait`."""
    puts = []
    for n in range(samples):
        started = time.perf_counter()
        await store.put(**make_event("latency", "run-latency", n))
        puts.append(time.perf_counter() - started)
    # As the bus producer sends: acks=all, lz4, no linger.
    producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all", compression_type="lz4", linger_ms=0)
    await producer.start()
    sends = []
    try:
        value = orjson.dumps(make_event("latency-raw", "run-latency", 0))
        for _ in range(samples):
            started = time.perf_counter()
            await producer.send_and_wait(topic, value=value, key=b"latency-raw")
            sends.append(time.perf_counter() - started)
    finally:
        await producer.stop()

    def quantile(values: list[float], q: int) -> float:
        return statistics.quantiles(values, n=100)[q - 1] * 1000

    return {
        "put p50": quantile(puts, 50),
        "put p99": quantile(puts, 99),
        "send p50": quantile(sends, 50),
        "send p99": quantile(sends, 99),
    }


async def copy_rate(admin: asyncpg.Connection, count: int) -> float:
    """Rows/s of a raw COPY of `count` rows like the bus writes, into an empty copy of run_events."""
    await admin.execute(f"TRUNCATE {COPY_SCHEMA}.run_events")
    seqs: dict[str, int] = {}
    records = []
    for event in events(count, "copy"):
        seqs[event["thread_id"]] = seq = seqs.get(event["thread_id"], 0) + 1
        records.append(table_row(event, seq))
    started = time.perf_counter()
    await admin.copy_records_to_table("run_events", records=records, columns=COLUMNS, schema_name=COPY_SCHEMA)
    return count / (time.perf_counter() - started)


@contextlib.asynccontextmanager
async def with_copy_table(server: URL) -> AsyncIterator[tuple[URL, asyncpg.Connection]]:
    """A scratch database at head with an empty copy of run_events for the COPY baseline, and a connection."""
    async with scratch_database(server) as url:
        admin = await asyncpg.connect(libpq_dsn(url))
        try:
            await admin.execute(f"CREATE SCHEMA {COPY_SCHEMA}")
            await admin.execute(f"CREATE TABLE {COPY_SCHEMA}.run_events (LIKE run_events INCLUDING ALL)")
            yield url, admin
        finally:
            await admin.close()


async def empty(admin: asyncpg.Connection) -> None:
    """Empty the read tables and the projection's offsets."""
    await admin.execute(
        "TRUNCATE run_events, thread_counters, projection_offsets, op_results, deleted_events"
    )


@dataclass(frozen=True)
class Drain:
    """A drain's rate, the projectors' peak RSS, and µs of CPU per event by role."""

    rate: float
    rss_mib: float
    cpu_us: dict[str, float]


async def drain(
    kafka: str,
    url: URL,
    admin: asyncpg.Connection,
    topic: str,
    count: int,
    servers: Servers,
    *,
    kek: str | None = None,
) -> Drain:
    """Project `count` pre-published events: events/s (group join included), peak RSS, CPU per event.

    The CPU is read in two windows: this process publishing the backlog (the publisher; PostgreSQL and
    the broker beside it), then the projectors from the first rows they commit to the last (their start
    and group join left out; PostgreSQL and the broker again). PostgreSQL's and the broker's figures
    are the two windows' per-event figures added up.
    """
    backlog = events(count, "drain")
    keyring = None if kek is None else parse_keyring(kek, source="the benchmark's KEK")
    store = BusRunEventStore(kafka, libpq_dsn(url), topic=topic, keyring=keyring)
    try:
        with inputs_frozen():
            filling = cpu.Meter({"publisher": cpu.processes(os.getpid()), **servers.roles()})
            await publish(store, backlog, FILL_BATCH)
            filled = filling.seconds()
    finally:
        await store.close()
    del backlog
    started = time.perf_counter()
    with projectors(kafka, url, topic, kek=kek) as processes:
        first = await until_rows(admin, 1)
        draining = cpu.Meter({"projector": cpu.processes(*(p.pid for p in processes)), **servers.roles()})
        await until_rows(admin, count)
        rate = count / (time.perf_counter() - started)
        drained = draining.seconds()
        rss = peak_rss_mib(processes)
    # A backlog committed in one go before the first look leaves no drain window to divide by.
    windows = [(filled, count), (drained, count - first)] if first < count else [(filled, count)]
    return Drain(rate, rss, cpu.per_event_us(*windows))


async def repetition(
    kafka: str, url: URL, admin: asyncpg.Connection, work: Workload, servers: Servers
) -> dict[str, float]:
    """One round of the measurements and their COPY baselines; events/s (and ms, MiB, µs) by name."""
    rates: dict[str, float] = {}

    async def fresh_topic() -> str:
        topic = f"bench-{uuid.uuid4().hex[:10]}"
        await create_topic(kafka, topic, partitions=PARTITIONS)
        await empty(admin)
        return topic

    # (1) drain a pre-filled topic: a large backlog, then a small one for the memory comparison
    large = await drain(kafka, url, admin, await fresh_topic(), work.drained, servers)
    rates["drain"], rates["rss large"] = large.rate, large.rss_mib
    rates.update({f"{role} cpu": us for role, us in large.cpu_us.items()})
    rates["drain copy"] = await copy_rate(admin, work.drained)
    small = await drain(kafka, url, admin, await fresh_topic(), work.small_drain, servers)
    rates["rss small"] = small.rss_mib

    # (2) live writers, projectors running; (3) put with read-your-writes
    topic = await fresh_topic()
    store = BusRunEventStore(kafka, libpq_dsn(url), topic=topic)
    try:
        with projectors(kafka, url, topic):
            await store.put(**make_event("warm-up", "run-warm", 0))  # the group has its partitions
            base = await rows(admin)
            live = events(work.live, "live")  # built before the clock starts
            with inputs_frozen():
                started = time.perf_counter()
                await publish(store, live)
                await until_rows(admin, base + work.live)
                rates["live"] = work.live / (time.perf_counter() - started)
            del live

            per_lane = work.puts // COROUTINES

            async def lane(thread: str, number: int) -> None:
                for n in range(per_lane):
                    await store.put(**make_event(thread, f"run-{number:02d}", n))

            for name, thread in (("put", "put-{number:02d}"), ("hot", "hot")):
                started = time.perf_counter()
                await asyncio.gather(
                    *(lane(thread.format(number=number), number) for number in range(COROUTINES))
                )
                rates[name] = per_lane * COROUTINES / (time.perf_counter() - started)
            rates.update(await latencies(store, kafka, topic, work.latency_samples))
    finally:
        await store.close()
    rates["live copy"] = await copy_rate(admin, work.live)
    rates["put copy"] = rates["hot copy"] = await copy_rate(admin, work.puts)
    return rates


async def run(kafka: str, kafka_description: str, server: URL, description: str, work: Workload) -> None:
    """Set up, run every repetition and print the report."""
    print(f"runevents bench bus_e2e: median of {work.repetitions}, {os.cpu_count()} CPUs")
    print(f"PostgreSQL: {description}; Kafka: {kafka_description}")
    print(f"a topic of {PARTITIONS} partitions; {PROJECTORS} projector processes in one group")
    print(
        f"heap: glibc M_TOP_PAD {HEAP_TOP_PAD >> 20} MiB in this process and the projectors, start-up "
        "objects frozen out of the GC (runevents.heap), and the events built to publish while they are"
    )
    servers = await Servers.find(server, kafka)
    async with with_copy_table(server) as (url, admin):
        print(f"load average before: {load()}")
        runs = [await repetition(kafka, url, admin, work, servers) for _ in range(work.repetitions)]
        print(f"load average after:  {load()}")
    print(f"{'':46}{'bus ev/s':>10}{'COPY ev/s':>11}{'bus/COPY':>10}{'target':>8}")
    labels = {
        "drain": f"drain: {work.drained:,} pre-published events",
        "live": f"live: {work.live:,} published while projecting",
        "put": f"put, read-your-writes, {COROUTINES} coroutines",
        "hot": f"put, read-your-writes, {COROUTINES} on one thread",
    }
    for name, label in labels.items():
        bus = statistics.median(run[name] for run in runs)
        copy = statistics.median(run[f"{name} copy"] for run in runs)
        ratio = statistics.median(run[name] / run[f"{name} copy"] for run in runs)
        verdict = "met" if ratio >= TARGETS[name] else "MISSED"
        print(f"{label:46}{bus:>10,.0f}{copy:>11,.0f}{ratio:>10.3f}{TARGETS[name]:>8.3f}  {verdict}")
    print(f"CPU per event of the drain ({work.drained:,} events), user+sys, median of {len(runs)}:")
    for line in cpu_lines(runs, "the drain"):
        print(line)

    def median(key: str) -> float:
        return statistics.median(run[key] for run in runs)

    p50 = statistics.median(run["put p50"] / run["send p50"] for run in runs)
    print(
        f"latency, one at a time ({work.latency_samples} each): put p50 {median('put p50'):.1f} ms, "
        f"p99 {median('put p99'):.1f} ms; raw send_and_wait p50 {median('send p50'):.1f} ms, "
        f"p99 {median('send p99'):.1f} ms; put/send p50 {p50:.1f}x (target <= {LATENCY_TARGET:.0f}x: "
        f"{'met' if p50 <= LATENCY_TARGET else 'MISSED'})"
    )
    rss = statistics.median(run["rss large"] / run["rss small"] for run in runs)
    print(
        f"projector peak RSS: {median('rss large'):.0f} MiB draining {work.drained:,}, "
        f"{median('rss small'):.0f} MiB draining {work.small_drain:,}; ratio {rss:.2f} "
        f"(target <= {RSS_TARGET:.0f}: {'met' if rss <= RSS_TARGET else 'MISSED'})"
    )


def cpu_lines(runs: Sequence[Mapping[str, float]], drain: str) -> list[str]:
    """The drain's `<role> CPU/event` lines, from the runs' '<role> cpu' figures."""
    floor = median_us(runs, "postgresql cpu")
    return [
        cpu_line(
            "publisher",
            median_us(runs, "publisher cpu"),
            f"this process filling the topic: publish_batch of {FILL_BATCH} events, {PUBLISHERS} at once",
            target=CPU_TARGETS_US["publisher"],
            floor=floor,
        ),
        cpu_line(
            "projector",
            median_us(runs, "projector cpu"),
            f"the {PROJECTORS} projector processes in {drain}, from the first rows committed",
            target=CPU_TARGETS_US["projector"],
            floor=floor,
        ),
        cpu_line("postgresql", floor, f"every server process, filling and in {drain}"),
        cpu_line("broker", median_us(runs, "broker cpu"), f"the broker, filling and in {drain}", floor=floor),
    ]


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line, start or name the servers, and run the benchmark."""
    parser = argparse.ArgumentParser(prog="python -m bench bus_e2e", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer events, one repetition: a smoke test")
    args = parser.parse_args(argv)
    with broker() as (kafka, kafka_description), postgres_server() as (server, description):
        asyncio.run(run(kafka, kafka_description, server, description, QUICK if args.quick else DEFAULT))
