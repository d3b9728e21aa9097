"""What the service fault tests share: writers that keep score, a ledger of outcomes, the final checks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runevents.bus.store import BusRunEventStore
from runevents.errors import RunEventsError
from tests.bus.test_projector import assert_gap_free, event, fetch

PARTITIONS = 4
LOGS: dict[int, Path] = {}  # projector process id -> its log file
BARRIER_THREADS = 40  # threads enough that every partition holds one (checked in `projected_everything`)


@dataclass
class Ledger:
    """Every event the writers tried, what the store answered, and every error that was not an answer."""

    attempted: set[str] = field(default_factory=set)  # content ids of every event sent or tried
    acknowledged: set[str] = field(default_factory=set)  # content ids the broker or a put confirmed
    returned: dict[str, dict[str, Any]] = field(default_factory=dict)  # content id -> record put returned
    raised: Counter[str] = field(default_factory=Counter)  # runevents error type -> count
    foreign: list[str] = field(default_factory=list)  # errors that are not runevents errors
    wrong: list[str] = field(default_factory=list)  # answers that were not the writer's own record


def content_id(written: dict[str, Any]) -> str:
    """The unique id a test event carries in its content."""
    return str(written["content"]["id"])


async def put_writer(
    store: BusRunEventStore, ledger: Ledger, name: str, stop: asyncio.Event, *, pause_s: float = 0.01
) -> None:
    """`put` events of thread `name` one after another until `stop`; record every answer in `ledger`."""
    n = 0
    while not stop.is_set():
        await put_once(store, ledger, event(name, n))
        n += 1
        await asyncio.sleep(pause_s)


async def put_once(store: BusRunEventStore, ledger: Ledger, written: dict[str, Any]) -> None:
    """`put` one event and record the answer in `ledger`: its record, a runevents error, or anything else."""
    key = content_id(written)
    ledger.attempted.add(key)
    try:
        record = await store.put(**written)
    except RunEventsError as error:
        ledger.raised[type(error).__name__] += 1
        # ProjectionTimeout and ProjectedRecordMissingError come after the broker's ack.
        if type(error).__name__ in {"ProjectionTimeout", "ProjectedRecordMissingError"}:
            ledger.acknowledged.add(key)
    except Exception as error:  # the point: catch what should not escape
        ours = [f for f in traceback.extract_tb(error.__traceback__) if "/runevents/" in f.filename]
        frames = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(ours))
        ledger.foreign.append(f"{type(error).__module__}.{type(error).__name__}: {error} at {frames}")
    else:
        ledger.acknowledged.add(key)
        ledger.returned[key] = record
        if record["content"] != written["content"] or record["thread_id"] != written["thread_id"]:
            ledger.wrong.append(f"put of {key} returned {record!r}")


async def batch_publisher(
    store: BusRunEventStore, ledger: Ledger, total: int, *, threads: int, batch: int, pause_s: float
) -> None:
    """`publish_batch` `total` events over `threads` threads, `batch` at a time, pausing between."""
    for start in range(0, total, batch):
        events = [event(f"b{n % threads}", n) for n in range(start, min(start + batch, total))]
        ledger.attempted.update(content_id(e) for e in events)
        await store.publish_batch(events)
        ledger.acknowledged.update(content_id(e) for e in events)
        await asyncio.sleep(pause_s)


async def projected_everything(store: BusRunEventStore, ledger: Ledger, *, within_s: float) -> None:
    """Put one event on each of `BARRIER_THREADS` threads and wait: every partition is projected to there."""
    events = [event(f"barrier{n}", n) for n in range(BARRIER_THREADS)]
    ledger.attempted.update(content_id(e) for e in events)
    started = time.monotonic()
    async with asyncio.timeout(within_s):
        records = await store.put_batch(events)
    ledger.acknowledged.update(content_id(e) for e in events)
    assert {r["content"]["id"] for r in records} == {content_id(e) for e in events}
    assert time.monotonic() - started < within_s


async def assert_ledger_holds(url: str, ledger: Ledger) -> None:
    """The read tables hold every acknowledged event once, nothing never tried, and every put's record."""
    assert not ledger.foreign, f"{len(ledger.foreign)} non-runevents errors escaped put: {ledger.foreign[:5]}"
    assert not ledger.wrong, f"{len(ledger.wrong)} puts returned another record: {ledger.wrong[:5]}"
    query = "SELECT thread_id, seq, (content::jsonb)->>'id' AS id, event_id::text FROM run_events"
    rows = await fetch(url, query)
    ids = Counter(row["id"] for row in rows)
    twice = [key for key, count in ids.items() if count > 1]
    assert not twice, f"{len(twice)} events projected more than once, e.g. {twice[:5]}"
    stray = set(ids) - ledger.attempted
    assert not stray, f"{len(stray)} rows no writer wrote, e.g. {sorted(stray)[:5]}"
    lost = ledger.acknowledged - set(ids)
    assert not lost, f"{len(lost)} acknowledged events are not in the read tables, e.g. {sorted(lost)[:5]}"
    by_id = {row["id"]: row for row in rows}
    for key, record in ledger.returned.items():
        row = by_id[key]
        assert (row["thread_id"], row["seq"], row["event_id"]) == (
            record["thread_id"],
            record["seq"],
            str(record["event_id"]),
        ), f"put of {key} returned seq {record['seq']}, the table has {dict(row)}"
    await assert_gap_free(url, len(rows))


def projector_process(kafka: str, url: str, topic: str, log: Path) -> subprocess.Popen[bytes]:
    """`runevents project` in a group with fast joins, writing to `log` (a full pipe would stall it)."""
    command = [sys.executable, "-m", "runevents.cli", "project", "--kafka", kafka, "--database", url]
    command += ["--metrics-port", "0"]  # several on one host: no port of their own
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*command, "--topic", topic, "--session-timeout-ms", "2000"],
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    LOGS[process.pid] = log
    return process


@contextlib.asynccontextmanager
async def projector_processes(
    kafka: str, url: str, topic: str, count: int, logs: Path
) -> AsyncIterator[list[subprocess.Popen[bytes]]]:
    """`count` `runevents project` processes in one group; each must outlive the block, then stop cleanly."""
    logs.mkdir(parents=True, exist_ok=True)
    processes = [projector_process(kafka, url, topic, logs / f"projector{n}.log") for n in range(count)]
    try:
        yield processes
        for process in processes:
            if process.poll() is not None:
                raise AssertionError(f"a projector exited ({process.returncode}):\n{output_of(process)}")
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
                raise AssertionError(f"a projector ignored SIGTERM for 30 s:\n{output_of(process)}") from None


def output_of(process: subprocess.Popen[bytes]) -> str:
    """The last lines a projector process wrote to its log."""
    log = LOGS[process.pid]
    return "\n".join(log.read_text(errors="replace").splitlines()[-30:])


async def wait_until(condition: Callable[[], Any], what: str, *, within_s: float) -> None:
    """Wait until the async `condition()` is true; fail naming `what` otherwise."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {within_s}s")
