"""The bus backend: writes go to the topic, a projector group writes the read tables, reads come from them.

`put`/`put_batch`/`put_if_absent` and the deletes publish, wait until the projection has applied
the records (read-your-writes), then return what the read tables hold. `publish`/`publish_batch`
return once the broker has acknowledged, without a seq, for emitters that do not need one.

A batch's events are validated together, so a bad event fails the batch before anything is sent.
Once sent, each event is a record of its own: if the broker fails mid-batch, the events it
acknowledged will be projected and the error says which were not acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any, Final, TypeVar

import asyncpg
from sqlalchemy import select

from runevents.bus.fitting import preview_for
from runevents.bus.names import DEFAULT_PROJECTION, DEFAULT_TOPIC
from runevents.bus.producer import EventProducer, Published
from runevents.bus.read_your_writes import DEFAULT_POLL_INTERVAL_S, ProjectionWatcher
from runevents.bus.sealer import Sealer
from runevents.crypto.keyring import KeyWrapper
from runevents.errors import ErasureUnavailableError, RunEventsError
from runevents.events import (
    DEFAULT_MAX_TRACE_CONTENT,
    PUT,
    PUT_IF_ABSENT,
    PreparedEvent,
    Record,
    make_record,
    prepare_event,
    prepare_events,
)
from runevents.lifecycle.blobs import BlobStore
from runevents.lifecycle.offload import BlobOpener, offload, offload_sizes
from runevents.metrics import READ_YOUR_WRITES_SEQS
from runevents.names import check_identifier, check_topic
from runevents.tables import writes
from runevents.tables.failures import DATABASE_ERRORS, reason_of
from runevents.tables.group_commit import GroupCommitter
from runevents.tables.keys import DEFAULT_CACHE_TTL_S, DEFAULT_KEY_SCHEMA, ThreadKeys
from runevents.tables.query import RECORD_COLUMNS, ReadTablesStore
from runevents.tables.schema import op_results, run_events
from runevents.tables.sql import engine_for

DEFAULT_WAIT_S: Final = 30.0
LOOKUP_CONNECTIONS: Final = 2
_e = run_events.c
_r = op_results.c
T = TypeVar("T")


class ReadTablesUnavailableError(RunEventsError):
    """The read tables' database did not answer; the message says whether anything was published."""


class ProjectedRecordMissingError(RunEventsError):
    """The projection passed a record's offset, but the record is not in the read tables."""


class BusRunEventStore(ReadTablesStore):
    """A `RunEventStore` that writes through the topic and reads the projection's read tables."""

    def __init__(
        self,
        bootstrap_servers: str,
        database_url: str,
        *,
        topic: str = DEFAULT_TOPIC,
        projection: str = DEFAULT_PROJECTION,
        schema: str | None = None,
        max_trace_content: int | None = DEFAULT_MAX_TRACE_CONTENT,
        wait_timeout_s: float = DEFAULT_WAIT_S,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
        pool_size: int = 8,
        producer_options: dict[str, Any] | None = None,
        blobs: BlobStore | None = None,
        offload_over: Mapping[str, int] | None = None,
        keyring: KeyWrapper | None = None,
        encrypt_categories: Collection[str] | None = None,
        key_schema: str = DEFAULT_KEY_SCHEMA,
        key_cache_ttl_s: float = DEFAULT_CACHE_TTL_S,
    ) -> None:
        """`blobs`: where contents cut to their preview are kept whole (see `get_full_content`); the
        topic carries the preview and the blob's reference. With it, a content that would make its
        record larger than the topic takes is cut and kept there too, instead of refused.
        `offload_over`: category -> size in bytes past which its contents are cut and kept there.

        `keyring`: seal each put's content and metadata on the topic with its thread's data key (kept in
        `key_schema`, wrapped by the keyring's current KEK), for the categories `encrypt_categories` (all
        by default); a writer keeps a thread's key `key_cache_ttl_s` (runevents.tables.keys)."""
        # Names first: a refused one must leave nothing opened (no engine, no producer).
        check_topic(topic)
        check_identifier("projection", projection)
        self._schema = None if schema is None else check_identifier("schema", schema)
        self._blobs = blobs
        self._offload_over = offload_sizes(offload_over, blobs)
        self._engine = engine_for(database_url, schema=schema, pool_size=pool_size)
        self._sealer = (
            None
            if keyring is None
            else Sealer(
                ThreadKeys(self._engine, keyring, schema=key_schema, cache_ttl_s=key_cache_ttl_s),
                encrypt_categories,
            )
        )
        self._max_trace_content = max_trace_content
        self._wait_timeout_s = wait_timeout_s
        self._producer = EventProducer(bootstrap_servers, topic=topic, **(producer_options or {}))
        self._watcher = ProjectionWatcher(
            database_url, projection=projection, topic=topic, schema=schema, poll_interval_s=poll_interval_s
        )
        self._dsn = self._listen_dsn = writes.libpq_dsn(database_url)
        self._lookup_sql = writes.projected_seqs_sql(schema)
        self._lookup_pool: asyncpg.Pool | None = None
        self._lookup_lock = asyncio.Lock()
        self._lookups: GroupCommitter[tuple[str, str], int | None] = GroupCommitter(
            self._lookup_seqs, concurrency=LOOKUP_CONNECTIONS
        )

    @property
    def producer(self) -> EventProducer:
        """The producer the store publishes with."""
        return self._producer

    async def close(self) -> None:
        """Flush the producer and close the listener and the connection pool."""
        await self._producer.stop()
        await self._lookups.close()
        await self._watcher.close()
        if self._lookup_pool is not None:
            await self._lookup_pool.close()
        await self._engine.dispose()

    async def publish_batch(
        self, events: Sequence[Mapping[str, Any]], *, event_ids: Sequence[str] | None = None
    ) -> list[Published]:
        """Validate and publish events; return once the broker acknowledged them (no seq, no wait).

        `event_ids`: the ids of a call that failed with `BrokerUnavailableError` (its `event_ids`), to
        retry it: the projection keeps one copy of each, whatever reached the log the first time.
        """
        prepared = prepare_events(events, max_trace_content=self._max_trace_content, event_ids=event_ids)
        if not prepared:
            return []
        # The blobs first: no record on the topic points at a blob that is not there.
        prepared = await self._offload(prepared)
        return await self._producer.publish_puts(prepared, sealed=await self._sealed(prepared, PUT))

    async def _sealed(
        self, events: Sequence[PreparedEvent], op: str
    ) -> list[tuple[str, bytes] | None] | None:
        """The events' sealed values, if this store seals (its keys read or made before publishing)."""
        if self._sealer is None:
            return None
        async with self._reading_keys("nothing was published"):
            return await self._sealer.seal(events, op)

    @contextlib.asynccontextmanager
    async def _reading_keys(self, outcome: str) -> AsyncIterator[None]:
        try:
            yield
        except DATABASE_ERRORS as exc:
            raise ReadTablesUnavailableError(
                f"cannot reach the threads' data keys ({reason_of(exc)}); {outcome}"
            ) from exc

    async def _offload(self, events: Sequence[PreparedEvent]) -> list[PreparedEvent]:
        """`events` with their cut contents in the blob store, those too large for a record included."""
        if self._blobs is None:
            return list(events)
        limit = await self._producer.record_limit([event.event_id for event in events])
        if self._sealer is not None:
            limit = self._sealer.clear_limit(limit)
        seal = None if self._sealer is None else self._sealer.seal_blobs
        return await offload(
            events, self._blobs, over=self._offload_over, fit=preview_for(self._producer, limit), seal=seal
        )

    async def publish(self, **event: Any) -> Published:
        """Validate and publish one event (the keywords of `put`); return once the broker acknowledged it."""
        (published,) = await self.publish_batch([event])
        return published

    async def _wait(self, published: Sequence[Published]) -> None:
        positions: dict[int, int] = {}
        for record in published:
            positions[record.partition] = max(positions.get(record.partition, -1), record.offset)
        await self._watcher.wait(positions, self._wait_timeout_s)

    async def put_batch(
        self, events: Sequence[Mapping[str, Any]], *, event_ids: Sequence[str] | None = None
    ) -> list[Record]:
        """Publish events, wait until they are projected, and return their records in input order.

        `event_ids`: as for `publish_batch`, to retry a call that failed with `BrokerUnavailableError`;
        an event the first call got onto the log comes back with the seq it was given then.
        """
        prepared = prepare_events(events, max_trace_content=self._max_trace_content, event_ids=event_ids)
        if not prepared:
            return []
        await self._ready_to_publish()
        prepared = await self._offload(prepared)
        ids = [event.event_id for event in prepared]
        # Before publishing: the projector may tell the seqs as soon as the broker has the records.
        self._watcher.expect(ids)
        try:
            published = await self._producer.publish_puts(prepared, sealed=await self._sealed(prepared, PUT))
            seqs = await self._read_back(published, lambda: self._projected_seqs(prepared))
        finally:
            self._watcher.forget(ids)
        return [make_record(event, seqs[event.event_id]) for event in prepared]

    async def caught_up(self) -> None:
        """Return once the projection has applied every record the topic held when called."""
        ends = await self._producer.log_ends()
        positions = {partition: end - 1 for partition, end in ends.items() if end > 0}
        if positions:
            await self._watcher.wait(positions, self._wait_timeout_s)

    async def _ready_to_publish(self) -> None:
        """Check the read tables before publishing, so a write that cannot be read back is not sent."""
        try:
            await self._ready()
        except DATABASE_ERRORS as exc:
            raise ReadTablesUnavailableError(
                f"cannot reach the read tables' database ({reason_of(exc)}); nothing was published"
            ) from exc

    @contextlib.asynccontextmanager
    async def _reading_back(self, published: Sequence[Published]) -> AsyncIterator[None]:
        """Turn a database failure after publishing into an error that says the events are durable."""
        try:
            yield
        except DATABASE_ERRORS as exc:
            where = ", ".join(f"{record.partition}:{record.offset}" for record in published[:3])
            raise ReadTablesUnavailableError(
                f"{len(published)} records are durable on the topic (partition:offset {where}"
                f"{', ...' if len(published) > 3 else ''}) but their projection could not be read "
                f"({reason_of(exc)}); they will appear once a projector applies them"
            ) from exc

    async def _read_back(self, published: Sequence[Published], read: Callable[[], Awaitable[T]]) -> T:
        """Wait until `published` is projected, then `read` it (again, if a promotion came between)."""
        generation = self._watcher.generation
        async with self._reading_back(published):
            await self._wait(published)
            try:
                return await read()
            except ProjectedRecordMissingError:
                # Promoted after the wait saw the old projection pass the records: wait on the new one.
                if not await self._watcher.resync(generation):
                    raise
                await self._wait(published)
                return await read()

    async def _projected_seqs(self, events: Sequence[PreparedEvent]) -> dict[str, int]:
        """The seq the projector gave each event (also when a delete has removed it since)."""
        # The record is what was published, numbered: only its seq is wanted, and the projector's
        # notification has told it unless the batch was large or the notification missed. Concurrent
        # writers' lookups of the rest share one query (many puts waiting on one projector batch would
        # otherwise each pay a query of their own).
        told = self._watcher.told([event.event_id for event in events])
        READ_YOUR_WRITES_SEQS.labels(self._producer.topic, "told").inc(len(told))
        if len(told) == len(events):
            return told
        READ_YOUR_WRITES_SEQS.labels(self._producer.topic, "read").inc(len(events) - len(told))
        wanted = [(event.thread_id, event.event_id) for event in events if event.event_id not in told]
        found = await self._lookups.submit(wanted)
        missing = [event_id for (_, event_id), seq in zip(wanted, found, strict=True) if seq is None]
        if missing:
            raise ProjectedRecordMissingError(
                f"{len(missing)} of {len(events)} events were projected but are not in the read tables "
                f"(dead-lettered? see dead_letters), e.g. event_id {missing[0]}"
            )
        read = {event_id: seq for (_, event_id), seq in zip(wanted, found, strict=True) if seq is not None}
        return told | read

    async def _lookup_seqs(self, groups: list[Sequence[tuple[str, str]]]) -> list[list[int | None]]:
        """One query for the seqs of every waiting writer's events, in the read tables or tombstones."""
        pairs = [pair for group in groups for pair in group]
        async with self._lookup_lock:
            if self._lookup_pool is None:
                self._lookup_pool = await asyncpg.create_pool(
                    self._dsn, min_size=0, max_size=LOOKUP_CONNECTIONS
                )
        rows = await self._lookup_pool.fetch(
            self._lookup_sql, [thread_id for thread_id, _ in pairs], [event_id for _, event_id in pairs]
        )
        seqs: dict[str, int] = {row[0]: row[1] for row in rows}
        return [[seqs.get(event_id) for _, event_id in group] for group in groups]

    async def _op_result(self, published: Published) -> Any:
        return await self._read_back([published], lambda: self._read_op_result(published))

    async def _read_op_result(self, published: Published) -> Any:
        rows = await self._rows(
            select(_r.removed, _r.seq, _r.created).where(
                _r.thread_id == published.thread_id, _r.event_id == published.event_id
            )
        )
        if not rows:
            raise ProjectedRecordMissingError(
                f"op {published.event_id} on thread {published.thread_id!r} was projected but left no "
                "result (dead-lettered? see dead_letters)"
            )
        return rows[0]

    async def _put_if_absent(self, event: Mapping[str, Any]) -> tuple[Record, bool]:
        prepared = prepare_event(event, max_trace_content=self._max_trace_content)
        await self._ready_to_publish()
        (prepared,) = await self._offload([prepared])
        sealed = await self._sealed([prepared], PUT_IF_ABSENT)
        (published,) = await self._producer.publish_puts([prepared], op=PUT_IF_ABSENT, sealed=sealed)
        result = await self._op_result(published)
        if result.created:
            return make_record(prepared, result.seq), True
        async with self._reading_back([published]):
            records = await self._records(
                select(*RECORD_COLUMNS).where(_e.thread_id == prepared.thread_id, _e.seq == result.seq)
            )
        if not records:
            raise ProjectedRecordMissingError(
                f"put_if_absent on thread {prepared.thread_id!r} resolved to seq {result.seq}, "
                "which has been deleted since"
            )
        return records[0], False

    def _blob_opener(self) -> BlobOpener | None:
        return None if self._sealer is None else self._sealer.open_blob

    def _check_erasable(self) -> None:
        if self._sealer is None:
            raise ErasureUnavailableError(
                "this bus store does not seal its records (no keyring): the topic keeps the thread's "
                "events in the clear, so they cannot be erased from it; nothing was deleted"
            )

    async def _erase(self, thread_ids: list[str]) -> None:
        assert self._sealer is not None
        async with self._reading_keys("nothing was destroyed or deleted"):
            await self._sealer.keys.destroy(thread_ids)

    async def _delete_thread(self, thread_id: str) -> int:
        await self._ready_to_publish()
        result = await self._op_result(await self._producer.publish_delete_thread(thread_id))
        self._doorbells.ring((thread_id,), deleted=True)
        return int(result.removed)

    async def _delete_run(self, thread_id: str, run_id: str) -> int:
        await self._ready_to_publish()
        result = await self._op_result(await self._producer.publish_delete_run(thread_id, run_id))
        return int(result.removed)

    def _blob_store(self) -> BlobStore | None:
        return self._blobs

    async def _set_retention(self, thread_id: str, policy: dict[str, Any] | None) -> None:
        # On the log too: a replay rebuilds the threads' policies with their events.
        await self._ready_to_publish()
        await self._op_result(await self._producer.publish_set_retention(thread_id, policy))

    async def _expire(self, thread_id: str, seqs: list[int]) -> int:
        # Written to the log like a delete: a replay of the topic expires the same events.
        await self._ready_to_publish()
        result = await self._op_result(await self._producer.publish_expire(thread_id, seqs))
        return int(result.removed)
