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

from runevents.bus.clients import start_fully
from runevents.bus.names import DEFAULT_TOPIC
from runevents.bus.record_batches import Outgoing, PartitionBatches, framed_size, headers_size
from runevents.bus.topic import log_offsets, max_message_bytes
from runevents.crypto.sealing import SEALED_HEADER
from runevents.errors import InvalidEventError, RunEventsError
from runevents.events import (
    DELETE_RUN,
    DELETE_THREAD,
    EXPIRE,
    PUT,
    SET_RETENTION,
    PreparedEvent,
    encode_delete,
    encode_expire,
    encode_put,
    encode_set_retention,
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


# Bootstrap servers that refused an idempotent producer in this process. Asking costs every new
# producer a refused request, a reconnect and a warning; a broker that gains the feature is asked
# again when the process restarts.
_REFUSED_IDEMPOTENCE: Final[set[str]] = set()
# What Kafka adds around a record's key, value and headers in a batch of one (v2 format), rounded up.
_RECORD_OVERHEAD: Final = 128
# Kinds of put (op, event type) whose headers are kept; past that the memo starts again.
_HEADERS_CACHED: Final = 1_000


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
        # No linger: a put waits for its record's ack, and 5 ms of linger was 5 of its 12 ms. Concurrent
        # writers still share batches: aiokafka keeps one request a broker in flight, and records that
        # come meanwhile join the batches queued (record_batches.py); 64 writers' puts/s rose by a third.
        linger_ms: int = 0,
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
        self._batches: PartitionBatches | None = None
        self._put_headers: dict[tuple[str, str], tuple[list[tuple[str, bytes]], int]] = {}

    async def log_ends(self) -> dict[int, int]:
        """Each partition's next offset to be written on the topic, as the brokers say now."""
        return await log_offsets(
            self._bootstrap_servers, self.topic, "end", client_options=self._client_options
        )

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
            self._batches = PartitionBatches(
                self.topic,
                max_batch_bytes=self._options["max_batch_size"],
                compression=self._options["compression_type"],
            )

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
            await start_fully(producer.start)
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
            producer, self._producer, self._batches = self._producer, None, None
            await producer.stop()

    async def publish_puts(
        self,
        events: Sequence[PreparedEvent],
        *,
        op: str = PUT,
        sealed: Sequence[tuple[str, bytes] | None] | None = None,
    ) -> list[Published]:
        """Publish one record per event (all sizes checked first); return where each landed, in order.

        `sealed`: per event, its sealed value and the id of the data key that sealed it
        (runevents.crypto.sealing), or None to publish it in the clear.
        """
        records: list[Outgoing] = []
        for index, event in enumerate(events):
            key = event.thread_id.encode()
            headers, headers_bytes = self._headers(op, event.event_type)
            seal = None if sealed is None else sealed[index]
            if seal is None:
                value = encode_put(event, op)
            else:
                key_id, value = seal
                headers = [*headers, (SEALED_HEADER, key_id.encode())]
                headers_bytes = headers_size(headers)
            records.append(
                (event.event_id, event.thread_id, key, value, headers, framed_size(key, value, headers_bytes))
            )
        limit = await self.record_limit([event.event_id for event in events])
        for index, (_, _, key, value, _, _) in enumerate(records):
            size = len(value) + len(key) + _RECORD_OVERHEAD
            if size > limit:
                raise EventTooLargeError(
                    "event",
                    f"is {size} bytes on the topic; {self.topic!r} takes at most {limit} (max.message.bytes)",
                    index=index if len(records) > 1 else None,
                )
        return await self._send_all(records)

    def record_size(self, event: PreparedEvent) -> int:
        """The bytes `event`'s put record takes on the topic, as `publish_puts` counts them."""
        return len(encode_put(event, PUT)) + len(event.thread_id.encode()) + _RECORD_OVERHEAD

    def _headers(self, op: str, event_type: str) -> tuple[list[tuple[str, bytes]], int]:
        """The headers of a put of `event_type` and their size, made once a kind (records only read them)."""
        headers = self._put_headers.get((op, event_type))
        if headers is None:
            if len(self._put_headers) >= _HEADERS_CACHED:
                self._put_headers.clear()
            made = headers_of(op, event_type)
            headers = self._put_headers[(op, event_type)] = (made, headers_size(made))
        return headers

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

    async def publish_expire(self, thread_id: str, seqs: list[int]) -> Published:
        """Publish an expiry of the thread's events at `seqs` (retention); return where it landed."""
        check_id("thread_id", thread_id)
        event_id = new_event_id()
        return await self._publish_value(
            EXPIRE, thread_id, event_id, encode_expire(event_id, thread_id, seqs)
        )

    async def publish_set_retention(self, thread_id: str, policy: dict[str, Any] | None) -> Published:
        """Publish a thread's own retention policy (its JSON document; None: none); return where it landed."""
        check_id("thread_id", thread_id)
        event_id = new_event_id()
        value = encode_set_retention(event_id, thread_id, policy)
        return await self._publish_value(SET_RETENTION, thread_id, event_id, value)

    async def _publish_op(self, op: str, thread_id: str, run_id: str | None) -> Published:
        event_id = new_event_id()
        return await self._publish_value(op, thread_id, event_id, encode_delete(event_id, thread_id, run_id))

    async def _publish_value(self, op: str, thread_id: str, event_id: str, value: bytes) -> Published:
        key, headers = thread_id.encode(), headers_of(op)
        (published,) = await self._send_all(
            [(event_id, thread_id, key, value, headers, framed_size(key, value, headers_size(headers)))]
        )
        return published

    async def record_limit(self, event_ids: Sequence[str] = ()) -> int:
        """The largest record the topic takes, once started (failing to start: `event_ids` not sent)."""
        try:
            await self.start()
        except BrokerUnavailableError as exc:
            raise _none_sent(exc, event_ids) from exc
        assert self._max_message_bytes is not None
        return self._max_message_bytes

    async def _send_all(self, records: list[Outgoing]) -> list[Published]:
        event_ids = [event_id for event_id, _, _, _, _, _ in records]
        try:
            await self.start()
        except BrokerUnavailableError as exc:
            raise _none_sent(exc, event_ids) from exc
        producer, batches = self._producer, self._batches
        if producer is None or batches is None:
            raise BrokerUnavailableError("the producer was stopped", event_ids=event_ids)
        handed_over: list[bool] = []
        # By this the records are queued, and one request timeout later acknowledged: an idempotent
        # aiokafka producer retries a batch without end while its partition takes no writes.
        deadline = asyncio.get_running_loop().time() + self._options["request_timeout_ms"] / 1000
        try:
            if len(records) == 1:
                # One record: send() joins it to its partition's queued batch, if any (other writers').
                ((event_id, thread_id, key, value, headers, _),) = records
                queued = await producer.send(self.topic, value=value, key=key, headers=headers)
                handed_over.append(True)
                (ack,) = await self._acknowledged([queued], deadline)
                return [Published(event_id, thread_id, ack.partition, ack.offset)]
            placed = await batches.place(producer, records, handed_over, deadline)
            acks = await self._acknowledged([batch.ack for batch in placed], deadline)
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
        published: list[Published | None] = [None] * len(records)
        for batch, ack in zip(placed, acks, strict=True):
            # A batch's records take consecutive offsets from the one the broker gave the batch.
            offset = ack.offset + batch.start
            for position, index in enumerate(batch.indexes):
                event_id, thread_id, _, _, _, _ = records[index]
                published[index] = Published(event_id, thread_id, batch.partition, offset + position)
        return [record for record in published if record is not None]

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
