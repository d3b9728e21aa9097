"""Benchmark: `retention apply`'s rate while writers run, and the writers' put latency with and without it.

On one PostgreSQL through the sql store: a number of threads, each with old traces (40 days), a
message and a new trace, written first. Then writer coroutines `put` one event at a time into the same
threads, timed twice: alone for a while, then while `runevents retention apply` (a process of its
own, as an operator runs it) expires the old traces (`max_age=30d; message: forever`) in its steps of
1,000 seqs, each taking the thread's counter row the writers' puts take too. Prints the events expired
per second (the command's whole run, start-up included) and the writers' put p50 and p99 in both
phases, with their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy.engine import URL

from bench.machine import inputs_frozen, load
from bench.postgres import postgres_server, scratch_database
from runevents.lifecycle.retention import parse_policy
from runevents.tables.sql import SqlRunEventStore

POLICY: Final = parse_policy("max_age=30d; message: forever")
WRITERS: Final = 8
FILL_BATCH: Final = 500
WARM_UP_S: Final = 2.0


@dataclass(frozen=True)
class Workload:
    """Threads, old traces per thread, how long the writers run alone, and repetitions."""

    threads: int
    old_per_thread: int
    alone_s: float
    repetitions: int


DEFAULT: Final = Workload(threads=1_000, old_per_thread=200, alone_s=10.0, repetitions=3)
QUICK: Final = Workload(threads=200, old_per_thread=100, alone_s=3.0, repetitions=1)


def _event(thread: int, category: str, created_at: str, n: int) -> dict[str, Any]:
    return {
        "thread_id": f"keep-{thread:05d}",
        "run_id": f"run-{n // 100:04d}",
        "event_type": "llm.ai.response" if category == "message" else "middleware.step",
        "category": category,
        "content": {"step": n, "text": "a trace of a middleware step, about a hundred bytes of text here"},
        "metadata": {"caller": "lead_agent"},
        "created_at": created_at,
    }


async def fill(store: SqlRunEventStore, work: Workload) -> int:
    """Write every thread's history; return how many events the policy will expire."""
    old = (datetime.now(UTC) - timedelta(days=40)).isoformat()
    events = []
    for thread in range(work.threads):
        events += [_event(thread, "trace", old, n) for n in range(work.old_per_thread)]
        events.append(_event(thread, "message", old, work.old_per_thread))
        events.append(_event(thread, "trace", datetime.now(UTC).isoformat(), work.old_per_thread + 1))
    with inputs_frozen():
        for start in range(0, len(events), FILL_BATCH):
            await store.put_batch(events[start : start + FILL_BATCH])
    return work.threads * work.old_per_thread


async def writers(store: SqlRunEventStore, work: Workload, until: asyncio.Event) -> list[float]:
    """`WRITERS` coroutines putting one event at a time into the threads until `until`; their latencies."""
    latencies: list[float] = []

    async def writer(number: int) -> None:
        n = 0
        while not until.is_set():
            thread = (number + n * WRITERS) % work.threads
            started = time.perf_counter()
            await store.put(**_event(thread, "message", datetime.now(UTC).isoformat(), 10_000 + n))
            latencies.append(time.perf_counter() - started)
            n += 1

    await asyncio.gather(*(writer(number) for number in range(WRITERS)))
    return latencies


async def retention_process(database: URL) -> tuple[int, float]:
    """`runevents retention apply` on the database, as an operator runs it: (events expired, seconds)."""
    command = [sys.executable, "-m", "runevents.cli", "retention", "apply", "--policy", POLICY.text()]
    command += ["--store", database.render_as_string(hide_password=False)]
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    out, _ = await process.communicate()
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"retention apply exited {process.returncode}: {out.decode()}")
    found = re.search(r"([\d,]+) events expired", out.decode())
    if found is None:
        raise RuntimeError(f"retention apply said no count: {out.decode()}")
    return int(found.group(1).replace(",", "")), seconds


async def writers_for(store: SqlRunEventStore, work: Workload, seconds: float) -> list[float]:
    """The writers' put latencies over `seconds`."""
    done = asyncio.Event()
    task = asyncio.create_task(writers(store, work, done))
    await asyncio.sleep(seconds)
    done.set()
    return await task


def quantile_ms(values: list[float], q: int) -> float:
    """The q-th percentile in ms."""
    return statistics.quantiles(values, n=100)[q - 1] * 1000


async def repetition(url: URL, work: Workload) -> dict[str, float]:
    """One round on a fresh database: fill, writers alone, writers with retention."""
    async with scratch_database(url) as database:
        store = SqlRunEventStore(database.render_as_string(hide_password=False))
        try:
            due = await fill(store, work)
            # Warm up (connections, plans, the pages the fill left dirty), then time the writers alone.
            warm = asyncio.Event()
            warming = asyncio.create_task(writers(store, work, warm))
            await asyncio.sleep(WARM_UP_S)
            warm.set()
            await warming
            # Alone half before and half after: the tables change under the writers as they write.
            alone = await writers_for(store, work, work.alone_s / 2)
            with_done = asyncio.Event()
            with_task = asyncio.create_task(writers(store, work, with_done))
            expired, seconds = await retention_process(database)
            with_done.set()
            together = await with_task
            alone += await writers_for(store, work, work.alone_s / 2)
        finally:
            await store.close()
    assert expired == due, f"expired {expired}, expected {due}"
    return {
        "rate": expired / seconds,
        "seconds": seconds,
        "alone p50": quantile_ms(alone, 50),
        "alone p99": quantile_ms(alone, 99),
        "with p50": quantile_ms(together, 50),
        "with p99": quantile_ms(together, 99),
        "puts with": len(together) / seconds,
        "puts alone": len(alone) / work.alone_s,
    }


async def run(server: URL, description: str, work: Workload) -> None:
    """Run every repetition and print the report."""
    print(
        f"runevents bench retention: median of {work.repetitions}, {os.cpu_count()} CPUs, "
        f"PostgreSQL: {description}"
    )
    print(
        f"{work.threads:,} threads of {work.old_per_thread} old traces, an old message and a new trace; "
        f"{WRITERS} writers putting into them; policy {POLICY.text()}"
    )
    print(f"load average before: {load()}")
    runs = [await repetition(server, work) for _ in range(work.repetitions)]
    print(f"load average after:  {load()}")

    def median(key: str) -> float:
        return statistics.median(run[key] for run in runs)

    print(
        f"retention apply: {work.threads * work.old_per_thread:,} events expired at "
        f"{median('rate'):,.0f} events/s ({median('seconds'):.1f} s) while the writers ran"
    )
    print(
        f"writers' put alone: p50 {median('alone p50'):.2f} ms, p99 {median('alone p99'):.2f} ms "
        f"({median('puts alone'):,.0f} puts/s)"
    )
    print(
        f"writers' put with retention: p50 {median('with p50'):.2f} ms, p99 {median('with p99'):.2f} ms "
        f"({median('puts with'):,.0f} puts/s); p99 with/alone {median('with p99') / median('alone p99'):.2f}x"
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line, start or name the server, and run the benchmark."""
    parser = argparse.ArgumentParser(prog="python -m bench retention", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 threads of 100 old traces, one repetition")
    args = parser.parse_args(argv)
    with postgres_server() as (server, description):
        asyncio.run(run(server, description, QUICK if args.quick else DEFAULT))


if __name__ == "__main__":
    main()
