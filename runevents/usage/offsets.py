"""The usage consumer's stored offsets: the projector's positions and fence, on a table of the usage group's.

The rule is the projector's (runevents/bus/projector/offsets.py): each partition's next offset is a row,
read and sought to on assignment, and moved in the transaction that writes the batch's usage rows,
only if it still is where the batch began. Kafka's committed offsets are never used. The rows live in
`token_usage_offsets`, keyed by the consumer group, so the projector's offsets are never touched.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy import BigInteger, Integer, bindparam, select, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from runevents.bus.projector.offsets import Owned, Positions, StaleBatchError
from runevents.tables import writes
from runevents.tables.schema import token_usage_offsets

log = logging.getLogger(__name__)
_o = token_usage_offsets.c


class UsagePositions(Positions):
    """Where each owned partition stands for one usage group; `projection` is the group's name here."""

    async def seek_to_stored(self, consumer: AIOKafkaConsumer, partitions: Sequence[TopicPartition]) -> None:
        """Read (creating at 0 if new) the group's stored offsets of `partitions` and seek to them."""
        if not partitions:
            return
        numbers = [tp.partition for tp in partitions]
        async with self._engine.begin() as connection:
            rows = [
                {"consumer_group": self.projection, "topic": self.topic, "partition": n, "next_offset": 0}
                for n in numbers
            ]
            await connection.execute(
                postgresql.insert(token_usage_offsets).values(rows).on_conflict_do_nothing()
            )
            found = await connection.execute(
                select(_o.partition, _o.next_offset).where(
                    _o.consumer_group == self.projection, _o.topic == self.topic, _o.partition.in_(numbers)
                )
            )
            stored: dict[int, int] = {row[0]: row[1] for row in found}
        for tp in partitions:
            self.next_offsets[tp] = stored[tp.partition]
            consumer.seek(tp, stored[tp.partition])
        log.info(
            "usage group %r of %r: at %s (partition: next offset)",
            self.projection,
            self.topic,
            {tp.partition: stored[tp.partition] for tp in partitions},
        )


class UsageFence:
    """The statement that moves a batch's stored offsets, and only those still where the batch began."""

    def __init__(self, *, topic: str, group: str, schema: str | None) -> None:
        self.topic = topic
        self.group = group
        offsets = writes.qualified(token_usage_offsets, schema)
        # As the projector's fence: lock the rows in partition order (two consumers sharing partitions
        # for a moment in a rebalance queue instead of deadlocking), move those still at the start.
        # No NOTIFY: nobody waits on usage.
        self._sql = text(
            "WITH locked AS MATERIALIZED ("
            f"SELECT partition FROM {offsets} WHERE consumer_group = :group AND topic = :topic "
            "AND partition = ANY(:partitions) ORDER BY partition FOR UPDATE) "
            f"UPDATE {offsets} AS o SET next_offset = v.next_offset "
            "FROM unnest(:partitions, :starts, :ends) AS v(partition, start, next_offset) "
            "WHERE o.consumer_group = :group AND o.topic = :topic AND o.partition = v.partition "
            "AND o.next_offset = v.start AND o.partition IN (SELECT partition FROM locked) "
            "RETURNING o.partition"
        ).bindparams(
            bindparam("partitions", type_=postgresql.ARRAY(Integer)),
            bindparam("starts", type_=postgresql.ARRAY(BigInteger)),
            bindparam("ends", type_=postgresql.ARRAY(BigInteger)),
        )

    async def move(self, connection: AsyncConnection, owned: Owned) -> None:
        """Move every partition's stored offset from its start to its end, or raise if one has moved."""
        partitions = [tp.partition for tp, _, _, _ in owned]
        moved = await connection.execute(
            self._sql,
            {
                "group": self.group,
                "topic": self.topic,
                "partitions": partitions,
                "starts": [start for _, _, start, _ in owned],
                "ends": [end for _, _, _, end in owned],
            },
        )
        fenced = {row[0] for row in moved}
        if len(fenced) != len(owned):
            stale = sorted(set(partitions) - fenced)
            starts = {tp.partition: start for tp, _, start, _ in owned}
            raise StaleBatchError(
                f"partition {stale[0]} of {self.topic!r} is no longer at offset {starts[stale[0]]} "
                f"for usage group {self.group!r}"
            )
