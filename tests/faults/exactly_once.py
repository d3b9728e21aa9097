"""What the fault tests check afterwards: every acknowledged event projected once, in log order."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import asyncpg

from runevents.bus.producer import Published
from runevents.events import Record
from tests.bus.test_projector import dsn
from tests.faults.projectors import ProjectorFleet

# Every column a record of the contract is made of, one md5 a row, folded in (thread_id, seq) order.
_CHECKSUM = (
    "SELECT count(*), md5(string_agg(md5(ROW(thread_id, run_id, seq, event_id, event_type, category, "
    "content, content_kind, metadata, created_at, user_id)::text), '' ORDER BY thread_id, seq)) "
    "FROM {schema}.run_events"
)


@dataclass
class Acknowledged:
    """What the writers were told: where the broker put each published event, and what each put returned."""

    # event_id -> (partition, offset)
    published: dict[str, tuple[int, int]] = field(default_factory=dict)
    # thread_id -> (event_id, seq) of each read-your-writes put, in the order they returned
    puts: dict[str, list[tuple[str, int]]] = field(default_factory=lambda: defaultdict(list))

    def add_published(self, published: Iterable[Published]) -> None:
        for record in published:
            assert record.event_id not in self.published, f"event_id {record.event_id} acknowledged twice"
            self.published[record.event_id] = (record.partition, record.offset)

    def add_put(self, record: Record) -> None:
        self.puts[record["thread_id"]].append((record["event_id"], record["seq"]))

    def __len__(self) -> int:
        return len(self.published) + sum(len(puts) for puts in self.puts.values())


async def connect(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(dsn(url))


async def wait_for_rows(
    url: str, expected: int, fleet: ProjectorFleet, *, schema: str = "public", within_s: float = 120
) -> float:
    """Wait until `schema`'s read tables hold `expected` events; return how long it took."""
    started = time.monotonic()
    connection = await connect(url)
    try:
        count = 0
        while time.monotonic() - started < within_s:
            fleet.check_alive()
            count = await connection.fetchval(f"SELECT count(*) FROM {schema}.run_events")
            if count >= expected:
                return time.monotonic() - started
            await asyncio.sleep(0.1)
        offsets = await connection.fetch(
            f"SELECT partition, next_offset FROM {schema}.projection_offsets ORDER BY partition"
        )
    finally:
        await connection.close()
    shown = ", ".join(f"{row[0]}:{row[1]}" for row in offsets)
    outputs = "\n".join(fleet.outputs())
    raise AssertionError(
        f"{count} of {expected} acknowledged events projected into {schema} within {within_s}s "
        f"(stored offsets {shown}); the projectors said:\n{outputs}"
    )


async def assert_each_acknowledged_event_once(
    url: str, acked: Acknowledged, *, schema: str = "public"
) -> None:
    """The read tables hold exactly the acknowledged events, once each, numbered 1..n per thread in log order,
    with counters equal to the rows."""
    connection = await connect(url)
    try:
        rows = await connection.fetch(
            f"SELECT thread_id, seq, event_id::text, category FROM {schema}.run_events "
            "ORDER BY thread_id, seq"
        )
        counters = await connection.fetch(
            f"SELECT thread_id, last_seq, event_count, message_count FROM {schema}.thread_counters"
        )
    finally:
        await connection.close()

    ids = Counter(row[2] for row in rows)
    twice = [event_id for event_id, copies in ids.items() if copies > 1]
    assert not twice, f"{len(twice)} events projected more than once in {schema}, e.g. {twice[:3]}"
    put_ids = {event_id: seq for puts in acked.puts.values() for event_id, seq in puts}
    expected = set(acked.published) | set(put_ids)
    missing = expected - set(ids)
    unknown = set(ids) - expected
    assert not missing, (
        f"{len(missing)} acknowledged events are not in {schema}.run_events, e.g. {sorted(missing)[:3]}"
    )
    assert not unknown, (
        f"{len(unknown)} events in {schema}.run_events nobody was told of, e.g. {sorted(unknown)[:3]}"
    )

    by_thread: dict[str, list[asyncpg.Record]] = defaultdict(list)
    for row in rows:
        by_thread[row[0]].append(row)
    for thread, thread_rows in by_thread.items():
        seqs = [row[1] for row in thread_rows]
        assert seqs == list(range(1, len(seqs) + 1)), f"thread {thread!r} in {schema} has seqs {seqs[:20]}..."
        # Published events of a thread are numbered in the order of their offsets (one partition: log order).
        positions = [acked.published[row[2]] for row in thread_rows if row[2] in acked.published]
        assert len({partition for partition, _ in positions}) <= 1, f"thread {thread!r} is in two partitions"
        offsets = [offset for _, offset in positions]
        assert offsets == sorted(offsets), f"thread {thread!r} in {schema} is not numbered in log order"
    for thread, puts in acked.puts.items():
        stored = {row[2]: row[1] for row in by_thread[thread]}
        for event_id, seq in puts:
            assert stored[event_id] == seq, (
                f"put of {event_id} on {thread!r} returned seq {seq}; {schema} holds it at {stored[event_id]}"
            )

    actual = {row[0]: (row[1], row[2], row[3]) for row in counters}
    wanted = {
        thread: (len(thread_rows), len(thread_rows), sum(row[3] == "message" for row in thread_rows))
        for thread, thread_rows in by_thread.items()
    }
    wrong = {thread: (actual.get(thread), wanted.get(thread)) for thread in actual.keys() | wanted.keys()}
    wrong = {thread: pair for thread, pair in wrong.items() if pair[0] != pair[1]}
    assert not wrong, (
        f"{len(wrong)} thread counters in {schema} differ from the rows (counter, rows): {wrong}"
    )


async def checksums(url: str, *schemas: str) -> list[tuple[int, str]]:
    """(rows, checksum over every column of the contract) of each schema's run_events, on one connection."""
    connection = await connect(url)
    try:
        return [tuple(await connection.fetchrow(_CHECKSUM.format(schema=schema))) for schema in schemas]
    finally:
        await connection.close()
