"""The run-events topic: its defaults, creating it, and reading the limits the producer enforces."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Final, Literal

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from runevents.bus.clients import start_fully
from runevents.bus.names import DEAD_LETTER_SUFFIX, DEFAULT_TOPIC
from runevents.errors import RunEventsError
from runevents.names import check_topic

DEFAULT_PARTITIONS: Final = 12
# Kafka's default message.max.bytes (1 MiB plus batch overhead): what a topic takes unless told otherwise.
DEFAULT_MAX_MESSAGE_BYTES: Final = 1_048_588


class TopicMissingError(RunEventsError):
    """The topic a command needs does not exist on the brokers."""


def dead_letter_topic(topic: str) -> str:
    """The dead-letter topic of `topic`."""
    return topic + DEAD_LETTER_SUFFIX


async def create_topic(
    bootstrap_servers: str,
    topic: str = DEFAULT_TOPIC,
    *,
    partitions: int = DEFAULT_PARTITIONS,
    replication_factor: int = 1,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    client_options: dict[str, Any] | None = None,
) -> bool:
    """Create `topic` (kept forever: retention -1) unless it exists; return whether it was created."""
    check_topic(topic)  # before any client: a refused name leaves nothing made
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **(client_options or {}))
    try:
        await start_fully(admin.start)  # in the try: a failed start (no broker) is closed too
        # The log is the source of truth: replay and backfill need every record ever written.
        configs = {"retention.ms": "-1", "max.message.bytes": str(max_message_bytes)}
        new = NewTopic(topic, partitions, replication_factor, topic_configs=configs)
        try:
            response = await admin.create_topics([new])
        except TopicAlreadyExistsError:
            return False
        for name, code, *_ in getattr(response, "topic_errors", []):
            if code == TopicAlreadyExistsError.errno:
                return False
            if code:
                raise KafkaError(f"creating topic {name!r} failed with error code {code}")
        return True
    finally:
        await admin.close()


async def max_message_bytes(
    bootstrap_servers: str, topic: str, *, client_options: dict[str, Any] | None = None
) -> int:
    """The topic's `max.message.bytes`, or Kafka's default when the broker does not say."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **(client_options or {}))
    try:
        # An unreachable broker raises; only a broker that will not say means the default.
        await start_fully(admin.start)
        try:
            responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        except KafkaError:
            return DEFAULT_MAX_MESSAGE_BYTES
    finally:
        await admin.close()
    for response in responses:
        for resource in getattr(response, "resources", []):
            for entry in resource[4]:
                if entry[0] == "max.message.bytes" and entry[1]:
                    return int(entry[1])
    return DEFAULT_MAX_MESSAGE_BYTES


async def log_offsets(
    bootstrap_servers: str,
    topic: str,
    which: Literal["start", "end"],
    *,
    client_options: Mapping[str, Any] | None = None,
    timeout_s: float = 30.0,
) -> dict[int, int]:
    """Each partition's first offset still in the log ("start") or next offset to be written ("end")."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        fetch_max_wait_ms=50,
        **(client_options or {}),
    )
    try:
        await start_fully(consumer.start)  # in the try: a failed start (no broker) is stopped too
        await consumer.topics()  # fetches the cluster's metadata, partitions included
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise TopicMissingError(f"topic {topic!r} does not exist at {bootstrap_servers}")
        wanted = [TopicPartition(topic, partition) for partition in sorted(partitions)]
        if which == "start":
            found = await consumer.beginning_offsets(wanted)
            return {tp.partition: offset for tp, offset in found.items()}
        # Not end_offsets: some brokers (Tansu) answer it with the last batch's base offset + 1. A
        # fetch response's high water is right everywhere, and a fetch from near the end is small.
        consumer.assign(wanted)
        await consumer.seek_to_end(*wanted)
        async with asyncio.timeout(timeout_s):
            while any(consumer.highwater(tp) is None for tp in wanted):
                await consumer.getmany(*wanted, timeout_ms=100, max_records=1)
        return {tp.partition: consumer.highwater(tp) or 0 for tp in wanted}
    finally:
        await consumer.stop()
