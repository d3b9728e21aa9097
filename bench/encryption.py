"""Benchmark: what sealing the bus's records costs (issue 21), the drain and the put, in the clear and sealed.

In one run on one PostgreSQL and one broker, each repetition drains a pre-filled topic with the two
`runevents project` processes of `bench bus_e2e`, once with clear records and once with sealed ones (the
order alternates between repetitions), and runs 64 concurrent writers' `put` (read-your-writes) against
a running projection, in the clear and sealed. It prints the rates, the sealed/clear ratios (the target:
a drain at most 15% dearer) and the CPU per event of the publisher and the projectors either way.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import asyncpg
from sqlalchemy.engine import URL

from bench.bus_e2e import PARTITIONS, broker, drain, empty, projectors, until_rows, with_copy_table
from bench.events import make_event
from bench.machine import load
from bench.postgres import postgres_server
from bench.roles import Servers
from runevents.bus.store import BusRunEventStore
from runevents.bus.topic import create_topic
from runevents.crypto.keyring import new_key, parse_keyring
from runevents.tables.writes import libpq_dsn

COROUTINES: Final = 64
DRAIN_TARGET: Final = 1.15  # sealed drain's cost / clear drain's, at most


@dataclass(frozen=True)
class Workload:
    """Events drained, puts made, repetitions."""

    drained: int
    puts: int
    repetitions: int


DEFAULT: Final = Workload(drained=200_000, puts=6_400, repetitions=3)
QUICK: Final = Workload(drained=20_000, puts=640, repetitions=1)


async def fresh_topic(kafka: str, admin: asyncpg.Connection) -> str:
    """A new topic, the read tables emptied."""
    topic = f"bench-{uuid.uuid4().hex[:10]}"
    await create_topic(kafka, topic, partitions=PARTITIONS)
    await empty(admin)
    await admin.execute("TRUNCATE thread_keys")  # each sealed round makes its threads' keys
    return topic


async def puts(kafka: str, url: URL, admin: asyncpg.Connection, count: int, kek: str | None) -> float:
    """Puts/s of `COROUTINES` concurrent writers (read-your-writes), projectors running."""
    topic = await fresh_topic(kafka, admin)
    keyring = None if kek is None else parse_keyring(kek, source="the benchmark's KEK")
    store = BusRunEventStore(kafka, libpq_dsn(url), topic=topic, keyring=keyring)
    try:
        with projectors(kafka, url, topic, kek=kek):
            await store.put(**make_event("warm-up", "run-warm", 0))
            per_lane = count // COROUTINES

            async def lane(number: int) -> None:
                for n in range(per_lane):
                    await store.put(**make_event(f"put-{number:02d}", f"run-{number:02d}", n))

            started = time.perf_counter()
            await asyncio.gather(*(lane(number) for number in range(COROUTINES)))
            rate = per_lane * COROUTINES / (time.perf_counter() - started)
            await until_rows(admin, per_lane * COROUTINES + 1)
    finally:
        await store.close()
    return rate


async def repetition(
    kafka: str,
    url: URL,
    admin: asyncpg.Connection,
    work: Workload,
    servers: Servers,
    *,
    kek: str,
    sealed_first: bool,
) -> dict[str, float]:
    """One round: a clear and a sealed drain, clear and sealed puts; rates and µs/event by name."""
    measured: dict[str, float] = {}
    for how in ("sealed", "clear") if sealed_first else ("clear", "sealed"):
        key = kek if how == "sealed" else None
        done = await drain(kafka, url, admin, await fresh_topic(kafka, admin), work.drained, servers, kek=key)
        measured[f"{how} drain"] = done.rate
        measured.update({f"{how} {role} cpu": us for role, us in done.cpu_us.items()})
        measured[f"{how} put"] = await puts(kafka, url, admin, work.puts, key)
    return measured


async def run(kafka: str, kafka_description: str, server: URL, description: str, work: Workload) -> None:
    """Set up, run every repetition and print the report."""
    print(f"runevents bench encryption: median of {work.repetitions}, {os.cpu_count()} CPUs")
    print(f"PostgreSQL: {description}; Kafka: {kafka_description}")
    print(
        f"drain: {work.drained:,} events on {PARTITIONS} partitions; "
        f"put: {work.puts:,} by {COROUTINES} writers"
    )
    servers = await Servers.find(server, kafka)
    kek = base64.b64encode(new_key()).decode()
    async with with_copy_table(server) as (url, admin):
        print(f"load average before: {load()}")
        runs = [
            await repetition(kafka, url, admin, work, servers, kek=kek, sealed_first=number % 2 == 1)
            for number in range(work.repetitions)
        ]
        print(f"load average after:  {load()}")
    report(runs)


def report(runs: Sequence[dict[str, float]]) -> None:
    """Print the rates, their ratios and the CPU per event, clear and sealed."""
    print(f"{'':44}{'clear':>12}{'sealed':>12}{'sealed/clear':>14}")
    for name, unit in (("drain", "events/s"), ("put", "puts/s")):
        clear = statistics.median(run[f"clear {name}"] for run in runs)
        sealed = statistics.median(run[f"sealed {name}"] for run in runs)
        ratio = statistics.median(run[f"sealed {name}"] / run[f"clear {name}"] for run in runs)
        print(f"{name + ' (' + unit + ')':44}{clear:>12,.0f}{sealed:>12,.0f}{ratio:>14.3f}")
    for role in ("publisher", "projector", "postgresql", "broker"):
        if all(f"clear {role} cpu" in run and f"sealed {role} cpu" in run for run in runs):
            clear = statistics.median(run[f"clear {role} cpu"] for run in runs)
            sealed = statistics.median(run[f"sealed {role} cpu"] for run in runs)
            print(f"{role + ' CPU/event (µs)':44}{clear:>12.1f}{sealed:>12.1f}{sealed / clear:>14.3f}")
    cost = statistics.median(run["clear drain"] / run["sealed drain"] for run in runs)
    verdict = "met" if cost <= DRAIN_TARGET else "MISSED"
    print(f"drain cost sealed / clear (time per event): {cost:.3f} (target <= {DRAIN_TARGET}: {verdict})")


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line, start or name the servers, and run the benchmark."""
    parser = argparse.ArgumentParser(prog="python -m bench encryption", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer events, one repetition: a smoke test")
    args = parser.parse_args(argv)
    with broker() as (kafka, kafka_description), postgres_server() as (server, description):
        asyncio.run(run(kafka, kafka_description, server, description, QUICK if args.quick else DEFAULT))
