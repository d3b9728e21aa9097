"""Backfill: history from elsewhere published onto the topic, each thread in its original order.

Events are validated as `put` validates them and published with the ids their source gives them
(see `backfill_sources`), in batches that each wait for the broker's acknowledgement before the
next is sent, so a thread's events reach their partition in order. Before publishing, a batch's
ids are looked up in the read tables: what a projection already holds is skipped, so a backfill
run again (after it was killed, or to be sure) publishes only what is missing, and the projector
skips by event id whatever was in flight when it was killed. The projector numbers each thread's
events 1..n in the order they arrive; the source's seq orders them and is not kept.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import asyncpg

from runevents.bus.names import DEFAULT_TOPIC
from runevents.bus.producer import EventProducer, EventTooLargeError
from runevents.bus.topic import TopicMissingError, log_offsets
from runevents.errors import InvalidEventError, RunEventsError
from runevents.events import PreparedEvent, prepare_event
from runevents.ops.backfill_sources import Source, SourceEvent
from runevents.tables import writes

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


class _Batcher:
    """Checks a batch of source events (valid? projected already?), and publishes what is left."""

    def __init__(
        self,
        producer: EventProducer,
        lookups: asyncpg.Pool,
        schema: str | None,
        result: Backfilled,
        strict: bool,
    ) -> None:
        self._producer = producer
        self._lookups = lookups
        self._lookup_sql = writes.projected_seqs_sql(schema)
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
        rows = await self._lookups.fetch(
            self._lookup_sql, [e.thread_id for _, e in events], [e.event_id for _, e in events]
        )
        projected = {row[0] for row in rows}
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

    async def publish(self, fresh: Checked) -> None:
        """Publish checked events; one too large for the topic is rejected and the rest go."""
        while fresh:
            try:
                await self._producer.publish_puts([event for _, event in fresh])
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
) -> Backfilled:
    """Publish `source`'s events to `topic`, skipping those the read tables (in `schema`) hold."""
    try:
        await log_offsets(bootstrap_servers, topic, "start", client_options=client_options)
    except TopicMissingError as error:
        raise BackfillError(f"{error} (create it first: `runevents topic create`)") from None
    result = Backfilled(total=await source.count())
    started = time.monotonic()
    producer = EventProducer(bootstrap_servers, topic=topic, client_options=dict(client_options or {}))
    lookups = await asyncpg.create_pool(writes.libpq_dsn(database_url), min_size=1, max_size=1)
    batcher = _Batcher(producer, lookups, schema, result, strict)
    # One batch is published while the next is read and checked; publishing waits for the one
    # before it to be acknowledged, so each partition gets its threads' events in order.
    publishing: asyncio.Task[None] | None = None

    async def hand_over(batch: Sequence[SourceEvent]) -> None:
        nonlocal publishing
        fresh, failed = await batcher.check(batch)
        if publishing is not None:
            await publishing
        publishing = asyncio.create_task(batcher.publish(fresh))
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
        await producer.stop()
        await lookups.close()
