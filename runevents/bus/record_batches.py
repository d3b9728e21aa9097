"""The producer's record batches: one a partition a publish, joined by the publishes that come while it waits.

A publish of many events sends the events of each partition in one record batch, so a thread's events of
the call reach the log all together or not at all. Handing a batch to aiokafka costs more than the
records in it: aiokafka queues one batch a partition, its sender takes one batch a partition into a
produce request and keeps one request a broker in flight, and encodes each request and decodes each
answer in pure Python. So a publish that finds the batch a publish before it queued for the partition
still waiting (not yet taken by the sender) appends its records to that batch, all of them, or starts a
batch of its own. Concurrent publishers then share a few larger batches, and each call still has the
records of a partition in one batch.

An lz4 batch is compressed at LZ4's fast level, not at the level 9 (LZ4HC) aiokafka uses: on batches of a
few dozen events level 9 costs four to six times the CPU for about 10% fewer bytes. Any lz4 reader
decodes both alike.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from aiokafka import AIOKafkaProducer
from aiokafka.codec import lz4_encode
from aiokafka.errors import KafkaTimeoutError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBase, DefaultRecordBatch
from aiokafka.record.util import calc_crc32c

# (event_id, thread_id, key, value, headers, framed size) of one record to send: the key is the thread id
# in UTF-8, the framed size `framed_size` of the record.
Outgoing = tuple[str, str, bytes, bytes, list[tuple[str, bytes]], int]

_PARTITIONER: Final = DefaultPartitioner()
# Threads whose partition is remembered; past that the memo starts again (it only saves hashing).
_PARTITIONS_CACHED: Final = 100_000
# The most a record adds in a batch beyond its key, value and header bytes: a varint of its length, of
# its timestamp and offset deltas, of the key and value lengths and the header count (5 or 10 bytes
# each), and two varints a header.
_RECORD_FRAMING: Final = 48
_HEADER_FRAMING: Final = 10

_CODECS: Final[dict[str | None, int]] = {
    None: DefaultRecordBatch.CODEC_NONE,
    "gzip": DefaultRecordBatch.CODEC_GZIP,
    "snappy": DefaultRecordBatch.CODEC_SNAPPY,
    "lz4": DefaultRecordBatch.CODEC_LZ4,
    "zstd": DefaultRecordBatch.CODEC_ZSTD,
}
_LZ4_FAST: Final = 0
_HEADER: Final = DefaultRecordBase.HEADER_STRUCT.size
_ATTRIBUTES: Final = struct.Struct(">h")
_LENGTH: Final = struct.Struct(">i")
_CRC: Final = struct.Struct(">I")


def headers_size(headers: Sequence[tuple[str, bytes]]) -> int:
    """At least the bytes `headers` take in a record of a batch."""
    return sum(_HEADER_FRAMING + len(name.encode()) + len(value) for name, value in headers)


def framed_size(key: bytes, value: bytes, headers_bytes: int) -> int:
    """At least the bytes a record takes in an uncompressed batch (what a batch's size limit counts)."""
    return _RECORD_FRAMING + len(key) + len(value) + headers_bytes


def lz4_batch(plain: bytearray) -> bytearray:
    """An uncompressed v2 record batch with its records compressed by fast LZ4."""
    # Compressed even where that saves nothing, as aiokafka's own (C) builder does.
    compressed: bytes = lz4_encode(bytes(memoryview(plain)[_HEADER:]), _LZ4_FAST)
    batch = plain[:_HEADER] + compressed
    _LENGTH.pack_into(
        batch,
        DefaultRecordBase.AFTER_LEN_OFFSET - _LENGTH.size,
        len(batch) - DefaultRecordBase.AFTER_LEN_OFFSET,
    )
    (attributes,) = _ATTRIBUTES.unpack_from(batch, DefaultRecordBase.ATTRIBUTES_OFFSET)
    _ATTRIBUTES.pack_into(
        batch, DefaultRecordBase.ATTRIBUTES_OFFSET, attributes | DefaultRecordBatch.CODEC_LZ4
    )
    crc = calc_crc32c(memoryview(batch)[DefaultRecordBase.ATTRIBUTES_OFFSET :])
    _CRC.pack_into(batch, DefaultRecordBase.CRC_OFFSET, crc)
    return batch


class _Batch(BatchBuilder):  # type: ignore[misc]  # aiokafka is untyped
    """aiokafka's batch builder, with fast LZ4, closed as the sender of an idempotent producer numbers it."""

    _relative_offset: int

    def __init__(self, batch_size: int, codec: int) -> None:
        # An lz4 batch is built uncompressed, then compressed here.
        self._lz4 = codec == DefaultRecordBatch.CODEC_LZ4
        self._compressed = False
        super().__init__(batch_size, DefaultRecordBatch.CODEC_NONE if self._lz4 else codec)

    def _build(self) -> bytearray:
        # Built once (aiokafka keeps what the first call built, and sends it again on a retry).
        built: bytearray = super()._build()
        if self._lz4 and not self._compressed:
            self._compressed = True
            built = self._buffer = lz4_batch(built)
        return built

    def extend(self, records: Sequence[Outgoing], indexes: Sequence[int], timestamp_ms: int) -> int:
        """Append the records at `indexes` while they fit, all with one timestamp; how many it took."""
        # As append() does one at a time, without its keyword arguments and serializer calls a record.
        if self.closed():
            return 0
        append, offset = self._builder.append, self._relative_offset
        taken = 0
        for index in indexes:
            _, _, key, value, headers, _ = records[index]
            if append(offset + taken, timestamp_ms, key, value, headers) is None:
                self.close()  # full, as append() leaves it
                break
            taken += 1
        self._relative_offset = offset + taken
        return taken

    def _set_producer_state(self, producer_id: int, producer_epoch: int, base_sequence: int) -> None:
        # The sender numbers the records of a batch as it takes it from the queue, and builds the batch
        # later: a record appended in between would be sent without a number of its own. (Without
        # idempotence it is sent like the others: the batch is built with whatever it holds.)
        self.close()
        super()._set_producer_state(producer_id, producer_epoch, base_sequence)


@dataclass(frozen=True, slots=True)
class Placed:
    """Where the records of one publish went in one batch: the partition and the first one's position."""

    partition: int
    indexes: list[int]
    start: int
    ack: asyncio.Future[Any]


class PartitionBatches:
    """Places records in record batches of a topic, one a partition a publish, joined while they wait.

    One a started aiokafka producer: the batches it remembers are queued in that producer.
    """

    def __init__(self, topic: str, *, max_batch_bytes: int, compression: str | None) -> None:
        self._topic = topic
        self._max_batch_bytes = max_batch_bytes
        self._codec = _CODECS[compression]
        # thread id -> partition, for as many partitions as the topic had when they were computed.
        self._partition_of: dict[str, int] = {}
        self._partition_count = 0
        self._locks: dict[int, asyncio.Lock] = {}
        # The last batch queued for each partition and its ack, while it may still take records.
        self._waiting: dict[int, tuple[_Batch, asyncio.Future[Any]]] = {}

    async def place(
        self,
        producer: AIOKafkaProducer,
        records: Sequence[Outgoing],
        handed_over: list[bool],
        deadline: float,
    ) -> list[Placed]:
        """Queue `records`, each partition's in one batch (more if they fill one); where they went.

        `handed_over` gains an entry as each batch is in aiokafka's hands; the batches are queued by
        `deadline`, or KafkaTimeoutError.
        """
        partitions = sorted(await producer.partitions_for(self._topic))
        timestamp_ms = int(time.time() * 1000)
        placed: list[Placed] = []
        for partition, indexes in self._by_partition(records, partitions).items():
            joined = self._joinable(partition, sum(records[index][5] for index in indexes))
            if joined is not None:
                batch, ack = joined
                start = batch.record_count()
                if batch.extend(records, indexes, timestamp_ms) != len(indexes):
                    # The framed sizes are at least what the records take, and nothing ran since the check.
                    raise RuntimeError(f"a batch of partition {partition} refused records it had room for")
                placed.append(Placed(partition, indexes, start, ack))
                handed_over.append(True)
                continue
            while indexes:
                # A new batch always takes the first record; what does not fit goes in the next one.
                batch = self._new_batch()
                taken = batch.extend(records, indexes, timestamp_ms)
                ack = await self._queue(producer, batch, partition, deadline)
                placed.append(Placed(partition, indexes[:taken], 0, ack))
                handed_over.append(True)
                indexes = indexes[taken:]
        return placed

    def _by_partition(self, records: Sequence[Outgoing], partitions: list[int]) -> dict[int, list[int]]:
        """The indexes of the records of each partition, partitioned as Kafka's default partitioner does."""
        # murmur2 of the key, so every producer (the Java client's too) puts a thread in one partition.
        if self._partition_count != len(partitions):
            self._partition_of.clear()
            self._partition_count = len(partitions)
        partition_of = self._partition_of
        by_partition: dict[int, list[int]] = {}
        for index, (_, thread_id, key, _, _, _) in enumerate(records):
            partition = partition_of.get(thread_id)
            if partition is None:
                if len(partition_of) >= _PARTITIONS_CACHED:
                    partition_of.clear()
                partition = partition_of[thread_id] = _PARTITIONER(key, partitions, None)
            by_partition.setdefault(partition, []).append(index)
        return by_partition

    def _new_batch(self) -> _Batch:
        return _Batch(self._max_batch_bytes, self._codec)

    def _joinable(self, partition: int, size: int) -> tuple[_Batch, asyncio.Future[Any]] | None:
        """The batch queued for `partition` if it still takes records and has `size` bytes free."""
        waiting = self._waiting.get(partition)
        if waiting is None:
            return None
        batch, ack = waiting
        if batch.closed() or ack.done():  # built by the sender (or failed): it takes no more
            del self._waiting[partition]
            return None
        return waiting if batch.size() + size <= self._max_batch_bytes else None

    async def _queue(
        self, producer: AIOKafkaProducer, batch: _Batch, partition: int, deadline: float
    ) -> asyncio.Future[Any]:
        """Queue a batch for `partition`, one caller at a time, by `deadline`; the future of its ack."""
        # aiokafka queues one batch per partition and makes the others wait in a loop that charges
        # the time waited so far against the timeout again on every turn (add_batch in its
        # message_accumulator): many publishers waiting there at once time out long before
        # `request_timeout_ms`. Here they queue on a lock, and go on into aiokafka one at a time.
        lock = self._locks.setdefault(partition, asyncio.Lock())
        try:
            async with asyncio.timeout_at(deadline), lock:
                ack: asyncio.Future[Any] = await producer.send_batch(batch, self._topic, partition=partition)
        except TimeoutError:
            raise KafkaTimeoutError(
                f"partition {partition} took no batch within request_timeout_ms"
            ) from None
        self._waiting[partition] = (batch, ack)
        return ack
