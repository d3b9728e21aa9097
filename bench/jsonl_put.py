"""Benchmark: the JSONL backend's `put_batch` and `put` against plain appends of the same lines.

The baseline runs in the same process, interleaved with the backend in every repetition: it builds
the same records (seq, UUIDv7 event id, timestamp), serializes them with orjson and appends them to
the same per-run files with `os.write`, without validation, index, locks or a worker thread. The
ratio backend/baseline is what the store's guarantees cost on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from bench.machine import load
from runevents.events import new_event_id, to_json
from runevents.store import JsonlRunEventStore, MemoryRunEventStore, RunEventStore
from runevents.store.jsonl import Durability

BATCH: Final = 20  # deer-flow's RunJournal flushes every 20 events
THREADS: Final = 50
BATCHES_PER_RUN: Final = 5

Event = dict[str, Any]


@dataclass(frozen=True)
class Workload:
    """How many events each measurement writes."""

    batched: int
    single: int
    repetitions: int


DEFAULT: Final = Workload(batched=30_000, single=4_000, repetitions=5)
QUICK: Final = Workload(batched=3_000, single=400, repetitions=5)


def make_events(count: int) -> list[Event]:
    """`count` events shaped like a journal's: one thread and run per 20-event batch, messages and traces."""
    events: list[Event] = []
    for index in range(count):
        batch = index // BATCH
        thread = batch % THREADS
        run = batch // THREADS // BATCHES_PER_RUN
        common = {"thread_id": f"thread-{thread:03d}", "run_id": f"run-{thread:03d}-{run:04d}"}
        if index % 3 == 2:
            trace = {"chain": "lead_agent", "step": index, "detail": "tool latency and token accounting " * 4}
            events.append({**common, "event_type": "subagent.step", "category": "trace", "content": trace})
            continue
        message = {
            "content": f"Answer {index}: storage grew 18% quarter over quarter, mostly from event payloads.",
            "additional_kwargs": {},
            "response_metadata": {"finish_reason": "stop", "model_name": "gpt-4o"},
            "type": "ai",
            "id": f"msg-{index:08d}",
            "tool_calls": [],
        }
        metadata = {"caller": "lead_agent", "latency_ms": 812, "llm_call_index": index % 7}
        event = {
            "event_type": "llm.ai.response",
            "category": "message",
            "content": message,
            "metadata": metadata,
        }
        events.append({**common, **event})
    return events


def batches_of(events: Sequence[Event]) -> list[list[Event]]:
    """The events cut into the 20-event batches a journal flushes."""
    return [list(events[i : i + BATCH]) for i in range(0, len(events), BATCH)]


class PlainAppender:
    """The baseline: the same record lines appended with `os.write`, nothing else."""

    def __init__(self, base: Path, fsync: bool) -> None:
        self._base = base
        self._fsync = fsync
        self._seq: dict[str, int] = {}

    def append(self, events: Sequence[Event]) -> None:
        """Append one batch: one open/write/close per run file, as the backend does."""
        lines: dict[Path, list[bytes]] = {}
        now = datetime.now(UTC).isoformat()
        for event in events:
            thread = event["thread_id"]
            self._seq[thread] = seq = self._seq.get(thread, 0) + 1
            record = {
                "thread_id": thread,
                "run_id": event["run_id"],
                "seq": seq,
                "event_id": new_event_id(),
                "event_type": event["event_type"],
                "category": event["category"],
                "content": event.get("content", ""),
                "metadata": event.get("metadata") or {},
                "created_at": now,
                "user_id": None,
            }
            path = self._base / "threads" / thread / "runs" / f"{event['run_id']}.jsonl"
            lines.setdefault(path, []).append(to_json(record) + b"\n")
        for path, chunk in lines.items():
            if not path.parent.is_dir():
                path.parent.mkdir(parents=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, b"".join(chunk))
                if self._fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)


async def timed(count: int, body: Callable[[], Awaitable[None]]) -> float:
    """Events per second of one run of `body`."""
    started = time.perf_counter()
    await body()
    return count / (time.perf_counter() - started)


async def store_batches(store: RunEventStore, batches: list[list[Event]]) -> None:
    """Write every batch through `put_batch`."""
    for batch in batches:
        await store.put_batch(batch)


async def store_singles(store: RunEventStore, events: list[Event]) -> None:
    """Write every event through `put`."""
    for event in events:
        await store.put(**event)


async def plain_batches(base: Path, fsync: bool, batches: list[list[Event]]) -> None:
    """The baseline of `store_batches`."""
    appender = PlainAppender(base, fsync)
    for batch in batches:
        appender.append(batch)


async def plain_singles(base: Path, fsync: bool, events: list[Event]) -> None:
    """The baseline of `store_singles`."""
    appender = PlainAppender(base, fsync)
    for event in events:
        appender.append([event])


async def repetition(
    batches: list[list[Event]], single: list[Event], fsync: bool, scratch: Path
) -> dict[str, float]:
    """One round of every measurement, each in a fresh directory; events/s by name."""
    batched = [event for batch in batches for event in batch]
    durability: Durability = "fsync" if fsync else "flush"
    rates: dict[str, float] = {}

    async def fresh(name: str, count: int, body: Callable[[Path], Awaitable[None]]) -> None:
        directory = Path(tempfile.mkdtemp(dir=scratch))
        try:
            rates[name] = await timed(count, lambda: body(directory))
        finally:
            shutil.rmtree(directory)

    async def jsonl(directory: Path, write: Callable[[RunEventStore], Awaitable[None]]) -> None:
        async with JsonlRunEventStore(directory, durability=durability) as store:
            await write(store)

    await fresh("jsonl batch", len(batched), lambda d: jsonl(d, lambda s: store_batches(s, batches)))
    await fresh("plain batch", len(batched), lambda d: plain_batches(d, fsync, batches))
    await fresh("jsonl single", len(single), lambda d: jsonl(d, lambda s: store_singles(s, single)))
    await fresh("plain single", len(single), lambda d: plain_singles(d, fsync, single))
    rates["memory batch"] = await timed(len(batched), lambda: store_batches(MemoryRunEventStore(), batches))
    rates["memory single"] = await timed(len(single), lambda: store_singles(MemoryRunEventStore(), single))
    return rates


def report(runs: list[dict[str, float]], workload: Workload) -> None:
    """Print the median of each measurement, its spread, and the ratio to the baseline."""

    def median(name: str) -> float:
        return statistics.median(run[name] for run in runs)

    def spread(name: str) -> str:
        values = [run[name] for run in runs]
        return f"{(max(values) - min(values)) / statistics.median(values):.0%}"

    print(f"{'':24}{'events/s':>12}{'spread':>8}{'baseline ev/s':>15}{'ratio':>8}")
    for label, name, count in (
        ("jsonl put_batch(20)", "batch", workload.batched),
        ("jsonl put", "single", workload.single),
    ):
        ratio = statistics.median(run[f"jsonl {name}"] / run[f"plain {name}"] for run in runs)
        print(
            f"{label:24}{median(f'jsonl {name}'):>12,.0f}{spread(f'jsonl {name}'):>8}"
            f"{median(f'plain {name}'):>15,.0f}{ratio:>8.2f}   ({count:,} events)"
        )
    for label, name in (("memory put_batch(20)", "memory batch"), ("memory put", "memory single")):
        print(f"{label:24}{median(name):>12,.0f}{spread(name):>8}{'-':>15}{'-':>8}")


async def run(workload: Workload, fsync: bool) -> None:
    """Run every repetition and print the report."""
    print(
        f"runevents bench jsonl_put: durability={'fsync' if fsync else 'flush'}, "
        f"median of {workload.repetitions} repetitions, {os.cpu_count()} CPUs"
    )
    print(f"load average before: {load()}")
    with tempfile.TemporaryDirectory(prefix="runevents-bench-") as scratch:
        batches, single = batches_of(make_events(workload.batched)), make_events(workload.single)
        runs = [await repetition(batches, single, fsync, Path(scratch)) for _ in range(workload.repetitions)]
    report(runs, workload)
    print(f"load average after:  {load()}")
    print("ratio = backend events/s / baseline events/s in the same repetition (median); 1.00 = no overhead")


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line and run the benchmark."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds instead of about half a minute")
    parser.add_argument("--fsync", action="store_true", help="durability=fsync (and fsync in the baseline)")
    args = parser.parse_args(argv)
    asyncio.run(run(QUICK if args.quick else DEFAULT, args.fsync))
