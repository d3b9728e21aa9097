"""Benchmark: the sql backend's message reads on a shallow and a deep thread, against a naive count.

One database holds a thread of 1,000 events and one of 1,000,000 (100,000 with --quick), half of
them messages, written with COPY and given their `thread_counters` rows. `list_messages(limit=50)`
(the latest page and random `before_seq` pages) and `count_messages` are timed call by call,
alternating between the two threads, so load on the machine hits both alike. The baseline is the
naive `count(*)` of a thread's messages, through the same engine.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
from sqlalchemy import func, select
from sqlalchemy.engine import URL

from bench.events import COLUMNS, make_event, table_row
from bench.machine import load
from bench.postgres import postgres_server, scratch_database
from runevents.events import MESSAGE_CATEGORY
from runevents.tables.schema import run_events
from runevents.tables.sql import SqlRunEventStore
from runevents.tables.writes import libpq_dsn

PAGE: Final = 50
SHALLOW_DEPTH: Final = 1_000
EVENTS_PER_RUN: Final = 100
FILL_CONNECTIONS: Final = 2
FLAT: Final = 1.5  # the bound on deep/shallow latency
SHALLOW: Final = "shallow"
DEEP: Final = "deep"


@dataclass(frozen=True)
class Workload:
    """How deep the deep thread is and how many calls are timed at each depth."""

    deep_depth: int
    list_calls: int
    count_calls: int


DEFAULT: Final = Workload(deep_depth=1_000_000, list_calls=300, count_calls=100)
QUICK: Final = Workload(deep_depth=100_000, list_calls=300, count_calls=100)


def thread_rows(thread_id: str, first: int, last: int) -> Iterator[tuple[Any, ...]]:
    """The rows of seq `first`..`last` of a thread, as the store writes them, one run per 100 events."""
    for seq in range(first, last + 1):
        run_id = f"run-{(seq - 1) // EVENTS_PER_RUN:06d}"
        yield table_row(make_event(thread_id, run_id, seq - 1), seq)


async def fill_thread(pool: asyncpg.Pool, thread_id: str, depth: int) -> int:
    """Write a thread of `depth` events with COPY and set its counter row; return its message count."""
    share = -(-depth // FILL_CONNECTIONS)

    async def copy(first: int) -> None:
        async with pool.acquire() as connection:
            rows = thread_rows(thread_id, first, min(first + share - 1, depth))
            await connection.copy_records_to_table("run_events", records=rows, columns=COLUMNS)

    await asyncio.gather(*(copy(first) for first in range(1, depth + 1, share)))
    async with pool.acquire() as connection:
        messages: int = await connection.fetchval(
            "SELECT count(*) FROM run_events WHERE thread_id = $1 AND category = $2",
            thread_id,
            MESSAGE_CATEGORY,
        )
        await connection.execute(
            "INSERT INTO thread_counters (thread_id, last_seq, event_count, message_count)"
            " VALUES ($1, $2, $2, $3)",
            thread_id,
            depth,
            messages,
        )
    return messages


async def timed_calls(calls: Sequence[tuple[str, Callable[[], Awaitable[Any]]]]) -> dict[str, list[float]]:
    """Run the calls one after another; each call's latency in milliseconds, by its label."""
    latencies: dict[str, list[float]] = {}
    for label, call in calls:
        started = time.perf_counter()
        await call()
        latencies.setdefault(label, []).append((time.perf_counter() - started) * 1000)
    return latencies


def percentile(values: list[float], percent: int) -> float:
    """The `percent`-th percentile of `values`."""
    return statistics.quantiles(values, n=100, method="inclusive")[percent - 1]


def list_calls(
    store: SqlRunEventStore, depths: dict[str, int], count: int, rng: random.Random
) -> list[tuple[str, Callable[[], Awaitable[Any]]]]:
    """`count` list_messages calls per thread, alternating threads: every other one the latest page."""

    async def page(thread_id: str, before_seq: int | None) -> None:
        records = await store.list_messages(thread_id, limit=PAGE, before_seq=before_seq)
        if len(records) != PAGE:
            raise RuntimeError(
                f"list_messages({thread_id}, before_seq={before_seq}) gave {len(records)} records"
            )

    calls: list[tuple[str, Callable[[], Awaitable[Any]]]] = []
    for number in range(count):
        threads = list(depths) if number % 2 else list(reversed(depths))
        for thread_id in threads:
            # 2 * PAGE + 1: at least a full page of messages (every other event is one) lies below.
            before = None if number % 2 == 0 else rng.randint(2 * PAGE + 1, depths[thread_id])
            calls.append((thread_id, functools.partial(page, thread_id, before)))
    return calls


def count_calls(
    store: SqlRunEventStore, messages: dict[str, int], count: int
) -> list[tuple[str, Callable[[], Awaitable[Any]]]]:
    """`count` calls per thread of `count_messages` and of the naive count, interleaved."""

    async def counter(thread_id: str) -> None:
        if await store.count_messages(thread_id) != messages[thread_id]:
            raise RuntimeError(f"count_messages({thread_id}) is wrong")

    naive = select(func.count()).select_from(run_events)

    async def naive_count(thread_id: str) -> None:
        statement = naive.where(
            run_events.c.thread_id == thread_id, run_events.c.category == MESSAGE_CATEGORY
        )
        async with store.engine.connect() as connection:
            if (await connection.execute(statement)).scalar() != messages[thread_id]:
                raise RuntimeError(f"count(*) of {thread_id} is wrong")

    calls: list[tuple[str, Callable[[], Awaitable[Any]]]] = []
    for number in range(count):
        threads = list(messages) if number % 2 else list(reversed(messages))
        for thread_id in threads:
            calls.append((f"count {thread_id}", functools.partial(counter, thread_id)))
            calls.append((f"naive {thread_id}", functools.partial(naive_count, thread_id)))
    return calls


def report(lists: dict[str, list[float]], counts: dict[str, list[float]], depths: dict[str, int]) -> None:
    """Print p50/p99 at each depth, the ratio deep/shallow and the target."""
    shallow, deep = depths[SHALLOW], depths[DEEP]
    print(f"{'':34}{f'{shallow:,} events':>16}{f'{deep:,} events':>18}{'deep/shallow':>14}   target")
    rows = [
        (f"list_messages({PAGE}) p50 ms", lists[SHALLOW], lists[DEEP], 50, f"<= {FLAT}"),
        (f"list_messages({PAGE}) p99 ms", lists[SHALLOW], lists[DEEP], 99, f"<= {FLAT}"),
        ("count_messages p50 ms", counts[f"count {SHALLOW}"], counts[f"count {DEEP}"], 50, "flat"),
        ("naive count(*) p50 ms", counts[f"naive {SHALLOW}"], counts[f"naive {DEEP}"], 50, "(contrast)"),
    ]
    for label, low, high, percent, target in rows:
        at_low, at_high = percentile(low, percent), percentile(high, percent)
        ratio = at_high / at_low
        # "Flat" is held to the same bound as the page: within 1.5x of the shallow thread's time.
        verdict = "" if target == "(contrast)" else f": {'met' if ratio <= FLAT else 'MISSED'}"
        print(f"{label:34}{at_low:>16.2f}{at_high:>18.2f}{ratio:>14.2f}   {target}{verdict}")


async def run(server: URL, description: str, workload: Workload) -> None:
    """Fill both threads, warm up, time the calls and print the report."""
    depths = {SHALLOW: SHALLOW_DEPTH, DEEP: workload.deep_depth}
    print(f"runevents bench sql_read: {os.cpu_count()} CPUs, PostgreSQL: {description}")
    async with scratch_database(server) as url:
        pool = await asyncpg.create_pool(libpq_dsn(url), min_size=FILL_CONNECTIONS, max_size=FILL_CONNECTIONS)
        try:
            started = time.perf_counter()
            messages = {
                thread_id: await fill_thread(pool, thread_id, depth) for thread_id, depth in depths.items()
            }
            async with pool.acquire() as connection:
                await connection.execute(
                    "VACUUM (ANALYZE) run_events"
                )  # what autovacuum would do after a load
            elapsed = time.perf_counter() - started
            print(
                f"threads of {SHALLOW_DEPTH:,} and {workload.deep_depth:,} events ({messages[DEEP]:,} "
                f"messages in the deep one) written by COPY and vacuumed in {elapsed:.0f} s"
            )
        finally:
            await pool.close()
        async with SqlRunEventStore(url.render_as_string(hide_password=False)) as store:
            rng = random.Random(4)
            await timed_calls(list_calls(store, depths, 20, rng) + count_calls(store, messages, 5))  # warm-up
            print(f"load average before: {load()}")
            lists = await timed_calls(list_calls(store, depths, workload.list_calls, rng))
            counts = await timed_calls(count_calls(store, messages, workload.count_calls))
            report(lists, counts, depths)
            print(f"load average after:  {load()}")
    print(
        f"{workload.list_calls} list_messages calls per depth (half the latest page, half a random "
        f"before_seq), {workload.count_calls} of each count; latencies include the client "
        "(SQLAlchemy, asyncpg)"
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line, start or name the server, and run the benchmark."""
    parser = argparse.ArgumentParser(prog="python -m bench sql_read", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a deep thread of 100,000 events, not 1,000,000")
    args = parser.parse_args(argv)
    with postgres_server() as (server, description):
        asyncio.run(run(server, description, QUICK if args.quick else DEFAULT))


if __name__ == "__main__":
    main()
