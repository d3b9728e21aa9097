"""The producer: validated, truncated events onto the topic, acknowledged by every in-sync replica.

Events are validated and truncated (`prepare_events`) before anything is sent, so nothing invalid
reaches the topic; an event larger than the topic takes is refused here, before it is sent, because
some brokers (Tansu among them) accept what they should not. Exactly-once in effect comes from the
producer-assigned `event_id`, which the projector deduplicates on; the broker's idempotence is an
option for brokers that have it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, KafkaTimeoutError, UnknownError
from aiokafka.partitioner import DefaultPartitioner

from runevents.bus.names import DEFAULT_TOPIC
from runevents.bus.topic import max_message_bytes
from runevents.errors import InvalidEventError, RunEventsError
from runevents.events import (
    DELETE_RUN,
    DELETE_THREAD,
    PUT,
    PreparedEvent,
    encode_delete,
    encode_put,
    headers_of,
    new_event_id,
)
from runevents.masking import error_line
from runevents.store.arguments import check_id

log = logging.getLogger(__name__)
_SENDER_LOG: Final = logging.getLogger("aiokafka.producer.sender")


@contextlib.contextmanager
def _quiet(logger: logging.Logger, *, when: bool) -> Iterator[None]:
    """Hold `logger` back to CRITICAL while the block runs, if `when`."""
    if not when:
        yield
        return
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


# (event_id, thread_id, value, headers) of one record to send.
_Outgoing = tuple[str, str, bytes, list[tuple[str, bytes]]]

_PARTITIONER: Final = DefaultPartitioner()
# Bootstrap servers that refused an idempotent producer in this process. Asking costs every new
# producer a refused request, a reconnect and a warning; a broker that gains the feature is asked
# again when the process restarts.
_REFUSED_IDEMPOTENCE: Final[set[str]] = set()
# Threads whose partition is remembered; past that the memo starts again (it only saves hashing).
_PARTITIONS_CACHED: Final = 100_000

# What Kafka adds around a record's key, value and headers in a batch of one (v2 format), rounded up.
_RECORD_OVERHEAD: Final = 128


class BrokerUnavailableError(RunEventsError):
    """The broker did not take or acknowledge records.

    `maybe_durable` says whether any of them may be on the topic all the same (they reached the
    producer's send), `event_ids` which ones: a retry that passes the same ids (`event_ids=` of
    `put_batch` and `publish_batch`) is projected once, however many copies reached the log.
    """

    def __init__(self, message: str, *, event_ids: Sequence[str] = (), maybe_durable: bool = False) -> None:
        super().__init__(message)
        self.event_ids = tuple(event_ids)
        self.maybe_durable = maybe_durable


class EventTooLargeError(InvalidEventError):
    """An event's record is larger than the topic's `max.message.bytes`."""


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Take a given-up future's outcome, so asyncio does not log it as never retrieved."""
    if not future.cancelled():
        future.exception()


def _none_sent(error: BrokerUnavailableError, event_ids: Sequence[str]) -> BrokerUnavailableError:
    """`error` of a producer that could not start, for a call whose records were never sent."""
    return BrokerUnavailableError(
        f"{error}; none of the {len(event_ids)} records was sent", event_ids=event_ids
    )


@dataclass(frozen=True, slots=True)
class Published:
    """Where the broker put one record."""

    event_id: str
    thread_id: str
    partition: int
    offset: int


class EventProducer:
    """Publishes puts and deletes of runevents to one topic, keyed by thread id."""

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        topic: str = DEFAULT_TOPIC,
        max_message_bytes: int | None = None,
        compression: str | None = "lz4",
        linger_ms: int = 5,
        max_batch_bytes: int = 256 * 1024,
        request_timeout_ms: int = 30_000,
        enable_idempotence: bool | None = None,
        client_options: dict[str, Any] | None = None,
    ) -> None:
        self.topic = topic
        self._bootstrap_servers = bootstrap_servers
        self._max_message_bytes = max_message_bytes
        self._client_options = dict(client_options or {})
        self._options: dict[str, Any] = {
            "acks": "all",
            "compression_type": compression,
            "linger_ms": linger_ms,
            "max_batch_size": max_batch_bytes,
            "request_timeout_ms": request_timeout_ms,
        }
        # None: on where the broker grants a producer id, off (with a warning) where it does not.
        self._idempotence = enable_idempotence
        self._producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()
        # thread id -> partition, for as many partitions as the topic had when they were computed.
        self._partition_of: dict[str, int] = {}
        self._partition_count = 0
        self._partition_locks: dict[int, asyncio.Lock] = {}

    @property
    def max_message_bytes(self) -> int | None:
        """The largest record the topic takes (known once started)."""
        return self._max_message_bytes

    async def start(self) -> None:
        """Connect to the broker and learn the topic's size limit (once; later calls return at once)."""
        async with self._starting:
            if self._producer is not None:
                return
            try:
                if self._max_message_bytes is None:
                    self._max_message_bytes = await max_message_bytes(
                        self._bootstrap_servers, self.topic, client_options=self._client_options
                    )
                # Left to the broker, and it refused before in this process: do not ask again.
                idempotent = self._idempotence is True or (
                    self._idempotence is None and self._bootstrap_servers not in _REFUSED_IDEMPOTENCE
                )
                try:
                    # aiokafka logs a refusal as an error of its own; the warning below says it once.
                    with _quiet(_SENDER_LOG, when=self._idempotence is None):
                        producer = await self._connect(idempotent)
                except UnknownError as exc:
                    if self._idempotence:
                        raise BrokerUnavailableError(
                            f"the broker at {self._bootstrap_servers} refused an idempotent producer "
                            "(enable_idempotence=True); leave it unset to fall back where unsupported"
                        ) from exc
                    # Brokers without InitProducerId (Tansu) refuse an idempotent producer at start;
                    # the projector's event-id dedupe is what makes retries harmless anyway.
                    log.warning(
                        "the broker at %s refuses idempotent producers; publishing without idempotence "
                        "(duplicates from retries are skipped by event id)",
                        self._bootstrap_servers,
                    )
                    _REFUSED_IDEMPOTENCE.add(self._bootstrap_servers)
                    idempotent = False
                    producer = await self._connect(idempotent)
                self._idempotence = idempotent
            except KafkaError as exc:
                raise BrokerUnavailableError(
                    f"cannot reach the Kafka broker at {self._bootstrap_servers}: {error_line(exc)}"
                ) from exc
            self._producer = producer

    async def _connect(self, idempotent: bool) -> AIOKafkaProducer:
        assert self._max_message_bytes is not None
        producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap_servers,
            # A record as large as the topic takes must fit in one request.
            max_request_size=self._max_message_bytes + _RECORD_OVERHEAD,
            enable_idempotence=idempotent,
            **self._options,
            **self._client_options,
        )
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        return producer

    @property
    def idempotent(self) -> bool | None:
        """Whether the producer is idempotent (None until started when left to the broker)."""
        return self._idempotence

    async def stop(self) -> None:
        """Send what is buffered and disconnect."""
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()

    async def publish_puts(self, events: Sequence[PreparedEvent], *, op: str = PUT) -> list[Published]:
        """Publish one record per event (all sizes checked first); return where each landed, in order."""
        records = [(event, encode_put(event, op)) for event in events]
        try:
            limit = await self._limit()
        except BrokerUnavailableError as exc:
            raise _none_sent(exc, [event.event_id for event in events]) from exc
        for index, (event, value) in enumerate(records):
            size = len(value) + len(event.thread_id.encode()) + _RECORD_OVERHEAD
            if size > limit:
                raise EventTooLargeError(
                    "event",
                    f"is {size} bytes on the topic; {self.topic!r} takes at most {limit} (max.message.bytes)",
                    index=index if len(records) > 1 else None,
                )
        return await self._send_all(
            [
                (event.event_id, event.thread_id, value, headers_of(op, event.event_type))
                for event, value in records
            ]
        )

    async def publish_delete_thread(self, thread_id: str) -> Published:
        """Publish a delete of a whole thread; return where it landed."""
        check_id("thread_id", thread_id)
        return await self._publish_op(DELETE_THREAD, thread_id, None)

    async def publish_delete_run(self, thread_id: str, run_id: str) -> Published:
        """Publish a delete of one run of a thread; return where it landed."""
        # Two methods, not one with an optional run: a run id left out must never mean the thread.
        check_id("thread_id", thread_id)
        check_id("run_id", run_id)
        return await self._publish_op(DELETE_RUN, thread_id, run_id)

    async def _publish_op(self, op: str, thread_id: str, run_id: str | None) -> Published:
        event_id = new_event_id()
        value = encode_delete(event_id, thread_id, run_id)
        (published,) = await self._send_all([(event_id, thread_id, value, headers_of(op))])
        return published

    async def _limit(self) -> int:
        await self.start()
        assert self._max_message_bytes is not None
        return self._max_message_bytes

    async def _send_all(self, records: list[_Outgoing]) -> list[Published]:
        event_ids = [event_id for event_id, _, _, _ in records]
        try:
            await self.start()
        except BrokerUnavailableError as exc:
            raise _none_sent(exc, event_ids) from exc
        producer = self._producer
        if producer is None:
            raise BrokerUnavailableError("the producer was stopped", event_ids=event_ids)
        handed_over: list[bool] = []
        # By this the records are queued, and one request timeout later acknowledged: an idempotent
        # aiokafka producer retries a batch without end while its partition takes no writes.
        deadline = asyncio.get_running_loop().time() + self._options["request_timeout_ms"] / 1000
        try:
            if len(records) == 1:
                # One record: send() lets the linger gather it with other writers' records.
                ((event_id, thread_id, value, headers),) = records
                queued = await producer.send(self.topic, value=value, key=thread_id.encode(), headers=headers)
                handed_over.append(True)
                (ack,) = await self._acknowledged([queued], deadline)
                return [Published(event_id, thread_id, ack.partition, ack.offset)]
            return await self._send_batches(producer, records, handed_over, deadline)
        except KafkaError as exc:
            if handed_over:
                outcome = (
                    "records not acknowledged may or may not be on the topic: retry with the same "
                    "event_ids and the projection keeps one copy"
                )
            else:
                outcome = "none of them was sent"
            raise BrokerUnavailableError(
                f"publishing {len(records)} records to {self.topic!r} at {self._bootstrap_servers} failed "
                f"({exc!r}); {outcome}",
                event_ids=event_ids,
                maybe_durable=bool(handed_over),
            ) from exc

    async def _acknowledged(self, queued: Sequence[asyncio.Future[Any]], deadline: float) -> list[Any]:
        """The broker's acks of `queued`; KafkaTimeoutError one request timeout past `deadline`."""
        acks = asyncio.gather(*queued)
        try:
            async with asyncio.timeout_at(deadline + self._options["request_timeout_ms"] / 1000):
                # Shielded: cancelling aiokafka's futures would not take the batches back.
                return await asyncio.shield(acks)
        except TimeoutError:
            acks.add_done_callback(_retrieved)
            raise KafkaTimeoutError("the broker acknowledged none of the batches in time") from None

    async def _send_batches(
        self, producer: AIOKafkaProducer, records: list[_Outgoing], handed_over: list[bool], deadline: float
    ) -> list[Published]:
        """Send many records as one record batch per partition, not one queued send per record."""
        # A record sent on its own costs a partitioner call, a metadata check and a future of its own,
        # more than encoding and validating it; a batch per partition pays those once. Partitioned as
        # Kafka's default partitioner does (murmur2 of the key), so every producer agrees.
        partitions = sorted(await producer.partitions_for(self.topic))
        if self._partition_count != len(partitions):
            self._partition_of.clear()
            self._partition_count = len(partitions)
        by_partition: dict[int, list[int]] = {}
        for index, (_, thread_id, _, _) in enumerate(records):
            partition = self._partition_of.get(thread_id)
            if partition is None:
                if len(self._partition_of) >= _PARTITIONS_CACHED:
                    self._partition_of.clear()
                partition = self._partition_of[thread_id] = _PARTITIONER(thread_id.encode(), partitions, None)
            by_partition.setdefault(partition, []).append(index)
        # (partition, indexes of the records in the batch, the batch's ack), in send order.
        sent: list[tuple[int, list[int], asyncio.Future[Any]]] = []
        for partition, indexes in by_partition.items():
            batch, taken = producer.create_batch(), list[int]()
            for index in indexes:
                _, thread_id, value, headers = records[index]
                key = thread_id.encode()
                if batch.append(timestamp=None, key=key, value=value, headers=headers) is None:
                    # Full: it goes, and the record starts the next one (which always takes one).
                    sent.append(
                        (partition, taken, await self._send_batch(producer, batch, partition, deadline))
                    )
                    handed_over.append(True)
                    batch, taken = producer.create_batch(), list[int]()
                    batch.append(timestamp=None, key=key, value=value, headers=headers)
                taken.append(index)
            sent.append((partition, taken, await self._send_batch(producer, batch, partition, deadline)))
            handed_over.append(True)
        acks = await self._acknowledged([ack for _, _, ack in sent], deadline)
        published: list[Published | None] = [None] * len(records)
        for (partition, taken, _), ack in zip(sent, acks, strict=True):
            # A batch's records take consecutive offsets from the one the broker gave the batch.
            for position, index in enumerate(taken):
                event_id, thread_id, _, _ = records[index]
                published[index] = Published(event_id, thread_id, partition, ack.offset + position)
        return [placed for placed in published if placed is not None]

    async def _send_batch(
        self, producer: AIOKafkaProducer, batch: Any, partition: int, deadline: float
    ) -> asyncio.Future[Any]:
        """Queue a batch for `partition`, one caller at a time, by `deadline`; the future of its ack."""
        # aiokafka queues one batch per partition and makes the others wait in a loop that charges
        # the time waited so far against the timeout again on every turn (add_batch in its
        # message_accumulator): many publishers waiting there at once time out long before
        # `request_timeout_ms`. Here they queue on a lock, and go on into aiokafka one at a time.
        lock = self._partition_locks.setdefault(partition, asyncio.Lock())
        try:
            async with asyncio.timeout_at(deadline), lock:
                future: asyncio.Future[Any] = await producer.send_batch(
                    batch, self.topic, partition=partition
                )
        except TimeoutError:
            raise KafkaTimeoutError(
                f"partition {partition} took no batch within request_timeout_ms"
            ) from None
        return future
