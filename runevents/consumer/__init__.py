"""Consuming the run-events topic: the projector that writes the read tables."""

from runevents.consumer.projector import Projector

__all__ = ["Projector"]
