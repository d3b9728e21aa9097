"""Benchmark: `runevents replay` and `backfill` against the live projection, and a raw COPY.

In one run on one PostgreSQL and one broker: a topic is filled with events; the live projection
(two `runevents project` processes in one group) drains it, timed until every event is committed;
then `replay` rebuilds the same tables into a new projection and schema (one projector over every
partition, in this process), timed until it has caught up; then the same events, written as a
deer-flow JSONL directory, are backfilled onto a fresh topic while two projectors apply them: the
backfill's own rate (read, checked against the read tables, published) and the rate until every
event is in the read tables; then a raw asyncpg COPY of as many rows. Each rate is printed with its
ratio to the COPY, and replay's and backfill's to the live drain; beside them, the CPU per event of
each role (`bench.cpu`): this process filling the topic, the projectors, PostgreSQL and the broker in
the live drain, and this process replaying and backfilling.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import asyncpg
import orjson
from sqlalchemy.engine import URL

from bench import cpu
from bench.bus_e2e import (
    PARTITIONS,
    broker,
    copy_rate,
    cpu_lines,
    drain,
    empty,
    events,
    projectors,
    until_rows,
    with_copy_table,
)
from bench.machine import load
from bench.postgres import postgres_server
from bench.roles import Servers, cpu_line, median_us
from runevents.bus.topic import create_topic
from runevents.ops.backfill import backfill
from runevents.ops.backfill_sources import JsonlSource
from runevents.ops.replay import replay
from runevents.tables.writes import libpq_dsn


@dataclass(frozen=True)
class Workload:
    """Events on the topic and repetitions."""

    events: int
    repetitions: int


DEFAULT: Final = Workload(events=200_000, repetitions=3)
QUICK: Final = Workload(events=20_000, repetitions=1)


async def repetition(
    kafka: str, url: URL, admin: asyncpg.Connection, work: Workload, servers: Servers
) -> dict[str, float]:
    """One round: fill a topic, drain it live, replay it, COPY as many rows; events/s (and µs) by name."""
    topic = f"bench-{uuid.uuid4().hex[:10]}"
    await create_topic(kafka, topic, partitions=PARTITIONS)
    await empty(admin)
    live = await drain(kafka, url, admin, topic, work.events, servers)
    rates = {"live": live.rate} | {f"{role} cpu": us for role, us in live.cpu_us.items()}
    projection = f"replayed_{uuid.uuid4().hex[:8]}"
    # The replay's projector runs in this process, which does nothing else meanwhile.
    replaying = cpu.Meter({"replay": cpu.processes(os.getpid()), **servers.roles()})
    replayed = await replay(kafka, libpq_dsn(url), projection=projection, topic=topic)
    used = replaying.seconds()
    assert replayed.caught_up
    rates["replay"] = replayed.rate
    for role, us in cpu.per_event_us((used, replayed.records)).items():
        rates["replay cpu" if role == "replay" else f"{role} cpu in replay"] = us
    await admin.execute(f"DROP SCHEMA {projection} CASCADE")
    rates.update(await backfill_rates(kafka, url, admin, work))
    rates["copy"] = await copy_rate(admin, work.events)
    return rates


def write_deerflow_jsonl(base: Path, batch: Sequence[dict[str, Any]]) -> None:
    """`batch` as deer-flow's JSONL store holds it: a file per run, seq per thread, no event ids."""
    seqs: Counter[str] = Counter()
    files: dict[Path, list[bytes]] = defaultdict(list)
    for event in batch:
        thread = event["thread_id"]
        seqs[thread] += 1
        record = {**event, "seq": seqs[thread], "created_at": "2026-01-01T00:00:00+00:00"}
        files[base / "threads" / thread / "runs" / f"{event['run_id']}.jsonl"].append(orjson.dumps(record))
    for path, lines in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\n".join(lines) + b"\n")


async def backfill_rates(kafka: str, url: URL, admin: asyncpg.Connection, work: Workload) -> dict[str, float]:
    """Backfill the events from a JSONL directory onto a fresh topic while 2 projectors apply them."""
    topic = f"bench-{uuid.uuid4().hex[:10]}"
    await create_topic(kafka, topic, partitions=PARTITIONS)
    await empty(admin)
    with tempfile.TemporaryDirectory() as directory:
        write_deerflow_jsonl(Path(directory), events(work.events, "backfill"))
        source = JsonlSource(Path(directory))
        started = time.perf_counter()
        with projectors(kafka, url, topic):
            # The projectors are processes of their own: this process's CPU is the backfill's.
            backfilling = cpu.Meter({"backfill": cpu.processes(os.getpid())})
            done = await backfill(source, kafka, libpq_dsn(url), topic=topic)
            used = backfilling.seconds()
            assert done.imported == work.events, done
            await until_rows(admin, work.events)
            projected = time.perf_counter() - started
    rates = {"backfill": done.rate, "backfill_projected": work.events / projected}
    return rates | {f"{role} cpu": us for role, us in cpu.per_event_us((used, done.imported)).items()}


async def run(kafka: str, kafka_description: str, server: URL, description: str, work: Workload) -> None:
    """Set up, run every repetition and print the report."""
    print(f"runevents bench replay: median of {work.repetitions}, {os.cpu_count()} CPUs")
    print(f"PostgreSQL: {description}; Kafka: {kafka_description}")
    print(f"a topic of {PARTITIONS} partitions holding {work.events:,} events")
    servers = await Servers.find(server, kafka)
    async with with_copy_table(server) as (url, admin):
        print(f"load average before: {load()}")
        runs = [await repetition(kafka, url, admin, work, servers) for _ in range(work.repetitions)]
        print(f"load average after:  {load()}")
    print(f"{'':58}{'ev/s':>10}{'of COPY':>9}")
    labels = {
        "live": "live projection: 2 projector processes drain the topic",
        "replay": "replay: 1 projector rebuilds it into a new projection",
        "backfill": "backfill from JSONL: read, checked, published",
        "backfill_projected": "backfill from JSONL until projected (2 projectors)",
        "copy": "raw COPY of as many rows",
    }
    for name, label in labels.items():
        rate = statistics.median(run[name] for run in runs)
        ratio = statistics.median(run[name] / run["copy"] for run in runs)
        print(f"{label:58}{rate:>10,.0f}{ratio:>9.3f}")
    for name in ("replay", "backfill", "backfill_projected"):
        share = statistics.median(run[name] / run["live"] for run in runs)
        print(f"{name} / live drain: {share:.2f}")
    print(f"CPU per event, user+sys, median of {len(runs)}:")
    for line in [*cpu_lines(runs, "the live drain"), *rebuild_cpu_lines(runs)]:
        print(line)


def rebuild_cpu_lines(runs: Sequence[Mapping[str, float]]) -> list[str]:
    """The replay's and the backfill's `<role> CPU/event` lines: this process's CPU in each."""
    floor = median_us(runs, "postgresql cpu")
    beside = [
        f"{role} {us:.1f} µs"
        for role in ("postgresql", "broker")
        if (us := median_us(runs, f"{role} cpu in replay")) is not None
    ]
    replaying = "this process replaying: one projector over every partition"
    return [
        cpu_line(
            "replay",
            median_us(runs, "replay cpu"),
            f"{replaying}; beside it {', '.join(beside)}" if beside else replaying,
            floor=floor,
        ),
        cpu_line(
            "backfill",
            median_us(runs, "backfill cpu"),
            "this process backfilling: JSONL read, checked against the read tables, published",
            floor=floor,
        ),
    ]


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line, start or name the servers, and run the benchmark."""
    parser = argparse.ArgumentParser(prog="python -m bench replay", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer events, one repetition: a smoke test")
    args = parser.parse_args(argv)
    with broker() as (kafka, kafka_description), postgres_server() as (server, description):
        asyncio.run(run(kafka, kafka_description, server, description, QUICK if args.quick else DEFAULT))
