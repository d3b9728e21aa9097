"""The projector's lifecycle and consume loop: start, fetch, apply each batch, recover, stop."""

from __future__ import annotations

import asyncio
import logging
import shlex
import time
from collections.abc import Coroutine, Sequence
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy import text

from runevents import metrics
from runevents.bus.clients import DEFAULT_SESSION_TIMEOUT_MS, group_member_options, start_fully
from runevents.bus.names import DEFAULT_PROJECTION, DEFAULT_TOPIC
from runevents.bus.projector.batch import BatchWriter, prune_results
from runevents.bus.projector.dead_letters import DeadLetters
from runevents.bus.projector.offsets import Positions, RebalanceListener, StaleBatchError
from runevents.bus.stopping import STOP_TIMEOUT_S, Batch, StoppableLoop, close_together, leave_group
from runevents.bus.topic import TopicMissingError
from runevents.crypto.keyring import KeyWrapper
from runevents.errors import RunEventsError, SchemaOutdatedError
from runevents.masking import mask_secrets
from runevents.names import check_identifier, check_topic
from runevents.tables import migrate
from runevents.tables.keys import DEFAULT_KEY_SCHEMA, ThreadKeys
from runevents.tables.sql import engine_for

log = logging.getLogger(__name__)

PRUNE_EVERY_S: Final = 60

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
        keyring: KeyWrapper | None = None,
        key_schema: str = DEFAULT_KEY_SCHEMA,
    ) -> None:
        """`keyring`: the KEKs that unwrap the data keys of sealed records (runevents.crypto), kept in
        `key_schema` of the database; without one, a batch holding a sealed record stops the projector."""
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
            keys=None if keyring is None else ThreadKeys(self._engine, keyring, schema=key_schema),
        )
        self._positions = Positions(self._engine, topic=topic, projection=projection, secrets=self._secrets)
        self._consumer: AIOKafkaConsumer | None = None
        # A stop ends within this, whatever the broker and the database do (or do not) answer.
        self._stop_timeout_s = stop_timeout_s
        # The loop of the current run: its `halt` is set once told to stop (or cancelled), and every
        # retry loop ends on it.
        self._consuming = StoppableLoop(stop_timeout_s, log, max_records=max_batch)
        self._pruned = 0.0
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
        self._consuming = StoppableLoop(self._stop_timeout_s, log, max_records=self._max_batch)
        await self._consuming.run(
            stop, self._start, self._apply_or_recover, self._close, chores=self._prune_when_due
        )

    def _prune_when_due(self) -> Coroutine[Any, Any, None] | None:
        """Pruning old op results and tombstones, once every PRUNE_EVERY_S; None until it is due."""
        if time.monotonic() - self._pruned <= PRUNE_EVERY_S:
            return None
        return self._prune()

    async def _prune(self) -> None:
        await prune_results(self._engine)
        self._pruned = time.monotonic()

    async def _apply_or_recover(self, batch: Batch) -> None:
        assert self._consumer is not None
        await self._positions.apply_or_read_again(
            self._consumer, lambda: self._apply(batch), self._consuming.halt, log
        )

    async def _start(self) -> AIOKafkaConsumer:
        # Before any client starts: tables never migrated (or a wrong schema) are a setting to fix, and
        # a projector that joined the group would take partitions from healthy ones and apply nothing.
        await self.check_read_tables()
        options: dict[str, Any] = {
            "bootstrap_servers": self._bootstrap_servers,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "max_partition_fetch_bytes": 4 * 1024 * 1024,
            "fetch_max_wait_ms": FETCH_MAX_WAIT_MS,
            **group_member_options(DEFAULT_SESSION_TIMEOUT_MS),
            **self._client_options,
            **self._consumer_options,
        }
        if self._partitions is None:
            # Started, it has not joined the group yet: that takes the subscription below.
            consumer = AIOKafkaConsumer(group_id=self._group_id, **options)
            self._consumer = consumer
            await start_fully(consumer.start)
        else:
            consumer = AIOKafkaConsumer(**options)
            self._consumer = consumer
            await start_fully(consumer.start)
            await self._check_partitions(consumer, self._partitions)
        await self._dead_letters.start()
        if self._partitions is None:
            listener = RebalanceListener(self._positions, consumer, halt=self._consuming.halt)
            consumer.subscribe([self.topic], listener=listener)
        else:
            owned = [TopicPartition(self.topic, partition) for partition in self._partitions]
            consumer.assign(owned)
            await self._positions.seek_to_stored(consumer, owned)
        self._pruned = time.monotonic()
        return consumer

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
        steps: dict[str, Coroutine[Any, Any, None]] = {}
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            # Mid-rebalance, stop() first sees the rebalance through (JoinGroup, SyncGroup): as long as
            # the broker takes to answer, which is not ours to bound but for giving up on it.
            steps["leaving the group"] = leave_group(consumer)
        steps["stopping the dead-letter producer"] = self._dead_letters.stop()
        steps["closing the database pool"] = self._engine.dispose()
        await close_together(steps, deadline, timeout_s=self._stop_timeout_s, log=log)

    async def _apply(self, batch: Batch) -> None:
        """Apply one fetched batch in one transaction; on a stale offset, roll back and seek again."""
        consumer = self._consumer
        assert consumer is not None
        positions = self._positions
        if not await positions.placed(consumer, batch):
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
