"""Backfill: history from elsewhere published onto the topic, each thread in its original order.

Events are validated as `put` validates them and published with the ids their source gives them
(see `backfill_sources`), in batches that each wait for the broker's acknowledgement before the
next is sent, so a thread's events reach their partition in order. Before publishing, a batch's
ids are looked up in the read tables: what a projection already holds is skipped, so a backfill
run again (after it was killed, or to be sure) publishes only what is missing, and the projector
skips by event id whatever was in flight when it was killed. The projector numbers each thread's
events 1..n in the order they arrive; the source's seq orders them and is not kept.

`backfill_tables` writes the same events straight into a sql store's tables instead (a single node
without a broker, e.g. deer-flow's SQLite database moved to runevents'), with the same checks, ids
and skips; the store numbers each thread as the projector would.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from runevents.bus.names import DEFAULT_TOPIC
from runevents.bus.producer import EventProducer, EventTooLargeError
from runevents.bus.sealer import Sealer
from runevents.bus.topic import TopicMissingError, log_offsets
from runevents.crypto.keyring import KeyWrapper
from runevents.errors import InvalidEventError, RunEventsError
from runevents.events import PUT, PreparedEvent, prepare_event
from runevents.ops.backfill_sources import Source, SourceEvent
from runevents.tables import writes
from runevents.tables.keys import ThreadKeys
from runevents.tables.sql import SqlRunEventStore, engine_for

DEFAULT_BATCH: Final = 2000
ALREADY_PROJECTED: Final = "already in the read tables"
REPEATED_IN_SOURCE: Final = "event id repeated in the source"


class BackfillError(RunEventsError):
    """A backfill that cannot start or go on; the message says why (and where, for a record)."""


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record of the source that was not imported: where it is, and why."""

    where: str
    reason: str


@dataclass(slots=True)
class Backfilled:
    """Where a backfill stands: records read, imported, skipped (by reason) and rejected."""

    total: int
    read: int = 0
    imported: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    rejected: list[Rejected] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    stopped: bool = False

    @property
    def rate(self) -> float:
        """Records of the source dealt with per second."""
        return self.read / self.seconds if self.seconds > 0 else 0.0


Checked = list[tuple[SourceEvent, PreparedEvent]]


class Target(Protocol):
    """Where a backfill's events go, and what it holds already."""

    # Whether a batch may be checked while the one before it is written: the projector skips an id
    # repeated across those two batches; tables written directly would refuse it.
    pipelined: bool

    async def stored(self, events: Sequence[PreparedEvent]) -> set[str]:
        """The ids of `events` the read tables hold (or held until a delete)."""

    async def write(self, events: list[PreparedEvent]) -> None:
        """Write `events` in order (an `EventTooLargeError` names one that cannot go)."""

    async def close(self) -> None:
        """Release what the target holds."""


class _Topic:
    """The topic, with the read tables the projectors keep looked up for what is there already."""

    pipelined = True

    def __init__(
        self,
        producer: EventProducer,
        lookups: asyncpg.Pool,
        schema: str | None,
        sealer: Sealer | None = None,
        engine: AsyncEngine | None = None,
    ) -> None:
        self._producer = producer
        self._lookups = lookups
        self._lookup_sql = writes.projected_seqs_sql(schema)
        self._sealer = sealer
        self._engine = engine

    async def stored(self, events: Sequence[PreparedEvent]) -> set[str]:
        rows = await self._lookups.fetch(
            self._lookup_sql, [e.thread_id for e in events], [e.event_id for e in events]
        )
        return {row[0] for row in rows}

    async def write(self, events: list[PreparedEvent]) -> None:
        sealed = None if self._sealer is None else await self._sealer.seal(events, PUT)
        await self._producer.publish_puts(events, sealed=sealed)

    async def close(self) -> None:
        await self._producer.stop()
        await self._lookups.close()
        if self._engine is not None:
            await self._engine.dispose()


class _Tables:
    """A sql store's tables, written directly (no broker)."""

    pipelined = False

    def __init__(self, store: SqlRunEventStore) -> None:
        self._store = store

    async def stored(self, events: Sequence[PreparedEvent]) -> set[str]:
        return await self._store.stored_event_ids(events)

    async def write(self, events: list[PreparedEvent]) -> None:
        await self._store.import_events(events)

    async def close(self) -> None:
        return None  # the caller's store


class _Batcher:
    """Checks a batch of source events (valid? stored already?), and writes what is left."""

    def __init__(self, target: Target, result: Backfilled, strict: bool) -> None:
        self._target = target
        self._result = result
        self._strict = strict

    def _reject(self, where: str, reason: str) -> None:
        self._result.rejected.append(Rejected(where, reason))

    async def check(self, pending: Sequence[SourceEvent]) -> tuple[Checked, Rejected | None]:
        """What of `pending` is valid and not projected yet, and, with strict, the bad one that stops it."""
        events: Checked = []
        failed: Rejected | None = None
        for source_event in pending:
            problem = source_event.problem
            if problem is None:
                assert source_event.event is not None
                try:
                    prepared = prepare_event(source_event.event, event_id=source_event.event_id)
                except InvalidEventError as error:
                    problem = str(error)
                else:
                    events.append((source_event, prepared))
                    continue
            if self._strict:
                failed = Rejected(source_event.where, problem)
                break
            self._reject(source_event.where, problem)
        self._result.read += len(pending) if failed is None else len(events)
        return await self._not_projected(events), failed

    async def _not_projected(self, events: Checked) -> Checked:
        if not events:
            return []
        projected = await self._target.stored([event for _, event in events])
        fresh: Checked = []
        in_batch: set[str] = set()
        for source_event, event in events:
            if event.event_id in projected:
                self._result.skipped[ALREADY_PROJECTED] += 1
            elif event.event_id in in_batch:
                self._result.skipped[REPEATED_IN_SOURCE] += 1
            else:
                # Across batches, the projector skips a repeated id: only the count would be off.
                in_batch.add(event.event_id)
                fresh.append((source_event, event))
        return fresh

    async def write(self, fresh: Checked) -> None:
        """Write checked events; one too large for the topic is rejected and the rest go."""
        while fresh:
            try:
                await self._target.write([event for _, event in fresh])
            except EventTooLargeError as error:
                # Sizes are all checked before anything is sent: drop the one too large, send the rest.
                source_event, _ = fresh.pop(error.index or 0)
                if self._strict:
                    raise BackfillError(
                        f"{source_event.where}: {error.problem} (--strict: stopped here)"
                    ) from None
                self._reject(source_event.where, error.problem)
                continue
            self._result.imported += len(fresh)
            return


async def backfill(
    source: Source,
    bootstrap_servers: str,
    database_url: str,
    *,
    topic: str = DEFAULT_TOPIC,
    schema: str | None = None,
    strict: bool = False,
    batch_size: int = DEFAULT_BATCH,
    on_progress: Callable[[Backfilled], None] | None = None,
    stop: asyncio.Event | None = None,
    client_options: Mapping[str, Any] | None = None,
    keyring: KeyWrapper | None = None,
) -> Backfilled:
    """Publish `source`'s events to `topic`, skipping those the read tables (in `schema`) hold; sealed
    with their threads' keys if given a `keyring` (as a bus store with one seals its puts)."""
    try:
        await log_offsets(bootstrap_servers, topic, "start", client_options=client_options)
    except TopicMissingError as error:
        raise BackfillError(f"{error} (create it first: `runevents topic create`)") from None
    producer = EventProducer(bootstrap_servers, topic=topic, client_options=dict(client_options or {}))
    lookups = await asyncpg.create_pool(writes.libpq_dsn(database_url), min_size=1, max_size=1)
    engine = None if keyring is None else engine_for(database_url, pool_size=1)
    sealer = None if engine is None or keyring is None else Sealer(ThreadKeys(engine, keyring))
    target = _Topic(producer, lookups, schema, sealer, engine)
    return await _run(source, target, strict, batch_size, on_progress, stop)


async def backfill_tables(
    source: Source,
    store: SqlRunEventStore,
    *,
    strict: bool = False,
    batch_size: int = DEFAULT_BATCH,
    on_progress: Callable[[Backfilled], None] | None = None,
    stop: asyncio.Event | None = None,
) -> Backfilled:
    """Write `source`'s events into `store`'s tables directly, skipping those it holds already."""
    return await _run(source, _Tables(store), strict, batch_size, on_progress, stop)


async def _run(
    source: Source,
    target: Target,
    strict: bool,
    batch_size: int,
    on_progress: Callable[[Backfilled], None] | None,
    stop: asyncio.Event | None,
) -> Backfilled:
    try:
        total = await source.count()
    except BaseException:
        await target.close()
        raise
    result = Backfilled(total=total)
    started = time.monotonic()
    batcher = _Batcher(target, result, strict)
    # One batch is published while the next is read and checked (on the topic; tables take one batch
    # at a time); publishing waits for the one before it, so each thread's events go in order.
    publishing: asyncio.Task[None] | None = None

    async def hand_over(batch: Sequence[SourceEvent]) -> None:
        nonlocal publishing
        if publishing is not None and not target.pipelined:
            await publishing
        fresh, failed = await batcher.check(batch)
        if publishing is not None:
            await publishing
        publishing = asyncio.create_task(batcher.write(fresh))
        if failed is not None:
            await publishing
            result.rejected.append(failed)
            raise BackfillError(f"{failed.where}: {failed.reason} (--strict: stopped here)")
        result.seconds = time.monotonic() - started
        if on_progress is not None:
            on_progress(result)

    try:
        pending: list[SourceEvent] = []
        async for thread in source.threads():
            pending.extend(thread)
            while len(pending) >= batch_size:
                await hand_over(pending[:batch_size])
                del pending[:batch_size]
                if stop is not None and stop.is_set():
                    result.stopped = True
                    break
            if result.stopped:
                break
        else:
            await hand_over(pending)
        if publishing is not None:
            await publishing
        return result
    finally:
        if publishing is not None and not publishing.done():
            publishing.cancel()
        result.seconds = time.monotonic() - started
        result.notes = source.noticed.notes
        await target.close()
