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
import shlex
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord
from sqlalchemy import delete, select, text
from sqlalchemy.dialects import postgresql

from runevents import metrics
from runevents.bus.names import DEFAULT_PROJECTION, DEFAULT_TOPIC
from runevents.bus.projector.batch import BatchWriter, Owned, StaleBatchError
from runevents.bus.topic import TopicMissingError
from runevents.errors import RunEventsError, SchemaOutdatedError
from runevents.masking import mask_secrets
from runevents.names import check_identifier, check_topic
from runevents.retrying import RETRY_FIRST_S, one_line, pause, retry_until_stopped
from runevents.tables import migrate
from runevents.tables.failures import DATABASE_ERRORS
from runevents.tables.schema import deleted_events, op_results, projection_offsets
from runevents.tables.sql import engine_for

log = logging.getLogger(__name__)

# Op results and tombstones serve writers waiting on them and retries of the same record: minutes.
RESULTS_KEPT_S: Final = 3600
PRUNE_EVERY_S: Final = 60
_o = projection_offsets.c


class PartitionsError(RunEventsError, ValueError):
    """Partitions a projector was told to own that its topic does not have."""


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
        # Names first: a refused one must leave nothing opened (no engine, no client).
        self.topic = check_topic(topic)
        self.projection = check_identifier("projection", projection)
        self._schema = None if schema is None else check_identifier("schema", schema)
        self._bootstrap_servers = bootstrap_servers
        self._database_url = database_url
        # With `partitions`, this projector owns them outright (no group); else the group shares them.
        self._partitions = None if partitions is None else list(partitions)
        # One group per projection of a topic: projectors of other topics never rebalance these.
        self._group_id = group_id or f"runevents-projector-{projection}-{topic}"
        self._max_batch = max_batch
        self._consumer_options = dict(consumer_options or {})
        self._client_options = dict(client_options or {})
        self._engine = engine_for(database_url, schema=schema, pool_size=2)
        # Masked out of every message, whatever a driver's error quotes.
        self._secrets = (self._engine.url.password,)
        self._writer = BatchWriter(
            topic=topic, projection=projection, schema=schema, max_trace_content=max_trace_content
        )
        # Where each owned partition's stored offset stands, as this projector last read or wrote it.
        self._positions: dict[TopicPartition, int] = {}
        # Held while a batch is applied, so a revocation waits for the batch to commit or roll back.
        self._applying = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        self._dead_letters: AIOKafkaProducer | None = None
        # Set once the projector is told to stop (or cancelled): every retry loop ends on it.
        self._halt = asyncio.Event()
        self.projected = 0
        self.dead = 0
        self.stale_batches = 0
        # Committed batches and the seconds spent applying them (decode, write, commit).
        self.batches = 0
        self.batch_seconds = 0.0

    @property
    def assignment(self) -> set[TopicPartition]:
        """The partitions this projector owns now."""
        return set(self._positions)

    async def check_database(self) -> None:
        """Raise unless the read tables' database answers a query."""
        async with self._engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def check_read_tables(self) -> None:
        """Raise `SchemaOutdatedError`, naming the command that fixes it, unless the tables are at head."""
        async with self._engine.connect() as connection:
            revision = await migrate.current_revision(connection, schema=self._schema)
        head = migrate.head_revision()
        if revision == head:
            return
        shown = mask_secrets(self._database_url, *self._secrets)
        where = f"{shown} (schema {self._schema or 'public'})"
        if revision is not None and not migrate.is_known_revision(revision):
            raise SchemaOutdatedError(
                f"the read tables at {where} are at revision {revision}, which this runevents does not "
                f"know (it needs {head}): upgrade runevents, or point it at another database"
            )
        upgrade = f"runevents db upgrade {shlex.quote(shown)}"
        if self._schema is not None:
            upgrade += f" --schema {self._schema}"
        raise SchemaOutdatedError(
            f"the read tables at {where} are at revision {revision or 'none'}; this runevents needs "
            f"{head}: run: {upgrade}"
        )

    def progress(self) -> dict[int, tuple[int, int | None]]:
        """Per owned partition: the stored next offset, and the end of the log as last fetched (or None)."""
        consumer = self._consumer
        return {
            tp.partition: (next_offset, None if consumer is None else consumer.highwater(tp))
            for tp, next_offset in self._positions.items()
        }

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Project until `stop` is set (or the task is cancelled), then leave cleanly."""
        halt = self._halt = asyncio.Event()
        # The retry loops (the rebalance listener's among them, which runs in the Kafka client's own
        # task) wait on `halt`: set by `stop`, and by leaving here for any reason, cancellation included.
        relay = asyncio.ensure_future((stop or asyncio.Event()).wait())
        relay.add_done_callback(lambda _: halt.set())
        try:
            await self._start()
        except BaseException:
            halt.set()
            relay.cancel()
            await self._close()  # what did start (the dead-letter producer, say) is not left open
            raise
        consumer = self._consumer
        assert consumer is not None
        pruned = time.monotonic()
        try:
            while not halt.is_set():
                batch = await consumer.getmany(timeout_ms=100, max_records=self._max_batch)
                if batch:
                    try:
                        async with self._applying:
                            await self._apply(batch)
                    except DATABASE_ERRORS as exc:
                        # Rolled back: nothing of the batch is stored, so it is read again from the
                        # stored offsets once the database answers (a restart, a killed connection).
                        await self._recover(exc)
                if time.monotonic() - pruned > PRUNE_EVERY_S:
                    await self._prune()
                    pruned = time.monotonic()
        finally:
            halt.set()
            relay.cancel()
            await self._close()

    async def _recover(self, error: BaseException) -> None:
        """After a failed batch, seek back to the stored offsets, retrying until the database answers."""
        log.warning(
            "a batch failed and was rolled back (%s); reading again from the stored offsets",
            one_line(error, *self._secrets),
        )
        if await pause(self._halt, RETRY_FIRST_S):
            return

        async def seek_back() -> None:
            async with self._applying:
                await self._seek_to_stored(sorted(self._positions, key=lambda tp: tp.partition))

        await retry_until_stopped(
            seek_back,
            self._halt,
            doing="reading the stored offsets again",
            errors=DATABASE_ERRORS,
            log=log,
            secrets=self._secrets,
        )

    async def _start(self) -> None:
        # Before any client starts: tables never migrated (or a wrong schema) are a setting to fix, and
        # a projector that joined the group would take partitions from healthy ones and apply nothing.
        await self.check_read_tables()
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
        if self._partitions is None:
            # Started, it has not joined the group yet: that takes the subscription below.
            consumer = AIOKafkaConsumer(group_id=self._group_id, **options)
            self._consumer = consumer
            await consumer.start()
        else:
            consumer = AIOKafkaConsumer(**options)
            self._consumer = consumer
            await consumer.start()
            await self._check_partitions(consumer, self._partitions)
        self._dead_letters = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap_servers, acks="all", **self._client_options
        )
        await self._dead_letters.start()
        self._writer.dead_letters = self._dead_letters
        if self._partitions is None:
            consumer.subscribe([self.topic], listener=_Rebalance(self))
        else:
            owned = [TopicPartition(self.topic, partition) for partition in self._partitions]
            consumer.assign(owned)
            await self._seek_to_stored(owned)

    async def _check_partitions(self, consumer: AIOKafkaConsumer, wanted: Sequence[int]) -> None:
        """Raise unless the topic exists and has every partition of `wanted` (else it would idle)."""
        await consumer.topics()  # the cluster's metadata; asking for all topics creates none
        found = consumer.partitions_for_topic(self.topic)
        if not found:
            raise TopicMissingError(f"topic {self.topic!r} does not exist at {self._bootstrap_servers}")
        beyond = sorted(set(wanted) - found)
        if beyond:
            raise PartitionsError(
                f"topic {self.topic!r} has partitions 0-{max(found)} ({len(found)}); "
                f"there is no partition {', '.join(map(str, beyond))}"
            )

    async def _prune(self) -> None:
        """Drop op results and tombstones old enough that no writer waits on them and no retry comes."""
        cutoff = datetime.now(UTC) - timedelta(seconds=RESULTS_KEPT_S)
        async with self._engine.begin() as connection:
            await connection.execute(delete(op_results).where(op_results.c.applied_at < cutoff))
            await connection.execute(delete(deleted_events).where(deleted_events.c.deleted_at < cutoff))

    async def close(self) -> None:
        """Release the clients and the database pool the projector holds; run() does this as it ends."""
        await self._close()

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
        owned: Owned = []  # in partition order
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
        writer = self._writer
        started = time.perf_counter()
        try:
            async with self._engine.begin() as connection:
                await writer.write(connection, owned)
        except StaleBatchError as exc:
            self.stale_batches += 1
            log.warning("%s; rolled the batch back and seeking to the stored offsets", exc)
            await self._seek_to_stored(sorted(self._positions, key=lambda tp: tp.partition))
            return
        for tp, _, _, end in owned:
            if tp in self._positions:
                self._positions[tp] = end
        # Counted only now that the batch has committed.
        self.projected += writer.projected
        self.dead += writer.dead
        elapsed = time.perf_counter() - started
        self.batches += 1
        self.batch_seconds += elapsed
        size = sum(len(records) for _, records, _, _ in owned)
        metrics.observe_batch(self.topic, self.projection, size, elapsed, writer.projected, writer.dead)
        log.debug("applied %d records of %d partitions in %.1f ms", size, len(owned), elapsed * 1000)
        if writer.dead:
            # One line a batch, not one a record: a burst of garbage must not flood the log.
            log.warning(
                "%d records of this batch went to the dead letters (the first at %s)",
                writer.dead,
                writer.first_dead,
            )


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Seeks newly assigned partitions to their stored offsets; lets a running batch finish first."""

    def __init__(self, projector: Projector) -> None:
        self._projector = projector

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self._projector._applying:
            self._projector._forget(list(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        # aiokafka only logs a listener's failure: a partition that never got its stored offset
        # would then be skipped for good. Keep trying until the database answers, or until told to
        # stop: the consumer's stop() waits for this listener, so a loop deaf to it never ends.
        projector = self._projector
        await retry_until_stopped(
            lambda: projector._seek_to_stored(list(assigned)),
            projector._halt,
            doing="reading the stored offsets of new partitions",
            errors=DATABASE_ERRORS,
            log=log,
            secrets=projector._secrets,
        )
