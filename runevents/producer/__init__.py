"""Publishing to the run-events topic."""

from runevents.producer.producer import (
    BrokerUnavailableError,
    EventProducer,
    EventTooLargeError,
    Published,
)

__all__ = ["BrokerUnavailableError", "EventProducer", "EventTooLargeError", "Published"]
