"""The stored offsets of a projection: sought to on assignment, and moved by each batch behind a fence.

Kafka's own committed offsets are never used: each partition's next offset is a row of
`projection_offsets`, moved in the transaction that applies the batch, and only if it is still where
the batch began (a consumer that lost its partition in a rebalance cannot write a stale batch). The
usage consumer keeps its offsets by the same rule, in a table of its own (`OffsetTable`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord
from sqlalchemy import BigInteger, Integer, Table, Text, bindparam, select, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from runevents.bus.names import NOTIFY_CHANNEL
from runevents.retrying import RETRY_FIRST_S, one_line, pause, retry_until_stopped
from runevents.tables import writes
from runevents.tables.failures import DATABASE_ERRORS
from runevents.tables.schema import projection_offsets

log = logging.getLogger(__name__)

# One partition of a batch: (partition, its records not yet applied, where it starts, where it ends).
Owned = list[tuple[TopicPartition, list[ConsumerRecord], int, int]]

# A NOTIFY payload must stay under 8000 bytes; a batch over many partitions is told in several.
_NOTIFY_LIMIT: Final = 7000


@dataclass(frozen=True)
class OffsetTable:
    """Where one kind of consumer keeps its stored offsets: a row a partition, under the consumer's name."""

    table: Table
    # The column of the consumer's name (a projection's, a usage group's).
    owner: str
    # What log lines and errors call the consumer.
    kind: str
    # Whether a batch's move is told (NOTIFY, on commit) to the writers waiting for their records.
    notify: bool


PROJECTION_OFFSETS: Final = OffsetTable(projection_offsets, "projection", "projection", notify=True)


def notifications(
    schema: str | None, projection: str, topic: str, reached: list[tuple[int, int]]
) -> list[str]:
    """NOTIFY payloads saying how far a projection got: `schema TAB projection TAB topic TAB p:o,p:o`."""
    return told_in_payloads(schema, projection, topic, [f"{partition}:{end}" for partition, end in reached])


def told_in_payloads(schema: str | None, projection: str, topic: str, parts: list[str]) -> list[str]:
    """`schema TAB projection TAB topic TAB part,part,...` payloads, as many as keep each under the limit."""
    head = "\t".join((schema or "", projection, topic)) + "\t"
    payloads: list[str] = []
    taken: list[str] = []
    size = len(head)
    for part in parts:
        if taken and size + len(part) + 1 > _NOTIFY_LIMIT:
            payloads.append(head + ",".join(taken))
            taken, size = [], len(head)
        taken.append(part)
        size += len(part) + 1
    if taken:
        payloads.append(head + ",".join(taken))
    return payloads


class StaleBatchError(Exception):
    """The stored offset of a partition moved since this projector read it: another one owns it now."""


class Fence:
    """The statement that moves a batch's stored offsets, and only those still where the batch began."""

    def __init__(
        self,
        *,
        topic: str,
        projection: str,
        schema: str | None,
        offsets: OffsetTable = PROJECTION_OFFSETS,
    ) -> None:
        self.topic = topic
        self.projection = projection
        self._schema = schema
        self._offsets = offsets
        table = writes.qualified(offsets.table, schema)
        # One statement a batch for the fence: lock the partitions' offset rows in partition order (two
        # consumers sharing partitions for a moment, in a rebalance, queue on them instead of
        # deadlocking; the update only touches rows locked first), move those still at the batch's
        # start, and, where writers wait, queue the NOTIFY that tells them (delivered only on commit).
        locked = (
            "WITH locked AS MATERIALIZED ("
            f"SELECT partition FROM {table} WHERE {offsets.owner} = :owner AND topic = :topic "
            "AND partition = ANY(:partitions) ORDER BY partition FOR UPDATE)"
        )
        move = (
            f"UPDATE {table} AS o SET next_offset = v.next_offset "
            "FROM unnest(:partitions, :starts, :ends) AS v(partition, start, next_offset) "
            f"WHERE o.{offsets.owner} = :owner AND o.topic = :topic AND o.partition = v.partition "
            "AND o.next_offset = v.start AND o.partition IN (SELECT partition FROM locked) "
            "RETURNING o.partition"
        )
        arrays = [
            bindparam("partitions", type_=postgresql.ARRAY(Integer)),
            bindparam("starts", type_=postgresql.ARRAY(BigInteger)),
            bindparam("ends", type_=postgresql.ARRAY(BigInteger)),
        ]
        if offsets.notify:
            self._sql = text(
                f"{locked}, moved AS ({move}), "
                "told AS (SELECT count(pg_notify(:channel, payload)) AS sent "
                "FROM unnest(:payloads) AS payload) "
                "SELECT moved.partition FROM moved, told"
            ).bindparams(*arrays, bindparam("payloads", type_=postgresql.ARRAY(Text)))
        else:
            self._sql = text(f"{locked} {move}").bindparams(*arrays)

    async def move(self, connection: AsyncConnection, owned: Owned) -> None:
        """Move every partition's stored offset from its start to its end, or raise if one has moved."""
        partitions = [tp.partition for tp, _, _, _ in owned]
        values: dict[str, Any] = {
            "owner": self.projection,
            "topic": self.topic,
            "partitions": partitions,
            "starts": [start for _, _, start, _ in owned],
            "ends": [end for _, _, _, end in owned],
        }
        if self._offsets.notify:
            reached = [(tp.partition, end) for tp, _, _, end in owned]
            values["channel"] = NOTIFY_CHANNEL
            values["payloads"] = notifications(self._schema, self.projection, self.topic, reached)
        # Through SQLAlchemy, as the transaction's first statement: its asyncpg adapter issues BEGIN
        # only then, and what ran on the raw connection before it would commit on its own.
        moved = await connection.execute(self._sql, values)
        fenced = {row[0] for row in moved}
        if len(fenced) != len(owned):
            stale = sorted(set(partitions) - fenced)
            starts = {tp.partition: start for tp, _, start, _ in owned}
            raise StaleBatchError(
                f"partition {stale[0]} of {self.topic!r} is no longer at offset {starts[stale[0]]} "
                f"in {self._offsets.kind} {self.projection!r}"
            )


class Positions:
    """Where each owned partition's stored offset stands, as this consumer last read or wrote it."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        topic: str,
        projection: str,
        secrets: tuple[str | None, ...] = (),
        offsets: OffsetTable = PROJECTION_OFFSETS,
    ) -> None:
        """`projection`: the consumer's name in `offsets` (a usage group's, there); `secrets`: masked out
        of every warning."""
        self._engine = engine
        self.topic = topic
        self.projection = projection
        self.secrets = secrets
        self._offsets = offsets
        self.next_offsets: dict[TopicPartition, int] = {}
        # Held while a batch is applied, so a revocation waits for the batch to commit or roll back.
        self.applying = asyncio.Lock()

    async def seek_to_stored(self, consumer: AIOKafkaConsumer, partitions: Sequence[TopicPartition]) -> None:
        """Read (creating at 0 if new) the stored offsets of `partitions` and seek the consumer to them."""
        if not partitions:
            return
        numbers = [tp.partition for tp in partitions]
        table, owner = self._offsets.table, self._offsets.owner
        async with self._engine.begin() as connection:
            rows = [
                {owner: self.projection, "topic": self.topic, "partition": n, "next_offset": 0}
                for n in numbers
            ]
            await connection.execute(postgresql.insert(table).values(rows).on_conflict_do_nothing())
            stored = dict(
                (
                    await connection.execute(
                        select(table.c.partition, table.c.next_offset).where(
                            table.c[owner] == self.projection,
                            table.c.topic == self.topic,
                            table.c.partition.in_(numbers),
                        )
                    )
                ).all()
            )
        for tp in partitions:
            self.next_offsets[tp] = stored[tp.partition]
            consumer.seek(tp, stored[tp.partition])
        log.info(
            "%s %r of %r: at %s (partition: next offset)",
            self._offsets.kind,
            self.projection,
            self.topic,
            {tp.partition: stored[tp.partition] for tp in partitions},
        )

    async def placed(
        self, consumer: AIOKafkaConsumer, batch: dict[TopicPartition, list[ConsumerRecord]]
    ) -> bool:
        """Whether every partition of `batch` has its stored offset read; if not, read those and seek
        every partition of the batch back to its stored offset, so the batch is read again whole."""
        unplaced = [tp for tp in batch if tp not in self.next_offsets and tp in consumer.assignment()]
        if not unplaced:
            return True
        # Assigned, but its stored offset was never read (the rebalance listener still retrying a
        # database that does not answer, while the client fetched the partition from its start): read
        # it and fetch from there. Nothing of this batch is applied, so its other partitions are read
        # again from their stored offsets too: left where the fetch took them, their records in this
        # batch would be skipped, and the next batch's fence would move past them.
        await self.seek_to_stored(consumer, unplaced)
        for tp in batch:
            if tp not in unplaced and tp in self.next_offsets:
                consumer.seek(tp, self.next_offsets[tp])
        return False

    async def seek_back(self, consumer: AIOKafkaConsumer) -> None:
        """Seek every owned partition to its stored offset again, after a batch that did not commit."""
        await self.seek_to_stored(consumer, sorted(self.next_offsets, key=lambda tp: tp.partition))

    async def apply_or_read_again(
        self,
        consumer: AIOKafkaConsumer,
        apply: Callable[[], Coroutine[Any, Any, None]],
        halt: asyncio.Event,
        log: logging.Logger,
    ) -> None:
        """Apply a batch (`apply`) holding `applying`; if the database fails it, read it again from the
        stored offsets, retrying until the database answers or `halt` is set."""
        try:
            async with self.applying:
                await apply()
        except DATABASE_ERRORS as error:
            # Rolled back: nothing of it is stored, so it is read again from the stored offsets once
            # the database answers (a restart, a killed connection).
            log.warning(
                "a batch failed and was rolled back (%s); reading again from the stored offsets",
                one_line(error, *self.secrets),
            )
        else:
            return
        if await pause(halt, RETRY_FIRST_S):
            return

        async def seek_back() -> None:
            async with self.applying:
                await self.seek_back(consumer)

        await retry_until_stopped(
            seek_back,
            halt,
            doing="reading the stored offsets again",
            errors=DATABASE_ERRORS,
            log=log,
            secrets=self.secrets,
        )

    def forget(self, partitions: Sequence[TopicPartition]) -> None:
        """Drop `partitions` from the owned ones (revoked)."""
        for tp in partitions:
            self.next_offsets.pop(tp, None)
        if partitions:
            log.info(
                "%s %r of %r: gave up partitions %s",
                self._offsets.kind,
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
                if fresh[0].offset > start:
                    # Legitimate only where the log lost records (its start cut by topic retention):
                    # said, since the fence moves over them.
                    log.warning(
                        "%s %r of %r: partition %d has no records %d-%d; applying from %d",
                        self._offsets.kind,
                        self.projection,
                        self.topic,
                        tp.partition,
                        start,
                        fresh[0].offset - 1,
                        fresh[0].offset,
                    )
                owned.append((tp, fresh, start, fresh[-1].offset + 1))
        return owned

    def advance(self, owned: Owned) -> None:
        """Move the partitions still owned to where the committed batch `owned` ended."""
        for tp, _, _, end in owned:
            if tp in self.next_offsets:
                self.next_offsets[tp] = end


class RebalanceListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Seeks newly assigned partitions to their stored offsets; lets a running batch finish first."""

    def __init__(self, positions: Positions, consumer: AIOKafkaConsumer, *, halt: asyncio.Event) -> None:
        self._positions = positions
        self._consumer = consumer
        self._halt = halt

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self._positions.applying:
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
            secrets=self._positions.secrets,
        )
