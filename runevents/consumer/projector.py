"""The projector: the topic's records applied to the read tables, exactly once in effect.

Kafka delivers at least once; the projection is exactly once because every batch is one PostgreSQL
transaction that also moves the partition's stored offset, and commits only if that offset is still
where the batch began (a consumer that lost its partition in a rebalance cannot write a stale batch).
On assignment the projector seeks to the stored offsets; Kafka's own committed offsets are never used.
A second copy of an `event_id` is skipped. seq comes from the thread's counter row: a thread's
records are all in one partition, so one projector at a time numbers them, in log order. Deletes and
put_if_absent are applied in log order between the puts around them, and their outcomes are stored
for the writer waiting on them. A record that cannot be decoded goes to the dead-letter topic and
table with its reason, and the partition moves on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord
from sqlalchemy import BigInteger, Integer, Text, bindparam, delete, select, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from runevents import metrics
from runevents.events import (
    PUT_IF_ABSENT,
    DeleteRunEnvelope,
    DeleteThreadEnvelope,
    PreparedEvent,
    UndecodableRecordError,
    decode_record,
)
from runevents.store import writes
from runevents.store.schema import (
    dead_letters,
    deleted_events,
    op_results,
    projection_offsets,
)
from runevents.store.sql import DATABASE_ERRORS, engine_for
from runevents.topic import DEFAULT_TOPIC, dead_letter_topic

log = logging.getLogger(__name__)

DEFAULT_PROJECTION: Final = "main"
# The channel the projector notifies on each commit; writers waiting for read-your-writes listen.
NOTIFY_CHANNEL: Final = "runevents_projected"
# Op results and tombstones serve writers waiting on them and retries of the same record: minutes.
RESULTS_KEPT_S: Final = 3600
PRUNE_EVERY_S: Final = 60
# Backing off while the database does not answer.
RETRY_FIRST_S: Final = 0.1
RETRY_MAX_S: Final = 5.0
_o = projection_offsets.c


# A NOTIFY payload must stay under 8000 bytes; a batch over many partitions is told in several.
_NOTIFY_LIMIT: Final = 7000


def notifications(
    schema: str | None, projection: str, topic: str, reached: list[tuple[int, int]]
) -> list[str]:
    """NOTIFY payloads saying how far a projection got: `schema TAB projection TAB topic TAB p:o,p:o`."""
    head = "\t".join((schema or "", projection, topic)) + "\t"
    payloads: list[str] = []
    parts: list[str] = []
    for partition, next_offset in reached:
        parts.append(f"{partition}:{next_offset}")
        if len(head) + sum(len(part) + 1 for part in parts) > _NOTIFY_LIMIT:
            payloads.append(head + ",".join(parts))
            parts = []
    if parts:
        payloads.append(head + ",".join(parts))
    return payloads


class StaleBatchError(Exception):
    """The stored offset of a partition moved since this projector read it: another one owns it now."""


class Projector:
    """Consumes the topic and keeps one projection's read tables up to date."""

    def __init__(
        self,
        bootstrap_servers: str,
        database_url: str,
        *,
        topic: str = DEFAULT_TOPIC,
        projection: str = DEFAULT_PROJECTION,
        schema: str | None = None,
        group_id: str | None = None,
        partitions: Sequence[int] | None = None,
        max_batch: int = 5000,
        max_trace_content: int | None = None,
        consumer_options: dict[str, Any] | None = None,
        client_options: dict[str, Any] | None = None,
    ) -> None:
        self.topic = topic
        self.projection = projection
        self._bootstrap_servers = bootstrap_servers
        self._schema = schema
        # With `partitions`, this projector owns them outright (no group); else the group shares them.
        self._partitions = None if partitions is None else list(partitions)
        # One group per projection of a topic: projectors of other topics never rebalance these.
        self._group_id = group_id or f"runevents-projector-{projection}-{topic}"
        self._max_batch = max_batch
        self._max_trace_content = max_trace_content
        self._consumer_options = dict(consumer_options or {})
        self._client_options = dict(client_options or {})
        self._engine = engine_for(database_url, schema=schema, pool_size=2)
        offsets = writes.qualified(projection_offsets, schema)
        # One statement a batch for the fence: lock the partitions' offset rows in partition order (two
        # projectors sharing partitions for a moment, in a rebalance, queue on them instead of
        # deadlocking; the update only touches rows locked first), move those still at the batch's
        # start, and queue the NOTIFY that tells waiting writers (delivered only if the batch commits).
        self._fence_sql = text(
            "WITH locked AS MATERIALIZED ("
            f"SELECT partition FROM {offsets} WHERE projection = :projection AND topic = :topic "
            "AND partition = ANY(:partitions) ORDER BY partition FOR UPDATE), "
            f"moved AS (UPDATE {offsets} AS o SET next_offset = v.next_offset "
            "FROM unnest(:partitions, :starts, :ends) AS v(partition, start, next_offset) "
            "WHERE o.projection = :projection AND o.topic = :topic AND o.partition = v.partition "
            "AND o.next_offset = v.start AND o.partition IN (SELECT partition FROM locked) "
            "RETURNING o.partition), "
            "told AS (SELECT count(pg_notify(:channel, payload)) AS sent FROM unnest(:payloads) AS payload) "
            "SELECT moved.partition FROM moved, told"
        ).bindparams(
            bindparam("partitions", type_=postgresql.ARRAY(Integer)),
            bindparam("starts", type_=postgresql.ARRAY(BigInteger)),
            bindparam("ends", type_=postgresql.ARRAY(BigInteger)),
            bindparam("payloads", type_=postgresql.ARRAY(Text)),
        )
        # Stored, or stored and deleted since: either way, seen.
        self._dedupe_sql = writes.projected_seqs_sql(schema)
        # Where each owned partition's stored offset stands, as this projector last read or wrote it.
        self._positions: dict[TopicPartition, int] = {}
        # Held while a batch is applied, so a revocation waits for the batch to commit or roll back.
        self._applying = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        self._dead_letters: AIOKafkaProducer | None = None
        self.projected = 0
        self.dead = 0
        self.stale_batches = 0
        # Committed batches and the seconds spent applying them (decode, write, commit).
        self.batches = 0
        self.batch_seconds = 0.0
        self._batch_projected = 0
        self._batch_dead = 0
        self._first_dead: str | None = None

    @property
    def assignment(self) -> set[TopicPartition]:
        """The partitions this projector owns now."""
        return set(self._positions)

    async def check_database(self) -> None:
        """Raise unless the read tables' database answers a query."""
        async with self._engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    def progress(self) -> dict[int, tuple[int, int | None]]:
        """Per owned partition: the stored next offset, and the end of the log as last fetched (or None)."""
        consumer = self._consumer
        return {
            tp.partition: (next_offset, None if consumer is None else consumer.highwater(tp))
            for tp, next_offset in self._positions.items()
        }

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Project until `stop` is set (or the task is cancelled), then leave cleanly."""
        stop = stop or asyncio.Event()
        try:
            await self._start()
        except BaseException:
            await self._close()  # what did start (the dead-letter producer, say) is not left open
            raise
        consumer = self._consumer
        assert consumer is not None
        pruned = time.monotonic()
        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=100, max_records=self._max_batch)
                if batch:
                    try:
                        async with self._applying:
                            await self._apply(batch)
                    except DATABASE_ERRORS as exc:
                        # Rolled back: nothing of the batch is stored, so it is read again from the
                        # stored offsets once the database answers (a restart, a killed connection).
                        await self._recover(exc, stop)
                if time.monotonic() - pruned > PRUNE_EVERY_S:
                    await self._prune()
                    pruned = time.monotonic()
        finally:
            await self._close()

    async def _recover(self, error: BaseException, stop: asyncio.Event) -> None:
        """After a failed batch, seek back to the stored offsets, retrying until the database answers."""
        delay = RETRY_FIRST_S
        while not stop.is_set():
            log.warning(
                "a batch failed and was rolled back (%s); reading again from the stored offsets", error
            )
            await asyncio.sleep(delay)
            try:
                async with self._applying:
                    await self._seek_to_stored(sorted(self._positions, key=lambda tp: tp.partition))
                return
            except DATABASE_ERRORS as exc:
                error, delay = exc, min(delay * 2, RETRY_MAX_S)

    async def _start(self) -> None:
        options: dict[str, Any] = {
            "bootstrap_servers": self._bootstrap_servers,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "max_partition_fetch_bytes": 4 * 1024 * 1024,
            # A writer waits for its record to be projected: a fetch must not sit out a long poll.
            # (Tansu answers a fetch only when this wait expires, even when records are there.)
            # 5 ms measured no better for puts than 20 (p50 wait 6.5-7.0 ms against 6.3-10.5 for one
            # writer, 1.2-1.3k puts/s against 1.3-2.1k for 64), and idle it fetches 4 times as often.
            "fetch_max_wait_ms": 20,
            **self._client_options,
            **self._consumer_options,
        }
        self._dead_letters = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap_servers, acks="all", **self._client_options
        )
        await self._dead_letters.start()
        if self._partitions is None:
            consumer = AIOKafkaConsumer(group_id=self._group_id, **options)
            self._consumer = consumer
            await consumer.start()
            consumer.subscribe([self.topic], listener=_Rebalance(self))
        else:
            consumer = AIOKafkaConsumer(**options)
            self._consumer = consumer
            await consumer.start()
            owned = [TopicPartition(self.topic, partition) for partition in self._partitions]
            consumer.assign(owned)
            await self._seek_to_stored(owned)

    async def _prune(self) -> None:
        """Drop op results and tombstones old enough that no writer waits on them and no retry comes."""
        cutoff = datetime.now(UTC) - timedelta(seconds=RESULTS_KEPT_S)
        async with self._engine.begin() as connection:
            await connection.execute(delete(op_results).where(op_results.c.applied_at < cutoff))
            await connection.execute(delete(deleted_events).where(deleted_events.c.deleted_at < cutoff))

    async def _close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        if self._dead_letters is not None:
            await self._dead_letters.stop()
            self._dead_letters = None
        await self._engine.dispose()

    async def _seek_to_stored(self, partitions: Sequence[TopicPartition]) -> None:
        """Read (creating at 0 if new) the stored offsets of `partitions` and seek the consumer to them."""
        if not partitions:
            return
        numbers = [tp.partition for tp in partitions]
        async with self._engine.begin() as connection:
            rows = [
                {"projection": self.projection, "topic": self.topic, "partition": n, "next_offset": 0}
                for n in numbers
            ]
            await connection.execute(
                postgresql.insert(projection_offsets).values(rows).on_conflict_do_nothing()
            )
            stored = dict(
                (
                    await connection.execute(
                        select(_o.partition, _o.next_offset).where(
                            _o.projection == self.projection,
                            _o.topic == self.topic,
                            _o.partition.in_(numbers),
                        )
                    )
                ).all()
            )
        assert self._consumer is not None
        for tp in partitions:
            self._positions[tp] = stored[tp.partition]
            self._consumer.seek(tp, stored[tp.partition])
        log.info(
            "projection %r of %r: at %s (partition: next offset)",
            self.projection,
            self.topic,
            {tp.partition: stored[tp.partition] for tp in partitions},
        )

    def _forget(self, partitions: Sequence[TopicPartition]) -> None:
        for tp in partitions:
            self._positions.pop(tp, None)
        if partitions:
            log.info(
                "projection %r of %r: gave up partitions %s",
                self.projection,
                self.topic,
                sorted(tp.partition for tp in partitions),
            )

    async def _apply(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        """Apply one fetched batch in one transaction; on a stale offset, roll back and seek again."""
        # (partition, its records not yet applied, where it starts, where it ends), in partition order.
        owned: list[tuple[TopicPartition, list[ConsumerRecord], int, int]] = []
        assert self._consumer is not None
        unplaced = [tp for tp in batch if tp not in self._positions and tp in self._consumer.assignment()]
        if unplaced:
            # Assigned, but its stored offset was never read: read it and fetch from there.
            await self._seek_to_stored(unplaced)
            return
        for tp, records in sorted(batch.items(), key=lambda item: item[0].partition):
            start = self._positions.get(tp)
            if start is None:
                continue  # revoked while fetched
            fresh = [record for record in records if record.offset >= start]
            if fresh:
                owned.append((tp, fresh, start, fresh[-1].offset + 1))
        if not owned:
            return
        # Counted into `projected` and `dead` only once the batch commits.
        self._batch_projected = self._batch_dead = 0
        self._first_dead = None
        started = time.perf_counter()
        try:
            async with self._engine.begin() as connection:
                await self._fence(connection, owned)
                # Partitions hold disjoint threads, so their puts go in together (one COPY); an op is
                # applied after everything before it in its partition, which is all log order asks.
                puts: list[PreparedEvent] = []
                for tp, records, _, _ in owned:
                    await self._apply_partition(connection, tp, records, puts)
                await self._insert_puts(connection, puts)
        except StaleBatchError as exc:
            self.stale_batches += 1
            log.warning("%s; rolled the batch back and seeking to the stored offsets", exc)
            await self._seek_to_stored(sorted(self._positions, key=lambda tp: tp.partition))
            return
        for tp, _, _, end in owned:
            if tp in self._positions:
                self._positions[tp] = end
        self.projected += self._batch_projected
        self.dead += self._batch_dead
        elapsed = time.perf_counter() - started
        self.batches += 1
        self.batch_seconds += elapsed
        size = sum(len(records) for _, records, _, _ in owned)
        metrics.observe_batch(
            self.topic, self.projection, size, elapsed, self._batch_projected, self._batch_dead
        )
        log.debug("applied %d records of %d partitions in %.1f ms", size, len(owned), elapsed * 1000)
        if self._batch_dead:
            # One line a batch, not one a record: a burst of garbage must not flood the log.
            log.warning(
                "%d records of this batch went to the dead letters (the first at %s)",
                self._batch_dead,
                self._first_dead,
            )

    async def _fence(
        self, connection: AsyncConnection, owned: list[tuple[TopicPartition, list[ConsumerRecord], int, int]]
    ) -> None:
        """Move every partition's stored offset from its start to its end, or raise if one has moved."""
        partitions = [tp.partition for tp, _, _, _ in owned]
        reached = [(tp.partition, end) for tp, _, _, end in owned]
        # Through SQLAlchemy, as the transaction's first statement: its asyncpg adapter issues BEGIN
        # only then, and what ran on the raw connection before it would commit on its own.
        moved = await connection.execute(
            self._fence_sql,
            {
                "projection": self.projection,
                "topic": self.topic,
                "partitions": partitions,
                "starts": [start for _, _, start, _ in owned],
                "ends": [end for _, _, _, end in owned],
                "channel": NOTIFY_CHANNEL,
                "payloads": notifications(self._schema, self.projection, self.topic, reached),
            },
        )
        fenced = {row[0] for row in moved}
        if len(fenced) != len(owned):
            stale = sorted(set(partitions) - fenced)
            starts = {tp.partition: start for tp, _, start, _ in owned}
            raise StaleBatchError(
                f"partition {stale[0]} of {self.topic!r} is no longer at offset {starts[stale[0]]} "
                f"in projection {self.projection!r}"
            )

    async def _apply_partition(
        self,
        connection: AsyncConnection,
        tp: TopicPartition,
        records: list[ConsumerRecord],
        puts: list[PreparedEvent],
    ) -> None:
        """Decode a partition's records: puts join `puts`; ops and dead letters are applied in order."""
        for record in records:
            try:
                decoded = decode_record(record.value, max_trace_content=self._max_trace_content)
                thread_id = (decoded[1] if isinstance(decoded, tuple) else decoded).thread_id
                if record.key != thread_id.encode():
                    # Keyed otherwise, a thread's records could sit in two partitions, numbered twice.
                    raise UndecodableRecordError(
                        f"the record's key {record.key!r} is not its thread id {thread_id!r}"
                    )
            except UndecodableRecordError as exc:
                await self._dead_letter(connection, tp, record, exc.reason)
                continue
            if isinstance(decoded, PreparedEvent):
                puts.append(decoded)
                continue
            # Everything before an op is applied before it: log order is the order of effects.
            await self._insert_puts(connection, puts)
            puts.clear()
            await self._apply_op(connection, decoded)

    async def _insert_puts(self, connection: AsyncConnection, puts: list[PreparedEvent]) -> None:
        if not puts:
            return
        raw: Any = (await connection.get_raw_connection()).driver_connection
        stored = await raw.fetch(
            self._dedupe_sql, [event.thread_id for event in puts], [event.event_id for event in puts]
        )
        seen = {row[0] for row in stored}
        fresh = []
        for event in puts:
            if event.event_id not in seen:  # a producer's retry, or a backfill run twice
                seen.add(event.event_id)
                fresh.append(event)
        if fresh:
            await writes.insert_events_postgresql(raw, fresh, self._schema, records=False)
            self._batch_projected += len(fresh)

    async def _apply_op(
        self,
        connection: AsyncConnection,
        op: DeleteThreadEnvelope | DeleteRunEnvelope | tuple[str, PreparedEvent],
    ) -> None:
        event_id = op[1].event_id if isinstance(op, tuple) else op.event_id
        thread_id = op[1].thread_id if isinstance(op, tuple) else op.thread_id
        done = await connection.execute(
            select(op_results.c.op).where(
                op_results.c.thread_id == thread_id, op_results.c.event_id == event_id
            )
        )
        if done.first() is not None:
            return  # applied before: a retried op must not run twice
        result: dict[str, Any] = {"thread_id": thread_id, "event_id": event_id}
        if isinstance(op, tuple):
            _, event = op
            record, created = await writes.put_if_absent(connection, event, self._schema)
            result |= {"op": PUT_IF_ABSENT, "seq": record["seq"], "created": created}
            self._batch_projected += created
        elif isinstance(op, DeleteRunEnvelope):
            removed = await writes.delete_run(connection, op.thread_id, op.run_id, tombstones=True)
            result |= {"op": op.op, "removed": removed}
        else:
            removed = await writes.delete_thread(connection, op.thread_id, tombstones=True)
            result |= {"op": op.op, "removed": removed}
        await connection.execute(op_results.insert().values(**result, applied_at=datetime.now(UTC)))

    async def _dead_letter(
        self, connection: AsyncConnection, tp: TopicPartition, record: ConsumerRecord, reason: str
    ) -> None:
        """Send the record to the dead-letter topic and table with `reason`; the partition goes on."""
        headers = [(name, value) for name, value in record.headers or ()]
        assert self._dead_letters is not None
        await self._dead_letters.send_and_wait(
            dead_letter_topic(self.topic),
            value=record.value,
            key=record.key,
            headers=[
                *headers,
                ("runevents-dead-reason", reason.encode()),
                ("runevents-source", f"{tp.topic}/{tp.partition}/{record.offset}".encode()),
            ],
        )
        await connection.execute(
            postgresql.insert(dead_letters)
            .values(
                projection=self.projection,
                topic=tp.topic,
                partition=tp.partition,
                offset=record.offset,
                key=record.key,
                value=record.value,
                headers=orjson.dumps(
                    [[name, bytes(value).decode("utf-8", "replace")] for name, value in headers]
                ).decode(),
                reason=reason,
                dead_at=datetime.now(UTC),
            )
            .on_conflict_do_nothing()
        )
        self._batch_dead += 1
        if self._first_dead is None:
            self._first_dead = f"{tp.topic}/{tp.partition}/{record.offset}: {reason}"


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Seeks newly assigned partitions to their stored offsets; lets a running batch finish first."""

    def __init__(self, projector: Projector) -> None:
        self._projector = projector

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self._projector._applying:
            self._projector._forget(list(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        # aiokafka only logs a listener's failure: a partition that never got its stored offset
        # would then be skipped for good. Keep trying until the database answers.
        delay = RETRY_FIRST_S
        while True:
            try:
                await self._projector._seek_to_stored(list(assigned))
                return
            except DATABASE_ERRORS as exc:
                log.warning("reading the stored offsets of new partitions failed (%s); trying again", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
