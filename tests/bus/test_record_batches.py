"""The producer's record batches: one a partition a publish, joined by publishes while it waits to be sent.

Joining is the fast path; a publish that cannot join starts a batch of its own, as every publish did
before. Either way each record must land where its `Published` says, with the key, value and headers
the plain encoding gives, and each publish's records of a partition must be in one batch, consecutive.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatch
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.events import make_event
from runevents.bus.producer import EventProducer, Published
from runevents.bus.record_batches import Outgoing, PartitionBatches, _Batch, framed_size, headers_size
from runevents.bus.topic import create_topic
from runevents.events import PUT, encode_put, headers_of, prepare_events

PARTITIONS = 3


class QueueOnly:
    """An aiokafka producer's batch side, without a broker: batches queue until `drain` builds them."""

    def __init__(self) -> None:
        self.queued: list[tuple[int, Any, asyncio.Future[Any]]] = []

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(PARTITIONS))

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> asyncio.Future[Any]:
        ack: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.queued.append((partition, batch, ack))
        return ack

    def drain(self) -> list[tuple[int, list[tuple[bytes | None, bytes | None]]]]:
        """Build every queued batch as the sender does; each one's partition and (key, value)s."""
        built = []
        for partition, batch, _ in self.queued:
            records = DefaultRecordBatch(bytes(batch._build()))
            built.append((partition, [(record.key, record.value) for record in records]))
        return built


def outgoing(call: int, count: int, threads: int = 7) -> list[Outgoing]:
    """`count` records of one publish, spread over `threads` threads, each value naming the call."""
    records: list[Outgoing] = []
    for n in range(count):
        thread = f"thread-{n % threads}"
        value = f"call {call} record {n} ".encode() + b"x" * 200
        key, headers = thread.encode(), headers_of(PUT, "e")
        size = framed_size(key, value, headers_size(headers))
        records.append((str(uuid.uuid4()), thread, key, value, headers, size))
    return records


async def place(batches: PartitionBatches, producer: QueueOnly, records: Sequence[Outgoing]) -> list[Any]:
    deadline = asyncio.get_running_loop().time() + 5
    return await batches.place(producer, records, [], deadline)


def assert_placed_where_built(
    calls: dict[int, list[Outgoing]], placements: dict[int, list[Any]], producer: QueueOnly
) -> None:
    """Each call's records of a partition are in one built batch, consecutive from their start."""
    built = {
        id(batch): records
        for (_, batch, _), (_, records) in zip(producer.queued, producer.drain(), strict=True)
    }
    acks = {id(ack): id(batch) for _, batch, ack in producer.queued}
    for call, placed in placements.items():
        assert sorted(index for where in placed for index in where.indexes) == list(range(len(calls[call])))
        for where in placed:
            records = built[acks[id(where.ack)]]
            for position, index in enumerate(where.indexes):
                _, _, key, value, _, _ = calls[call][index]
                assert records[where.start + position] == (key, value)


async def test_publishes_while_a_batch_waits_join_it_each_in_one_piece():
    producer, batches = QueueOnly(), PartitionBatches("t", max_batch_bytes=256 * 1024, compression="lz4")
    calls = {call: outgoing(call, 20 + call) for call in range(4)}
    placements = {call: await place(batches, producer, calls[call]) for call in calls}
    # The first call queued a batch a partition; the others joined them, nothing built in between.
    assert len(producer.queued) == PARTITIONS
    assert {where.start for where in placements[0]} == {0}
    assert all(where.start > 0 for call in (1, 2, 3) for where in placements[call])
    assert_placed_where_built(calls, placements, producer)


async def test_a_batch_the_sender_built_takes_no_more_and_the_next_publish_starts_its_own():
    producer, batches = QueueOnly(), PartitionBatches("t", max_batch_bytes=256 * 1024, compression=None)
    calls = {0: outgoing(0, 10)}
    placements = {0: await place(batches, producer, calls[0])}
    for _, batch, _ in producer.queued:
        batch._build()  # taken into a request
    calls[1] = outgoing(1, 10)
    placements[1] = await place(batches, producer, calls[1])
    assert len(producer.queued) == 2 * PARTITIONS
    assert {where.start for where in placements[1]} == {0}
    # An ack that came (or failed) ends joining too.
    for _, _, ack in producer.queued[PARTITIONS:]:
        ack.set_result(None)
    calls[2] = outgoing(2, 10)
    placements[2] = await place(batches, producer, calls[2])
    assert len(producer.queued) == 3 * PARTITIONS
    assert_placed_where_built(calls, placements, producer)


async def test_a_publish_that_does_not_fit_the_waiting_batch_starts_its_own():
    one = outgoing(0, 1, threads=1)[0]
    limit = 3 * one[5]
    producer, batches = QueueOnly(), PartitionBatches("t", max_batch_bytes=limit, compression=None)
    calls = {call: outgoing(call, 2, threads=1) for call in range(3)}
    placements = {0: await place(batches, producer, calls[0])}
    placements[1] = await place(batches, producer, calls[1])  # 4 would not fit in 3
    assert len(producer.queued) == 2
    placements[2] = await place(batches, producer, calls[2][:1])
    assert len(producer.queued) == 2, "a record that fits joins"
    calls[2] = calls[2][:1]
    assert_placed_where_built(calls, placements, producer)


async def test_an_idempotent_sender_taking_a_batch_closes_it_to_joiners():
    producer, batches = QueueOnly(), PartitionBatches("t", max_batch_bytes=256 * 1024, compression="lz4")
    await place(batches, producer, outgoing(0, 5, threads=1))
    ((_, batch, _),) = producer.queued
    # What aiokafka's accumulator does as it takes a batch of an idempotent producer: it numbers the
    # records it holds then; one appended afterwards would have no number.
    batch._set_producer_state(producer_id=7, producer_epoch=0, base_sequence=0)
    await place(batches, producer, outgoing(1, 5, threads=1))
    assert len(producer.queued) == 2
    assert len(producer.drain()[0][1]) == 5


# The fast path of compression: lz4 batches built uncompressed and compressed at LZ4's fast level, where
# aiokafka's builder compresses at level 9. A reader must find the same batch either way.
_RECORDS = st.lists(
    st.tuples(
        st.binary(max_size=20) | st.none(),
        st.binary(max_size=300) | st.text(max_size=400).map(str.encode) | st.just(b"abc" * 300),
        st.lists(st.tuples(st.sampled_from(["runevents-op", "é"]), st.binary(max_size=10)), max_size=3),
    ),
    min_size=1,
    max_size=40,
)


def _decoded(built: bytearray) -> tuple[Any, list[Any]]:
    batch = DefaultRecordBatch(bytes(built))
    assert batch.validate_crc()
    fields = (
        batch.base_offset,
        batch.magic,
        batch.is_transactional,
        batch.last_offset_delta,
        batch.first_timestamp,
        batch.max_timestamp,
        batch.producer_id,
        batch.producer_epoch,
        batch.base_sequence,
    )
    records = [(r.offset, r.timestamp, r.key, r.value, list(r.headers)) for r in batch]
    assert batch.compression_type == DefaultRecordBatch.CODEC_LZ4
    return fields, records


@settings(max_examples=300, deadline=None)
@given(records=_RECORDS, idempotent=st.booleans())
def test_a_fast_lz4_batch_reads_as_aiokafka_s_own_lz4_batch(records: list[Any], idempotent: bool):
    ours = _Batch(256 * 1024, DefaultRecordBatch.CODEC_LZ4)
    theirs = BatchBuilder(256 * 1024, DefaultRecordBatch.CODEC_LZ4)
    for builder in (ours, theirs):
        for n, (key, value, headers) in enumerate(records):
            assert builder.append(timestamp=1_700_000_000_000 + n, key=key, value=value, headers=headers)
        if idempotent:
            builder._set_producer_state(producer_id=42, producer_epoch=3, base_sequence=1000)
    assert _decoded(ours._build()) == _decoded(theirs._build())
    assert ours._build() is ours._build(), "built once, sent again as it is on a retry"


@pytest.mark.parametrize("compression", ["lz4", "gzip", None])
def test_other_codecs_are_aiokafka_s_own(compression: str | None):
    batches = PartitionBatches("t", max_batch_bytes=1024, compression=compression)
    batch = batches._new_batch()
    assert batch.append(timestamp=None, key=b"k", value=b"v" * 500, headers=[])
    expected = {"lz4": DefaultRecordBatch.CODEC_LZ4, "gzip": DefaultRecordBatch.CODEC_GZIP, None: 0}
    assert DefaultRecordBatch(bytes(batch._build())).compression_type == expected[compression]


async def consumed(kafka: str, topic: str) -> dict[tuple[int, int], Any]:
    """Every record of `topic` by (partition, offset)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        total = sum((await consumer.end_offsets(partitions)).values())
        records: dict[tuple[int, int], Any] = {}
        while len(records) < total:
            for tp, batch in (await consumer.getmany(timeout_ms=1000)).items():
                records.update({(tp.partition, record.offset): record for record in batch})
        return records
    finally:
        await consumer.stop()


async def test_concurrent_publishes_land_where_published_with_the_plain_encoding(kafka_bootstrap: str):
    topic = f"batches-{uuid.uuid4().hex[:12]}"
    assert await create_topic(kafka_bootstrap, topic, partitions=PARTITIONS)
    producer = EventProducer(kafka_bootstrap, topic=topic)
    sent: list[tuple[Any, Published]] = []

    async def publisher(number: int) -> None:
        for call in range(6):
            size = 1 + (number * 7 + call * 13) % 60
            events = [make_event(f"t{number}-{n % 9}", f"r{number}", n) for n in range(size)]
            prepared = prepare_events(events, max_trace_content=400)
            sent.extend(zip(prepared, await producer.publish_puts(prepared), strict=True))

    try:
        await asyncio.gather(*(publisher(number) for number in range(6)))
    finally:
        await producer.stop()
    records = consumed(kafka_bootstrap, topic)
    on_topic = await records
    assert len(on_topic) == len(sent)
    for event, published in sent:
        record = on_topic[(published.partition, published.offset)]
        assert (published.event_id, published.thread_id) == (event.event_id, event.thread_id)
        assert record.key == event.thread_id.encode()
        assert record.value == encode_put(event)
        assert list(record.headers) == headers_of(PUT, event.event_type)
