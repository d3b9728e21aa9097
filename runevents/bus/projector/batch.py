"""One fetched batch applied to the read tables in one transaction: the fence, puts, ops, dead letters.

The fence moves the partitions' stored offsets first; puts of all partitions go in together, each op
after everything before it in its partition (log order is the order of effects), and a record that
cannot be decoded goes to the dead letters. The projector owns the consumer and the positions.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Final

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from runevents.bus.names import SEQS_CHANNEL
from runevents.bus.projector.dead_letters import DeadLetters
from runevents.bus.projector.decoding import Op, data_keys, decode_consumer_record
from runevents.bus.projector.offsets import Fence, Owned, told_in_payloads
from runevents.crypto.sealing import DataKeys
from runevents.events import (
    PUT_IF_ABSENT,
    DeleteRunEnvelope,
    ExpireEnvelope,
    PreparedEvent,
    SetRetentionEnvelope,
    UndecodableRecordError,
)
from runevents.tables import writes
from runevents.tables.keys import ThreadKeys
from runevents.tables.schema import deleted_events, op_results

# Op results and tombstones serve writers waiting on them and retries of the same record: minutes.
RESULTS_KEPT_S: Final = 3600
# Batches of at most this many puts tell their seqs to the writers waiting (SEQS_CHANNEL): a few
# payloads. Larger ones are a backlog's, with few writers waiting on them, who read their seqs back.
SEQS_TOLD_MAX: Final = 400
_EVENT_ID: Final = writes.ROW_COLUMNS.index("event_id")
_SEQ: Final = writes.ROW_COLUMNS.index("seq")


def seq_notifications(
    schema: str | None, projection: str, topic: str, seqs: list[tuple[str, int]]
) -> list[str]:
    """SEQS_CHANNEL payloads telling the seq of each (event id, seq) written by a projection's batch."""
    return told_in_payloads(schema, projection, topic, [f"{event_id}:{seq}" for event_id, seq in seqs])


class BatchWriter:
    """Writes fetched batches of one projection of a topic; counts what the last batch projected."""

    def __init__(
        self,
        *,
        topic: str,
        projection: str,
        schema: str | None,
        max_trace_content: int | None,
        dead_letters: DeadLetters,
        keys: ThreadKeys | None = None,
    ) -> None:
        self.topic = topic
        self._keys = keys
        self.projection = projection
        self._schema = schema
        self._max_trace_content = max_trace_content
        self._dead_letters = dead_letters
        self._fence = Fence(topic=topic, projection=projection, schema=schema)
        # Stored, or stored and deleted since: either way, seen.
        self._dedupe_sql = writes.projected_seqs_sql(schema)
        # Of the last batch written: counted into the projector's totals only once it commits.
        self.projected = 0
        self.dead = 0
        self.first_dead: str | None = None

    async def write(self, engine: AsyncEngine, owned: Owned) -> None:
        """Fence, then apply every partition's records, in one transaction of its own."""
        self.projected = self.dead = 0
        self.first_dead = None
        async with engine.begin() as connection:
            await self._fence.move(connection, owned)
            keys = await data_keys(self._keys, connection, owned, self.topic)
            # Partitions hold disjoint threads, so their puts go in together (one COPY); an op is
            # applied after everything before it in its partition, which is all log order asks.
            puts: list[PreparedEvent] = []
            for tp, records, _, _ in owned:
                await self._apply_partition(connection, tp, records, puts, keys)
            await self._insert_puts(connection, puts)

    async def _apply_partition(
        self,
        connection: AsyncConnection,
        tp: TopicPartition,
        records: list[ConsumerRecord],
        puts: list[PreparedEvent],
        keys: DataKeys,
    ) -> None:
        """Decode a partition's records: puts join `puts`; ops and dead letters are applied in order."""
        for record in records:
            try:
                decoded = decode_consumer_record(record, max_trace_content=self._max_trace_content, keys=keys)
            except UndecodableRecordError as exc:
                await self._dead_letters.write(connection, tp, record, exc.reason)
                self.dead += 1
                if self.first_dead is None:
                    self.first_dead = f"{tp.topic}/{tp.partition}/{record.offset}: {exc.reason}"
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
            await writes.insert_events_postgresql(
                raw, fresh, self._schema, records=False, notices=self._seqs_told
            )
            self.projected += len(fresh)

    def _seqs_told(self, rows: list[tuple[Any, ...]]) -> list[tuple[str, str]]:
        """The (channel, payload) pairs telling waiting writers the seqs of a small batch's rows."""
        if len(rows) > SEQS_TOLD_MAX:
            return []
        seqs = [(row[_EVENT_ID], row[_SEQ]) for row in rows]
        told = seq_notifications(self._schema, self.projection, self.topic, seqs)
        return [(SEQS_CHANNEL, payload) for payload in told]

    async def _apply_op(self, connection: AsyncConnection, op: Op) -> None:
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
        elif isinstance(op, ExpireEnvelope):
            removed = await writes.delete_seqs(connection, op.thread_id, op.seqs)
            result |= {"op": op.op, "removed": removed}
        elif isinstance(op, SetRetentionEnvelope):
            await writes.set_retention(connection, op.thread_id, op.policy)
            result |= {"op": op.op}
        else:
            removed = await writes.delete_thread(connection, op.thread_id, tombstones=True)
            result |= {"op": op.op, "removed": removed}
        await connection.execute(op_results.insert().values(**result, applied_at=datetime.now(UTC)))


async def prune_results(engine: AsyncEngine) -> None:
    """Drop op results and tombstones old enough that no writer waits on them and no retry comes."""
    cutoff = datetime.now(UTC) - timedelta(seconds=RESULTS_KEPT_S)
    async with engine.begin() as connection:
        await connection.execute(delete(op_results).where(op_results.c.applied_at < cutoff))
        await connection.execute(delete(deleted_events).where(deleted_events.c.deleted_at < cutoff))
