"""The projector's lifecycle and consume loop: start, fetch, apply each batch, recover, stop."""

from __future__ import annotations

import asyncio
import logging
import shlex
import time
from collections.abc import Coroutine, Sequence
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord
from sqlalchemy import text

from runevents import metrics
from runevents.bus.names import DEFAULT_PROJECTION, DEFAULT_TOPIC
from runevents.bus.projector.batch import BatchWriter, prune_results
from runevents.bus.projector.dead_letters import DeadLetters
from runevents.bus.projector.offsets import Positions, RebalanceListener, StaleBatchError
from runevents.bus.topic import TopicMissingError
from runevents.errors import RunEventsError, SchemaOutdatedError
from runevents.masking import mask_secrets
from runevents.names import check_identifier, check_topic
from runevents.retrying import (
    CANCEL_GRACE_S,
    RETRY_FIRST_S,
    Stopped,
    one_line,
    pause,
    retry_until_stopped,
    unless_stopped,
)
from runevents.tables import migrate
from runevents.tables.failures import DATABASE_ERRORS
from runevents.tables.sql import engine_for

log = logging.getLogger(__name__)

PRUNE_EVERY_S: Final = 60
# How long a stop may take: the batch in hand gets half of it (and a quarter more to roll back), then
# leaving the group and closing the pool the rest.
STOP_TIMEOUT_S: Final = 15.0
# What closing gets even past the stop timeout: an idle pool or a stopped client needs only a moment.
CLOSE_AT_LEAST_S: Final = 0.2


# A writer waits for its record to be projected: a fetch must not sit out a long poll. (Tansu
# answers a fetch only when this wait expires, even when records are there.) 5 ms measured no better
# for puts than 20 (p50 wait 6.5-7.0 ms against 6.3-10.5 for one writer, 1.2-1.3k puts/s against
# 1.3-2.1k for 64), and idle it fetches 4 times as often.
FETCH_MAX_WAIT_MS: Final = 20


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
        stop_timeout_s: float = STOP_TIMEOUT_S,
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
        self._dead_letters = DeadLetters(
            topic=topic,
            projection=projection,
            bootstrap_servers=bootstrap_servers,
            client_options=self._client_options,
        )
        self._writer = BatchWriter(
            topic=topic,
            projection=projection,
            schema=schema,
            max_trace_content=max_trace_content,
            dead_letters=self._dead_letters,
        )
        self._positions = Positions(self._engine, topic=topic, projection=projection)
        # Held while a batch is applied, so a revocation waits for the batch to commit or roll back.
        self._applying = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        # Set once the projector is told to stop (or cancelled): every retry loop ends on it.
        self._halt = asyncio.Event()
        # A stop ends within this, whatever the broker and the database do (or do not) answer.
        self._stop_timeout_s = stop_timeout_s
        self._stopped_at: float | None = None
        self.projected = 0
        self.dead = 0
        self.stale_batches = 0
        # Committed batches and the seconds spent applying them (decode, write, commit).
        self.batches = 0
        self.batch_seconds = 0.0

    @property
    def assignment(self) -> set[TopicPartition]:
        """The partitions this projector owns now."""
        return set(self._positions.next_offsets)

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
            for tp, next_offset in self._positions.next_offsets.items()
        }

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Project until `stop` is set (or the task is cancelled), then leave within the stop timeout."""
        halt = self._halt = asyncio.Event()
        self._stopped_at = None
        # The retry loops (the rebalance listener's among them, which runs in the Kafka client's own
        # task) wait on `halt`: set by `stop`, and by leaving here for any reason, cancellation included.
        relay = asyncio.ensure_future((stop or asyncio.Event()).wait())
        relay.add_done_callback(lambda _: self._begin_stop())
        # What the loop awaits (a fetch, the batch in hand) is raced against this, so a stop is seen
        # at once, and nothing it awaits can hold the stop up for longer than the stop timeout.
        halted = asyncio.ensure_future(halt.wait())
        try:
            try:
                await unless_stopped(self._start(), halt)
            except Stopped:
                return  # told to stop while starting: nothing was applied
            consumer = self._consumer
            assert consumer is not None
            pruned = time.monotonic()
            while not halt.is_set():
                batch = await self._fetch(consumer, halted)
                if batch and not halt.is_set():
                    await self._finish_in_time(self._apply_or_recover(batch), halted)
                if time.monotonic() - pruned > PRUNE_EVERY_S:
                    await self._finish_in_time(prune_results(self._engine), halted)
                    pruned = time.monotonic()
        finally:
            self._begin_stop()
            relay.cancel()
            halted.cancel()
            # What did start (the dead-letter producer, say) is not left open.
            await self._close(time.monotonic() + self._stop_left(1.0))

    def _begin_stop(self) -> None:
        """Set `halt`, and start the stop timeout's clock (once)."""
        if self._stopped_at is None:
            self._stopped_at = time.monotonic()
        self._halt.set()

    def _stop_left(self, share: float) -> float:
        """Seconds until `share` of the stop timeout has passed since the stop began (all of it, before)."""
        if self._stopped_at is None:
            return share * self._stop_timeout_s
        return max(self._stopped_at + share * self._stop_timeout_s - time.monotonic(), 0.0)

    async def _fetch(
        self, consumer: AIOKafkaConsumer, halted: asyncio.Future[Any]
    ) -> dict[TopicPartition, list[ConsumerRecord]]:
        """The next fetched batch (maybe empty), or nothing once halted."""
        # getmany's timeout does not hold while the group rebalances: it waits for the new assignment,
        # which a broker can keep back for its rebalance timeout and more (seen for 60 s and longer).
        fetching = asyncio.ensure_future(consumer.getmany(timeout_ms=100, max_records=self._max_batch))
        try:
            await asyncio.wait((fetching, halted), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not fetching.done():
                # Cancelled where it waits: no record is taken from the client's buffer and dropped.
                fetching.cancel()
                await asyncio.wait((fetching,), timeout=CANCEL_GRACE_S)
        if fetching.cancelled() or not fetching.done():
            return {}
        batch: dict[TopicPartition, list[ConsumerRecord]] = fetching.result()
        return batch

    async def _finish_in_time(self, work: Coroutine[Any, Any, None], halted: asyncio.Future[Any]) -> None:
        """Await `work` (the batch in hand); once halted, at most half the stop timeout, then cancel it."""
        applying = asyncio.ensure_future(work)
        try:
            await asyncio.wait((applying, halted), return_when=asyncio.FIRST_COMPLETED)
            if not applying.done():
                await asyncio.wait((applying,), timeout=self._stop_left(0.5))
        finally:
            if not applying.done():
                # Safe: the batch's offsets move in its own transaction, so none of it is stored, and
                # whoever owns its partitions next reads it again (a second copy would be skipped).
                applying.cancel()
                stopping = self._stopped_at is not None
                # A rollback waits for a database that does not answer: not past three quarters.
                await asyncio.wait((applying,), timeout=self._stop_left(0.75) if stopping else CANCEL_GRACE_S)
                if stopping:
                    log.warning("the batch in hand did not commit in time after the stop: rolled back")
        if applying.done() and not applying.cancelled():
            applying.result()

    async def _apply_or_recover(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        try:
            async with self._applying:
                await self._apply(batch)
        except DATABASE_ERRORS as exc:
            # Rolled back: nothing of it is stored, so it is read again from the stored offsets once
            # the database answers (a restart, a killed connection).
            await self._recover(exc)

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
                assert self._consumer is not None
                await self._positions.seek_back(self._consumer)

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
            "fetch_max_wait_ms": FETCH_MAX_WAIT_MS,
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
        await self._dead_letters.start()
        if self._partitions is None:
            listener = RebalanceListener(
                self._positions, consumer, applying=self._applying, halt=self._halt, secrets=self._secrets
            )
            consumer.subscribe([self.topic], listener=listener)
        else:
            owned = [TopicPartition(self.topic, partition) for partition in self._partitions]
            consumer.assign(owned)
            await self._positions.seek_to_stored(consumer, owned)

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

    async def close(self) -> None:
        """Release the clients and the database pool the projector holds; run() does this as it ends."""
        await self._close(time.monotonic() + self._stop_timeout_s)

    async def _close(self, deadline: float) -> None:
        """Leave the group, stop the dead-letter producer and close the pool, together, by `deadline`."""
        closing: dict[asyncio.Future[None], str] = {}
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            # Mid-rebalance, stop() first sees the rebalance through (JoinGroup, SyncGroup): as long as
            # the broker takes to answer, which is not ours to bound but for giving up on it.
            closing[asyncio.ensure_future(consumer.stop())] = "leaving the group"
        closing[asyncio.ensure_future(self._dead_letters.stop())] = "stopping the dead-letter producer"
        closing[asyncio.ensure_future(self._engine.dispose())] = "closing the database pool"
        try:
            left = max(deadline - time.monotonic(), CLOSE_AT_LEAST_S)
            done, late = await asyncio.wait(closing, timeout=left)
        finally:
            for task in closing:
                task.cancel()
        if late:
            await asyncio.wait(late, timeout=CLOSE_AT_LEAST_S)  # to unwind; not waited for past that
            # Given up: the group moves this projector's partitions once its session expires, and the
            # database ends its connections (and rolls back what they held) when the process exits.
            log.warning(
                "gave up %s: not done within the stop timeout (%g s)",
                " and ".join(sorted(closing[task] for task in late)),
                self._stop_timeout_s,
            )
        for task in done:
            task.result()

    async def _apply(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        """Apply one fetched batch in one transaction; on a stale offset, roll back and seek again."""
        consumer = self._consumer
        assert consumer is not None
        positions = self._positions
        unplaced = [tp for tp in batch if tp not in positions.next_offsets and tp in consumer.assignment()]
        if unplaced:
            # Assigned, but its stored offset was never read: read it and fetch from there.
            await positions.seek_to_stored(consumer, unplaced)
            return
        owned = positions.unapplied(batch)
        if not owned:
            return
        writer = self._writer
        started = time.perf_counter()
        try:
            await writer.write(self._engine, owned)
        except StaleBatchError as exc:
            self.stale_batches += 1
            log.warning("%s; rolled the batch back and seeking to the stored offsets", exc)
            await positions.seek_back(consumer)
            return
        positions.advance(owned)
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
