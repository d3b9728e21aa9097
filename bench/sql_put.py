"""Benchmark: the sql backend's writes against `max(seq)+1` under a lock and raw COPY of the same rows.

Three workloads, each written four ways in every repetition, in one process on one PostgreSQL
database: through `SqlRunEventStore`; deer-flow's database store (`deerflow_store`: its table, its
ORM session, one transaction per call with `pg_advisory_xact_lock(hashtext(thread_id))` and
`SELECT max(seq)+1`); the same seq rule done lean ("naive": raw asyncpg, the store's own rows, into a
copy of `run_events`), a stricter baseline than deer-flow's; and a raw asyncpg
`copy_records_to_table` of the same rows into another copy. Every table is emptied before every
measurement, so each starts from the same state. Each measurement's CPU per event is read from /proc
(`bench.cpu`) for this process (the writer) and the PostgreSQL server.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
from sqlalchemy.engine import URL

from bench import cpu, deerflow_store
from bench.deerflow_store import DeerFlowStore
from bench.events import COLUMNS, Event, make_event, table_row
from bench.machine import inputs_frozen, load
from bench.postgres import postgres_server, scratch_database
from bench.roles import Servers, cpu_line, median_us
from runevents.tables.sql import SqlRunEventStore
from runevents.tables.writes import libpq_dsn

BATCH: Final = 100
BATCH_THREADS: Final = 1_000
BATCH_WRITERS: Final = 4
COROUTINES: Final = 64
POOL_SIZE: Final = 8  # SqlRunEventStore's default pool_size, given to the naive baseline's pool too
COPY_CONNECTIONS: Final = 2
NAIVE_SCHEMA: Final = "bench_naive"
COPY_SCHEMA: Final = "bench_copy"
WAYS: Final = ("store", "naive", "deerflow", "copy")
WRITER_CPU_TARGET_US: Final = 12.0  # issue 19: this process's CPU per event in (a) through the store

Timed = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Workload:
    """How many events each measurement writes, and how often it is repeated."""

    batched: int
    spread: int
    one_thread: int
    repetitions: int


# (a) at full size is one batch for each of the 1,000 threads.
DEFAULT: Final = Workload(batched=100_000, spread=6_400, one_thread=3_200, repetitions=5)
QUICK: Final = Workload(batched=20_000, spread=1_280, one_thread=1_280, repetitions=3)
WARM_UP: Final = Workload(batched=2_000, spread=256, one_thread=256, repetitions=1)


def batched_events(count: int) -> list[list[Event]]:
    """(a): 100-event batches of one thread and run each, like a journal's flush, over 1,000 threads."""
    batches = []
    for number in range(count // BATCH):
        thread = number % BATCH_THREADS
        thread_id, run_id = f"batch-{thread:04d}", f"run-{thread:04d}-{number // BATCH_THREADS:03d}"
        batches.append([make_event(thread_id, run_id, i) for i in range(BATCH)])
    return batches


def lanes_of_events(count: int, *, threads: int) -> list[list[Event]]:
    """(b) and (c): the events of each of 64 coroutines, over `threads` threads (one run each)."""
    per_lane = count // COROUTINES
    lanes = []
    for lane in range(COROUTINES):
        thread = lane % threads
        thread_id, run_id = f"put-{thread:02d}", f"run-put-{lane:02d}"
        lanes.append([make_event(thread_id, run_id, lane * per_lane + i) for i in range(per_lane)])
    return lanes


class NaiveWriter:
    """deer-flow's way: per call one transaction, an advisory lock and `max(seq)+1` per thread, INSERT."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        table = f"{NAIVE_SCHEMA}.run_events"
        self._next_seq = f"SELECT coalesce(max(seq), 0) + 1 FROM {table} WHERE thread_id = $1"
        placeholders = ", ".join(f"${i}" for i in range(1, len(COLUMNS) + 1))
        self._insert = f"INSERT INTO {table} ({', '.join(COLUMNS)}) VALUES ({placeholders})"

    async def put_batch(self, events: Sequence[Event]) -> None:
        """Write `events` in one transaction, each thread's seq from `max(seq)+1` under its lock."""
        async with self._pool.acquire() as connection, connection.transaction():
            next_seq = {}
            for thread_id in sorted({event["thread_id"] for event in events}):
                await connection.execute("SELECT pg_advisory_xact_lock(hashtext($1))", thread_id)
                next_seq[thread_id] = await connection.fetchval(self._next_seq, thread_id)
            rows = []
            for event in events:
                rows.append(table_row(event, next_seq[event["thread_id"]]))
                next_seq[event["thread_id"]] += 1
            await connection.executemany(self._insert, rows)

    async def put(self, event: Event) -> None:
        """Write one event in its own transaction."""
        await self.put_batch([event])


class Writers:
    """The four ways of writing one workload: the store, deer-flow's store, the lean naive way, raw COPY."""

    def __init__(self, store: SqlRunEventStore, pool: asyncpg.Pool) -> None:
        self.store = store
        self.naive = NaiveWriter(pool)
        self.deerflow = DeerFlowStore(store.engine)
        self._pool = pool

    def copy_of(self, events: Sequence[Event]) -> Timed:
        """The COPY of the rows of `events` (seq counted per thread), built now so that only COPY is timed."""
        next_seq: dict[str, int] = {}
        rows = []
        for event in events:
            next_seq[event["thread_id"]] = seq = next_seq.get(event["thread_id"], 0) + 1
            rows.append(table_row(event, seq))
        share = -(-len(rows) // COPY_CONNECTIONS)

        async def copy_share(part: Sequence[tuple[Any, ...]]) -> None:
            async with self._pool.acquire() as connection:
                await connection.copy_records_to_table(
                    "run_events", records=part, columns=COLUMNS, schema_name=COPY_SCHEMA
                )

        async def copy() -> None:
            await asyncio.gather(*(copy_share(rows[i : i + share]) for i in range(0, len(rows), share)))

        return copy


async def write_batches(
    put_batch: Callable[[list[Event]], Awaitable[Any]], batches: list[list[Event]]
) -> None:
    """(a): `BATCH_WRITERS` writers taking the next batch in turn until none is left."""
    queue = iter(batches)

    async def writer() -> None:
        for batch in queue:
            await put_batch(batch)

    await asyncio.gather(*(writer() for _ in range(BATCH_WRITERS)))


async def write_lanes(put: Callable[[Event], Awaitable[Any]], lanes: list[list[Event]]) -> None:
    """(b), (c): one coroutine per lane, each writing its events one `put` at a time."""

    async def lane(events: list[Event]) -> None:
        for event in events:
            await put(event)

    await asyncio.gather(*(lane(events) for events in lanes))


async def store_put(store: SqlRunEventStore, event: Event) -> None:
    """One `store.put` of an event given as a dict."""
    await store.put(**event)


@dataclass(frozen=True)
class Measurement:
    """One workload: its name, its events, and how each way writes them."""

    name: str
    label: str
    target: str
    events: list[Event]
    # Each way sets up (outside the clock) and returns what is timed.
    ways: dict[str, Callable[[], Timed]]


def measurements(writers: Writers, workload: Workload) -> list[Measurement]:
    """The three workloads of the issue, each with its three ways."""
    batches = batched_events(workload.batched)
    spread = lanes_of_events(workload.spread, threads=COROUTINES)
    one = lanes_of_events(workload.one_thread, threads=1)
    store, naive, deerflow = writers.store, writers.naive, writers.deerflow

    def flat(groups: list[list[Event]]) -> list[Event]:
        return [event for group in groups for event in group]

    # The COPY baseline gets the lanes' events interleaved, as the coroutines would hand them over.
    def interleaved(lanes: list[list[Event]]) -> list[Event]:
        return [event for group in itertools.zip_longest(*lanes) for event in group if event is not None]

    return [
        Measurement(
            "a",
            f"(a) put_batch({BATCH}) x{BATCH_WRITERS} writers",
            "store/COPY >= 0.40",
            flat(batches),
            {
                "store": lambda: lambda: write_batches(store.put_batch, batches),
                "naive": lambda: lambda: write_batches(naive.put_batch, batches),
                "deerflow": lambda: lambda: write_batches(deerflow.put_batch, batches),
                "copy": lambda: writers.copy_of(flat(batches)),
            },
        ),
        Measurement(
            "b",
            f"(b) put, {COROUTINES} coros x {COROUTINES} threads",
            "store/deer-flow >= 10",
            flat(spread),
            {
                "store": lambda: lambda: write_lanes(lambda e: store_put(store, e), spread),
                "naive": lambda: lambda: write_lanes(naive.put, spread),
                "deerflow": lambda: lambda: write_lanes(deerflow.put, spread),
                "copy": lambda: writers.copy_of(interleaved(spread)),
            },
        ),
        Measurement(
            "c",
            f"(c) put, {COROUTINES} coros x 1 thread",
            "store/deer-flow >= 10",
            flat(one),
            {
                "store": lambda: lambda: write_lanes(lambda e: store_put(store, e), one),
                "naive": lambda: lambda: write_lanes(naive.put, one),
                "deerflow": lambda: lambda: write_lanes(deerflow.put, one),
                "copy": lambda: writers.copy_of(interleaved(one)),
            },
        ),
    ]


TABLES: Final = {
    "store": "run_events",
    "naive": f"{NAIVE_SCHEMA}.run_events",
    "deerflow": f"{deerflow_store.SCHEMA}.run_events",
    "copy": f"{COPY_SCHEMA}.run_events",
}


async def empty_tables(admin: asyncpg.Connection) -> None:
    """Empty every table the benchmark writes, so the next measurement starts from the same state."""
    await admin.execute(f"TRUNCATE {', '.join(TABLES.values())}, thread_counters RESTART IDENTITY")
    # The previous measurement's dirty pages are written now, not during the next one.
    await admin.execute("CHECKPOINT")


async def repetition(
    admin: asyncpg.Connection, plan: list[Measurement], number: int, servers: Servers
) -> dict[str, float]:
    """Every measurement, ways in a rotating order: events/s by 'a store', CPU µs by 'a store cpu writer'."""
    rates: dict[str, float] = {}
    order = WAYS[number % len(WAYS) :] + WAYS[: number % len(WAYS)]
    for measurement in plan:
        for way in order:
            await empty_tables(admin)
            timed = measurement.ways[way]()
            meter = cpu.Meter({"writer": cpu.processes(os.getpid()), **servers.roles()})
            started = time.perf_counter()
            await timed()
            rates[f"{measurement.name} {way}"] = len(measurement.events) / (time.perf_counter() - started)
            for role, us in cpu.per_event_us((meter.seconds(), len(measurement.events))).items():
                rates[f"{measurement.name} {way} cpu {role}"] = us
            stored = await admin.fetchval(f"SELECT count(*) FROM {TABLES[way]}")
            if stored != len(measurement.events):
                raise RuntimeError(
                    f"{measurement.label}, {way}: {stored} rows, not {len(measurement.events)}"
                )
    return rates


def report(runs: list[dict[str, float]], plan: list[Measurement]) -> None:
    """Print each workload's median rates, the store's spread, the ratios and the target."""

    def median(key: str) -> float:
        return statistics.median(run[key] for run in runs)

    def ratio(top: str, bottom: str) -> float:
        return statistics.median(run[top] / run[bottom] for run in runs)

    def spread(key: str) -> str:
        values = [run[key] for run in runs]
        return f"{(max(values) - min(values)) / statistics.median(values):.0%}"

    print(
        f"{'':34}{'store ev/s':>11}{'spread':>7}{'deer-flow':>10}{'naive':>8}{'COPY':>9}"
        f"{'/COPY':>7}{'/deer-flow':>11}{'/naive':>7}{'deer-flow/COPY':>15}   target"
    )
    for m in plan:
        to_copy = ratio(f"{m.name} store", f"{m.name} copy")
        to_deerflow = ratio(f"{m.name} store", f"{m.name} deerflow")
        met = to_copy >= 0.40 if m.name == "a" else to_deerflow >= 10
        print(
            f"{m.label:34}{median(f'{m.name} store'):>11,.0f}{spread(f'{m.name} store'):>7}"
            f"{median(f'{m.name} deerflow'):>10,.0f}{median(f'{m.name} naive'):>8,.0f}"
            f"{median(f'{m.name} copy'):>9,.0f}{to_copy:>7.3f}{to_deerflow:>10.1f}x"
            f"{ratio(f'{m.name} store', f'{m.name} naive'):>6.1f}x"
            f"{ratio(f'{m.name} deerflow', f'{m.name} copy'):>15.4f}"
            f"   {m.target}: {'met' if met else 'MISSED'} ({len(m.events):,} events)"
        )
    report_cpu(runs, plan)


def report_cpu(runs: list[dict[str, float]], plan: list[Measurement]) -> None:
    """Print µs of CPU per event of each workload and way, then the store's (a) as `<role> CPU/event`."""
    print(f"CPU per event, µs, this process / PostgreSQL, user+sys, median of {len(runs)}:")
    print(f"{'':34}" + "".join(f"{way:>16}" for way in ("store", "deer-flow", "naive", "COPY")) + "  1 tick")
    for m in plan:
        cells = [
            " / ".join(
                "-" if (us := median_us(runs, f"{m.name} {way} cpu {role}")) is None else f"{us:.1f}"
                for role in ("writer", "postgresql")
            )
            for way in ("store", "deerflow", "naive", "copy")
        ]
        tick = 1e6 / cpu.TICKS_PER_S / len(m.events)  # /proc counts whole ticks: the figures' step
        print(f"{m.label:34}" + "".join(f"{cell:>16}" for cell in cells) + f"{tick:>8.1f}")
    (batched,) = [m for m in plan if m.name == "a"]
    floor = median_us(runs, "a store cpu postgresql")
    print(
        cpu_line(
            "writer",
            median_us(runs, "a store cpu writer"),
            f"this process in {batched.label} through SqlRunEventStore",
            target=WRITER_CPU_TARGET_US,
            floor=floor,
        )
    )
    print(cpu_line("postgresql", floor, f"every server process in {batched.label} through the store"))


async def run(server: URL, description: str, workload: Workload) -> None:
    """Set up the database and both baselines' tables, run every repetition and print the report."""
    print(
        f"runevents bench sql_put: median of {workload.repetitions} repetitions, {os.cpu_count()} CPUs, "
        f"PostgreSQL: {description}"
    )
    async with scratch_database(server) as url:
        admin = await asyncpg.connect(libpq_dsn(url))
        pool = await asyncpg.create_pool(libpq_dsn(url), min_size=POOL_SIZE, max_size=POOL_SIZE)
        store = SqlRunEventStore(url.render_as_string(hide_password=False), pool_size=POOL_SIZE)
        try:
            await deerflow_store.create_table(store.engine)
            for schema in (NAIVE_SCHEMA, COPY_SCHEMA):
                await admin.execute(f"CREATE SCHEMA {schema}")
                # INCLUDING ALL: the same keys, partial indexes and check, so the baselines pay for them too.
                await admin.execute(f"CREATE TABLE {schema}.run_events (LIKE run_events INCLUDING ALL)")
            for table in [*TABLES.values(), "thread_counters"]:
                # Every table is emptied before every measurement: a vacuum of it would only be noise.
                await admin.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = off)")
            plan = measurements(Writers(store, pool), workload)
            # Warm up connections, prepared statements and caches on a small round of the same workloads.
            servers = await Servers.find(server)
            await repetition(admin, measurements(Writers(store, pool), WARM_UP), 0, servers)
            row_bytes = await sample_row_bytes(admin, plan[0])
            print(
                f"rows: {row_bytes:.0f} bytes on average (pg_column_size); store pool_size={POOL_SIZE}, "
                f"naive pool {POOL_SIZE} connections, COPY on {COPY_CONNECTIONS}"
            )
            print(f"load average before: {load()}")
            with inputs_frozen():
                runs = [await repetition(admin, plan, n, servers) for n in range(workload.repetitions)]
            report(runs, plan)
            print(f"load average after:  {load()}")
        finally:
            await store.close()
            await pool.close()
            await admin.close()
    print(
        "/COPY, /deer-flow, /naive = store events/s over the baseline's in the same repetition (median); "
        "deer-flow/COPY is what the issue measured as 0.084, 0.0063, 0.0034"
    )


async def sample_row_bytes(admin: asyncpg.Connection, measurement: Measurement) -> float:
    """The average stored size of a `run_events` row of `measurement`, written by the COPY baseline."""
    await empty_tables(admin)
    await measurement.ways["copy"]()()
    size = await admin.fetchval(f"SELECT avg(pg_column_size(t.*)) FROM {TABLES['copy']} t")
    await empty_tables(admin)
    return float(size)


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line, start or name the server, and run the benchmark."""
    parser = argparse.ArgumentParser(prog="python -m bench sql_put", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer events and 3 repetitions: a smoke test")
    args = parser.parse_args(argv)
    with postgres_server() as (server, description):
        asyncio.run(run(server, description, QUICK if args.quick else DEFAULT))


if __name__ == "__main__":
    main()
