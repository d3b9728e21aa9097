"""The run-events topic: its defaults, creating it, and reading the limits the producer enforces."""

from __future__ import annotations

from typing import Any, Final

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

DEFAULT_TOPIC: Final = "run-events"
DEFAULT_PARTITIONS: Final = 12
# Kafka's default message.max.bytes (1 MiB plus batch overhead): what a topic takes unless told otherwise.
DEFAULT_MAX_MESSAGE_BYTES: Final = 1_048_588
DEAD_LETTER_SUFFIX: Final = ".dead-letters"


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
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **(client_options or {}))
    await admin.start()
    try:
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
    await admin.start()
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
