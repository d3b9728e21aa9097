"""One fetched batch written to the read tables in one transaction: the fence, puts, ops, dead letters.

The fence moves each partition's stored offset from where the batch starts to where it ends, and
only if it is still at the start; puts of all partitions go in together, each op after everything
before it in its partition (log order is the order of effects), and undecodable records go to the
dead-letter topic and table. The projector owns the transaction, the consumer and the positions.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

import orjson
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord
from sqlalchemy import BigInteger, Integer, Text, bindparam, select, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from runevents.bus.names import NOTIFY_CHANNEL
from runevents.bus.topic import dead_letter_topic
from runevents.events import (
    PUT_IF_ABSENT,
    DeleteRunEnvelope,
    DeleteThreadEnvelope,
    PreparedEvent,
    UndecodableRecordError,
    decode_record,
)
from runevents.tables import writes
from runevents.tables.schema import dead_letters, op_results, projection_offsets

# One partition of a batch: (partition, its records not yet applied, where it starts, where it ends).
Owned = list[tuple[TopicPartition, list[ConsumerRecord], int, int]]

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


class BatchWriter:
    """Writes fetched batches of one projection of a topic; counts what the last batch projected."""

    def __init__(
        self, *, topic: str, projection: str, schema: str | None, max_trace_content: int | None
    ) -> None:
        self.topic = topic
        self.projection = projection
        self._schema = schema
        self._max_trace_content = max_trace_content
        # Set by the projector once it has started it.
        self.dead_letters: AIOKafkaProducer | None = None
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
        # Of the last batch written: counted into the projector's totals only once it commits.
        self.projected = 0
        self.dead = 0
        self.first_dead: str | None = None

    async def write(self, connection: AsyncConnection, owned: Owned) -> None:
        """Fence, then apply every partition's records, in the caller's transaction."""
        self.projected = self.dead = 0
        self.first_dead = None
        await self._fence(connection, owned)
        # Partitions hold disjoint threads, so their puts go in together (one COPY); an op is
        # applied after everything before it in its partition, which is all log order asks.
        puts: list[PreparedEvent] = []
        for tp, records, _, _ in owned:
            await self._apply_partition(connection, tp, records, puts)
        await self._insert_puts(connection, puts)

    async def _fence(self, connection: AsyncConnection, owned: Owned) -> None:
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
            self.projected += len(fresh)

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
            self.projected += created
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
        assert self.dead_letters is not None
        await self.dead_letters.send_and_wait(
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
        self.dead += 1
        if self.first_dead is None:
            self.first_dead = f"{tp.topic}/{tp.partition}/{record.offset}: {reason}"
