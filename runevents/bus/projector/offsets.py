"""The stored offsets of a projection: sought to on assignment, and moved by each batch behind a fence.

Kafka's own committed offsets are never used: each partition's next offset is a row of
`projection_offsets`, moved in the transaction that applies the batch, and only if it is still where
the batch began (a consumer that lost its partition in a rebalance cannot write a stale batch).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Final

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord
from sqlalchemy import BigInteger, Integer, Text, bindparam, select, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from runevents.bus.names import NOTIFY_CHANNEL
from runevents.retrying import retry_until_stopped
from runevents.tables import writes
from runevents.tables.failures import DATABASE_ERRORS
from runevents.tables.schema import projection_offsets

log = logging.getLogger(__name__)

# One partition of a batch: (partition, its records not yet applied, where it starts, where it ends).
Owned = list[tuple[TopicPartition, list[ConsumerRecord], int, int]]

# A NOTIFY payload must stay under 8000 bytes; a batch over many partitions is told in several.
_NOTIFY_LIMIT: Final = 7000
_o = projection_offsets.c


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


class Fence:
    """The statement that moves a batch's stored offsets, and only those still where the batch began."""

    def __init__(self, *, topic: str, projection: str, schema: str | None) -> None:
        self.topic = topic
        self.projection = projection
        self._schema = schema
        offsets = writes.qualified(projection_offsets, schema)
        # One statement a batch for the fence: lock the partitions' offset rows in partition order (two
        # projectors sharing partitions for a moment, in a rebalance, queue on them instead of
        # deadlocking; the update only touches rows locked first), move those still at the batch's
        # start, and queue the NOTIFY that tells waiting writers (delivered only if the batch commits).
        self._sql = text(
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

    async def move(self, connection: AsyncConnection, owned: Owned) -> None:
        """Move every partition's stored offset from its start to its end, or raise if one has moved."""
        partitions = [tp.partition for tp, _, _, _ in owned]
        reached = [(tp.partition, end) for tp, _, _, end in owned]
        # Through SQLAlchemy, as the transaction's first statement: its asyncpg adapter issues BEGIN
        # only then, and what ran on the raw connection before it would commit on its own.
        moved = await connection.execute(
            self._sql,
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


class Positions:
    """Where each owned partition's stored offset stands, as this projector last read or wrote it."""

    def __init__(self, engine: AsyncEngine, *, topic: str, projection: str) -> None:
        self._engine = engine
        self.topic = topic
        self.projection = projection
        self.next_offsets: dict[TopicPartition, int] = {}

    async def seek_to_stored(self, consumer: AIOKafkaConsumer, partitions: Sequence[TopicPartition]) -> None:
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
        for tp in partitions:
            self.next_offsets[tp] = stored[tp.partition]
            consumer.seek(tp, stored[tp.partition])
        log.info(
            "projection %r of %r: at %s (partition: next offset)",
            self.projection,
            self.topic,
            {tp.partition: stored[tp.partition] for tp in partitions},
        )

    async def seek_back(self, consumer: AIOKafkaConsumer) -> None:
        """Seek every owned partition to its stored offset again, after a batch that did not commit."""
        await self.seek_to_stored(consumer, sorted(self.next_offsets, key=lambda tp: tp.partition))

    def forget(self, partitions: Sequence[TopicPartition]) -> None:
        """Drop `partitions` from the owned ones (revoked)."""
        for tp in partitions:
            self.next_offsets.pop(tp, None)
        if partitions:
            log.info(
                "projection %r of %r: gave up partitions %s",
                self.projection,
                self.topic,
                sorted(tp.partition for tp in partitions),
            )

    def unapplied(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> Owned:
        """The records of `batch` at or past each owned partition's stored offset, in partition order."""
        owned: Owned = []
        for tp, records in sorted(batch.items(), key=lambda item: item[0].partition):
            start = self.next_offsets.get(tp)
            if start is None:
                continue  # revoked while fetched
            fresh = [record for record in records if record.offset >= start]
            if fresh:
                owned.append((tp, fresh, start, fresh[-1].offset + 1))
        return owned

    def advance(self, owned: Owned) -> None:
        """Move the partitions still owned to where the committed batch `owned` ended."""
        for tp, _, _, end in owned:
            if tp in self.next_offsets:
                self.next_offsets[tp] = end


class RebalanceListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Seeks newly assigned partitions to their stored offsets; lets a running batch finish first."""

    def __init__(
        self,
        positions: Positions,
        consumer: AIOKafkaConsumer,
        *,
        applying: asyncio.Lock,
        halt: asyncio.Event,
        secrets: tuple[str | None, ...],
    ) -> None:
        self._positions = positions
        self._consumer = consumer
        # Held by the projector while a batch is applied.
        self._applying = applying
        self._halt = halt
        self._secrets = secrets

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self._applying:
            self._positions.forget(list(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        # aiokafka only logs a listener's failure: a partition that never got its stored offset
        # would then be skipped for good. Keep trying until the database answers, or until told to
        # stop: the consumer's stop() waits for this listener, so a loop deaf to it never ends.
        await retry_until_stopped(
            lambda: self._positions.seek_to_stored(self._consumer, list(assigned)),
            self._halt,
            doing="reading the stored offsets of new partitions",
            errors=DATABASE_ERRORS,
            log=log,
            secrets=self._secrets,
        )
