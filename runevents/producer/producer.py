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
from aiokafka.errors import KafkaError, UnknownError

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
from runevents.topic import DEFAULT_TOPIC, max_message_bytes

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

# What Kafka adds around a record's key, value and headers in a batch of one (v2 format), rounded up.
_RECORD_OVERHEAD: Final = 128


class BrokerUnavailableError(RunEventsError):
    """The broker did not take or acknowledge a record (which may or may not be on the topic)."""


class EventTooLargeError(InvalidEventError):
    """An event's record is larger than the topic's `max.message.bytes`."""


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
                idempotent = self._idempotence is not False
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
                    idempotent = False
                    producer = await self._connect(idempotent)
                self._idempotence = idempotent
            except KafkaError as exc:
                raise BrokerUnavailableError(
                    f"cannot reach the Kafka broker at {self._bootstrap_servers}: {exc!r}"
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
        limit = await self._limit()
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

    async def publish_delete(self, thread_id: str, run_id: str | None = None) -> Published:
        """Publish a delete of a thread (or of one run of it); return where it landed."""
        event_id = new_event_id()
        op = DELETE_THREAD if run_id is None else DELETE_RUN
        (published,) = await self._send_all(
            [(event_id, thread_id, encode_delete(event_id, thread_id, run_id), headers_of(op))]
        )
        return published

    async def _limit(self) -> int:
        await self.start()
        assert self._max_message_bytes is not None
        return self._max_message_bytes

    async def _send_all(
        self, records: list[tuple[str, str, bytes, list[tuple[str, bytes]]]]
    ) -> list[Published]:
        await self.start()
        producer = self._producer
        if producer is None:
            raise BrokerUnavailableError("the producer was stopped")
        try:
            # send() only queues a record for its partition's next batch; the acks come after.
            acks = [
                await producer.send(self.topic, value=value, key=thread_id.encode(), headers=headers)
                for _, thread_id, value, headers in records
            ]
            metadata = await asyncio.gather(*acks)
        except KafkaError as exc:
            raise BrokerUnavailableError(
                f"publishing {len(records)} records to {self.topic!r} at {self._bootstrap_servers} failed "
                f"({exc!r}); records not acknowledged may or may not be on the topic"
            ) from exc
        return [
            Published(event_id, thread_id, ack.partition, ack.offset)
            for (event_id, thread_id, _, _), ack in zip(records, metadata, strict=True)
        ]
