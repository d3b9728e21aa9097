"""Deprecated path, kept for this version: the projector moved to `runevents.bus.projector`."""

import warnings

from runevents.bus.projector import Projector

__all__ = ["Projector"]

warnings.warn(
    "runevents.consumer moved to runevents.bus.projector; the old path goes away in the next version",
    DeprecationWarning,
    stacklevel=2,
)
