"""The projector: consumes the topic and writes the read tables, exactly once in effect."""

from runevents.bus.projector.loop import Projector

__all__ = ["Projector"]
