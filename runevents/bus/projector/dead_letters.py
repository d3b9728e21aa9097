"""The projector's dead letters: a record it cannot apply, sent to the dead-letter topic and table."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from runevents.bus.clients import start_fully
from runevents.bus.topic import dead_letter_topic
from runevents.tables.schema import dead_letters


class DeadLetters:
    """Writes one projection's dead letters, through a producer of its own started and stopped here."""

    def __init__(
        self, *, topic: str, projection: str, bootstrap_servers: str, client_options: dict[str, Any]
    ) -> None:
        self.topic = topic
        self.projection = projection
        self._bootstrap_servers = bootstrap_servers
        self._client_options = client_options
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        """Start the producer of the dead-letter topic."""
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap_servers, acks="all", **self._client_options
        )
        await start_fully(self._producer.start)

    async def stop(self) -> None:
        """Stop the producer, if started."""
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def write(
        self, connection: AsyncConnection, tp: TopicPartition, record: ConsumerRecord, reason: str
    ) -> None:
        """Send the record to the dead-letter topic and table with `reason`; the partition goes on."""
        headers = [(name, value) for name, value in record.headers or ()]
        assert self._producer is not None
        await self._producer.send_and_wait(
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
