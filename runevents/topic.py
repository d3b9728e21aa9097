"""Deprecated path, kept for this version: the topic's administration moved to `runevents.bus.topic`."""

import warnings

from runevents.bus.topic import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_PARTITIONS,
    TopicMissingError,
    create_topic,
    dead_letter_topic,
    log_offsets,
    max_message_bytes,
)

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_PARTITIONS",
    "TopicMissingError",
    "create_topic",
    "dead_letter_topic",
    "log_offsets",
    "max_message_bytes",
]

warnings.warn(
    "runevents.topic moved to runevents.bus.topic; the old path goes away in the next version",
    DeprecationWarning,
    stacklevel=2,
)
