"""What the broker-crash tests share: writer processes that keep ledgers, what the ledgers say, the
faults' pacing, and the checks afterwards (each acknowledged event once, threads gap-free, a replay
giving the same tables)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from runevents.bus.topic import log_offsets
from runevents.devstack.broker import LocalBroker
from tests.faults.exactly_once import Acknowledged, checksums, connect
from tests.faults.projectors import ASSIGNED, ProjectorFleet
from tests.faults.test_projector_faults import replay_into_new_schema

# Tansu on S3 lists a partition's stored batches on every fetch that finds records: projectors on the
# durable broker fetch less often than the default (20 ms) so the S3 server keeps up (bench/README.md).
DURABLE_FETCH_OPTIONS = ("--fetch-max-wait-ms", "500")


def quiet(output: str) -> str:
    """A process's output without aiokafka's lines (one per retry while the broker is down)."""
    return "\n".join(line for line in output.splitlines() if "aiokafka" not in line)[-3000:]


def broker_tail(broker: LocalBroker) -> str:
    """The last lines of the broker's log."""
    return "\n".join(broker.log_file.read_text(errors="replace").splitlines()[-30:])


def writer(
    kafka: str, url: str, topic: str, name: str, events: int, ledger: Path, seed: int, *options: str
) -> subprocess.Popen[bytes]:
    """One `crash_writer` process, its output in a file beside its ledger (`output_of`)."""
    command = [sys.executable, "-m", "tests.faults.crash_writer", kafka, url, topic, name, str(events)]
    # A file, not a pipe: while the broker is down aiokafka logs a line per retry, and a pipe nobody
    # reads until the end fills up and blocks the writer for good.
    with ledger.with_suffix(".log").open("ab") as output:
        return subprocess.Popen(
            [*command, str(ledger), str(seed), *options], stdout=output, stderr=subprocess.STDOUT
        )


def output_of(ledger: Path) -> str:
    """The last of what the writer keeping `ledger` printed."""
    path = ledger.with_suffix(".log")
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


class Ledgers:
    """What the writers' ledgers say (whole lines: a SIGKILL may cut the last one)."""

    def __init__(self, paths: list[Path]) -> None:
        self.required: dict[str, int | None] = {}  # content id -> the seq a put returned (None: no seq)
        self.maybe: set[str] = set()  # content ids that may be there (at most once)
        self.begun: dict[str, list[str]] = {}  # batch -> its content ids, for each call begun
        self.returned_batches: set[str] = set()
        self.errors: Counter[str] = Counter()
        self.durable_flags: Counter[str] = Counter()
        for path in paths:
            for line in path.read_bytes().splitlines(keepends=True):
                if line.endswith(b"\n"):
                    self._read(orjson.loads(line))

    def _read(self, entry: dict[str, Any]) -> None:
        if "error" in entry:
            self.errors[entry["error"]] += 1
            if entry["error"] == "BrokerUnavailableError":
                self.durable_flags[str(entry["maybe_durable"])] += 1
            return
        if entry["outcome"] == "begun":
            self.begun[entry["batch"]] = entry["ids"]
            return
        if "batch" in entry:
            self.returned_batches.add(entry["batch"])
        if entry["outcome"] == "unknown":
            self.maybe.update(entry["ids"])
            return
        seqs = entry.get("seqs", {})
        for content_id in entry["ids"]:
            self.required[content_id] = seqs.get(content_id)


def events_done(ledgers: list[Path]) -> int:
    """How many events the writers' calls have ended for so far."""
    done = 0
    for path in ledgers:
        if path.exists():
            for line in path.read_bytes().splitlines(keepends=True):
                if b'"outcome"' in line and b'"begun"' not in line and line.endswith(b"\n"):
                    done += len(orjson.loads(line)["ids"])
    return done


async def at_progress(ledgers: list[Path], due: float, writers: list[subprocess.Popen[bytes]]) -> bool:
    """Wait until the writers have ended calls for `due` events; False if they all exit first."""
    while events_done(ledgers) < due:
        if all(w.poll() is not None for w in writers):
            return False
        await asyncio.sleep(0.2)
    return True


async def until_projecting(fleet: ProjectorFleet, within_s: float = 60) -> None:
    """Wait until every projector of `fleet` has its partitions (a projector still starting exits on a
    broker that does not answer, as a misconfigured one should: its supervisor starts it again)."""
    deadline = time.monotonic() + within_s
    while not all(ASSIGNED in projector.output() for projector in fleet.live):
        fleet.check_alive()
        assert time.monotonic() < deadline, "\n".join(fleet.outputs())
        await asyncio.sleep(0.2)


async def where_things_stand(kafka: str, url: str, topic: str) -> str:
    """The log's end offsets beside the projection's stored ones, per partition."""
    ends = await log_offsets(kafka, topic, "end")
    connection = await connect(url)
    try:
        stored = dict(await connection.fetch("SELECT partition, next_offset FROM projection_offsets"))
    finally:
        await connection.close()
    return "partition: log end / projected " + ", ".join(
        f"{partition}: {end} / {stored.get(partition)}" for partition, end in sorted(ends.items())
    )


async def finish_writers(
    writers: list[subprocess.Popen[bytes]],
    ledgers: list[Path],
    within_s: float,
    explain: Callable[[], Awaitable[str]],
) -> None:
    """Wait for every writer to exit 0; on a timeout, fail with what `explain` says."""
    deadline = time.monotonic() + within_s
    for process, ledger in zip(writers, ledgers, strict=True):
        try:
            await asyncio.to_thread(process.wait, timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            raise AssertionError(f"a writer did not finish within {within_s} s; {await explain()}") from None
        assert process.returncode == 0, f"a writer failed:\n{quiet(output_of(ledger))}"


async def stored_content(url: str, schema: str = "public") -> dict[str, list[int]]:
    """content id -> the seqs it is stored at (more than one would be a duplicate)."""
    connection = await connect(url)
    try:
        rows = await connection.fetch(f"SELECT (content::jsonb)->>'id', seq FROM {schema}.run_events")
    finally:
        await connection.close()
    found: dict[str, list[int]] = {}
    for content_id, seq in rows:
        found.setdefault(content_id, []).append(seq)
    return found


async def assert_acknowledged_once(url: str, told: Ledgers) -> dict[str, list[int]]:
    """Every event a call returned or the broker acknowledged is stored once (at the seq a put
    returned), nothing is stored twice or unexplained, and every thread runs 1..n; what is stored."""
    stored = await stored_content(url)
    twice = {content_id: seqs for content_id, seqs in stored.items() if len(seqs) > 1}
    assert not twice, f"{len(twice)} events stored more than once, e.g. {list(twice.items())[:3]}"
    missing = [content_id for content_id in told.required if content_id not in stored]
    assert not missing, f"{len(missing)} acknowledged events are not in the read tables, e.g. {missing[:3]}"
    unexplained = set(stored) - set(told.required) - told.maybe
    assert not unexplained, f"{len(unexplained)} stored events no writer sent, e.g. {sorted(unexplained)[:3]}"
    wrong = {
        c: (seq, stored[c][0]) for c, seq in told.required.items() if seq is not None and stored[c][0] != seq
    }
    assert not wrong, f"{len(wrong)} puts returned a seq other than the stored one: {list(wrong.items())[:3]}"
    await assert_threads_gap_free(url)
    return stored


async def assert_threads_gap_free(url: str) -> None:
    """Every thread's seqs run 1..n, and its counters equal its rows."""
    connection = await connect(url)
    try:
        rows = await connection.fetch(
            "SELECT thread_id, array_agg(seq ORDER BY seq) FROM run_events GROUP BY 1"
        )
        counters = await connection.fetch("SELECT thread_id, last_seq, event_count FROM thread_counters")
    finally:
        await connection.close()
    for thread, seqs in rows:
        assert list(seqs) == list(range(1, len(seqs) + 1)), f"thread {thread} has seqs {list(seqs)[:20]}..."
    assert {c[0]: (c[1], c[2]) for c in counters} == {t: (len(s), len(s)) for t, s in rows}


async def assert_replay_checksum_equal(kafka: str, url: str, topic: str, rows: int) -> None:
    """A replay of the whole topic into a new projection gives the same tables, checksum for checksum."""
    acked = Acknowledged()  # replay_into_new_schema waits for len(acked) rows: the live count
    acked.published.update({str(n): (0, n) for n in range(rows)})
    schema = await replay_into_new_schema(kafka, url, topic, acked, *DURABLE_FETCH_OPTIONS)
    live, replayed = await checksums(url, "public", schema)
    assert live == replayed, f"live {live} != replay {replayed}"
