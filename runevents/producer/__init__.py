"""Deprecated path, kept for this version: the producer moved to `runevents.bus.producer`."""

import warnings

from runevents.bus.producer import BrokerUnavailableError, EventProducer, EventTooLargeError, Published

__all__ = ["BrokerUnavailableError", "EventProducer", "EventTooLargeError", "Published"]

warnings.warn(
    "runevents.producer moved to runevents.bus.producer; the old path goes away in the next version",
    DeprecationWarning,
    stacklevel=2,
)
