"""The usage consumer's lifecycle and loop: its own group on the topic, a transaction per batch, recovery."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy import text

from runevents.bus.clients import DEFAULT_SESSION_TIMEOUT_MS, group_member_options, start_fully
from runevents.bus.names import DEFAULT_TOPIC
from runevents.bus.projector.offsets import Positions, RebalanceListener, StaleBatchError
from runevents.bus.stopping import STOP_TIMEOUT_S, Batch, StoppableLoop, close_together, leave_group
from runevents.crypto.keyring import KeyWrapper
from runevents.names import check_identifier, check_topic
from runevents.tables import migrate
from runevents.tables.keys import DEFAULT_KEY_SCHEMA, ThreadKeys
from runevents.tables.sql import engine_for
from runevents.usage import telemetry
from runevents.usage.batch import Applied, UsageBatchWriter
from runevents.usage.offsets import USAGE_OFFSETS

log = logging.getLogger(__name__)

DEFAULT_GROUP: Final = "runevents-usage"


class UsageConsumer:
    """Reads the topic in its own consumer group and keeps token usage per call in PostgreSQL."""

    def __init__(
        self,
        bootstrap_servers: str,
        database_url: str,
        *,
        topic: str = DEFAULT_TOPIC,
        group: str = DEFAULT_GROUP,
        schema: str | None = None,
        max_batch: int = 5000,
        consumer_options: dict[str, Any] | None = None,
        client_options: dict[str, Any] | None = None,
        export_spans: bool = False,
        stop_timeout_s: float = STOP_TIMEOUT_S,
        keyring: KeyWrapper | None = None,
        key_schema: str = DEFAULT_KEY_SCHEMA,
    ) -> None:
        """`export_spans`: an OpenTelemetry GenAI span of each call kept, once its batch commits;
        `stop_timeout_s`: how long a stop may take, whatever the broker and the database answer;
        `keyring`: the KEKs that open sealed records (without one, a sealed record stops the consumer)."""
        # Names first: a refused one leaves nothing opened.
        self.topic = check_topic(topic)
        if not group or len(group) > 255:
            raise ValueError(f"a usage group is 1 to 255 characters, got {len(group)}")
        self.group = group
        self._schema = None if schema is None else check_identifier("schema", schema)
        self._bootstrap_servers = bootstrap_servers
        self._max_batch = max_batch
        self._export_spans = export_spans
        self._options = {
            **group_member_options(DEFAULT_SESSION_TIMEOUT_MS),
            **(client_options or {}),
            **(consumer_options or {}),
        }
        self._engine = engine_for(database_url, schema=schema, pool_size=2)
        self._secrets = (self._engine.url.password,)
        keys = None if keyring is None else ThreadKeys(self._engine, keyring, schema=key_schema)
        self._writer = UsageBatchWriter(topic=topic, group=group, schema=schema, keys=keys)
        self._positions = Positions(
            self._engine, topic=topic, projection=group, secrets=self._secrets, offsets=USAGE_OFFSETS
        )
        self._consumer: AIOKafkaConsumer | None = None
        self._stop_timeout_s = stop_timeout_s
        # The loop of the current run; every retry loop ends on its `halt`.
        self._consuming = StoppableLoop(stop_timeout_s, log, max_records=max_batch)
        # What committed batches did, since start.
        self.applied = Applied()
        self.batches = 0
        self.stale_batches = 0

    @property
    def assignment(self) -> set[TopicPartition]:
        """The partitions this consumer owns now."""
        return set(self._positions.next_offsets)

    async def check_database(self) -> None:
        """Raise unless the database answers a query."""
        async with self._engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def check_tables(self) -> None:
        """Raise `SchemaOutdatedError`, naming the command that fixes it, unless the tables are at head."""
        async with self._engine.connect() as connection:
            await migrate.check_schema(connection, schema=self._schema)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Keep usage until `stop` is set (or the task is cancelled), then leave within the stop timeout."""
        self._consuming = StoppableLoop(self._stop_timeout_s, log, max_records=self._max_batch)
        await self._consuming.run(stop, self._start, self._apply_or_recover, self._close)

    async def _start(self) -> AIOKafkaConsumer:
        # Before joining the group: tables never migrated are a setting to fix, and a consumer that
        # joined would take partitions from healthy ones and apply nothing.
        await self.check_tables()
        consumer = AIOKafkaConsumer(
            group_id=self.group,
            bootstrap_servers=self._bootstrap_servers,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 * 1024 * 1024,
            # Nobody waits on usage: a longer fetch wait than the projector's costs nothing.
            fetch_max_wait_ms=200,
            **self._options,
        )
        self._consumer = consumer
        await start_fully(consumer.start)
        listener = RebalanceListener(self._positions, consumer, halt=self._consuming.halt)
        consumer.subscribe([self.topic], listener=listener)
        return consumer

    async def _apply_or_recover(self, batch: Batch) -> None:
        assert self._consumer is not None
        await self._positions.apply_or_read_again(
            self._consumer, lambda: self._apply(batch), self._consuming.halt, log
        )

    async def _apply(self, batch: Batch) -> None:
        consumer = self._consumer
        assert consumer is not None
        positions = self._positions
        if not await positions.placed(consumer, batch):
            return
        owned = positions.unapplied(batch)
        if not owned:
            return
        started = time.perf_counter()
        try:
            applied = await self._writer.write(self._engine, owned)
        except StaleBatchError as error:
            self.stale_batches += 1
            log.warning("%s; rolled the batch back and seeking to the stored offsets", error)
            await positions.seek_back(consumer)
            return
        positions.advance(owned)
        self.applied.add(applied)
        if self._export_spans:
            telemetry.export_calls(applied.rows)
        self.batches += 1
        size = sum(len(records) for _, records, _, _ in owned)
        elapsed_ms = (time.perf_counter() - started) * 1e3
        log.debug("usage: %d records, %d calls in %.1f ms", size, applied.calls, elapsed_ms)
        if applied.undecodable or applied.bad_usage:
            # One line a batch, not one a record: a burst of garbage must not flood the log.
            log.warning(
                "usage: %d undecodable records skipped and %d calls of unusable usage in this batch "
                "(the first: %s)",
                applied.undecodable,
                applied.bad_usage,
                applied.first_problem,
            )

    async def close(self) -> None:
        """Leave the group and release the database pool, in the stop timeout; run() does this as it ends."""
        await self._close(time.monotonic() + self._stop_timeout_s)

    async def _close(self, deadline: float) -> None:
        steps: dict[str, Coroutine[Any, Any, None]] = {}
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            # Mid-rebalance, stop() first sees the rebalance through: given up on at `deadline`.
            steps["leaving the group"] = leave_group(consumer)
        steps["closing the database pool"] = self._engine.dispose()
        await close_together(steps, deadline, timeout_s=self._stop_timeout_s, log=log)
