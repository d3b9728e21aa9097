"""Deprecated path, kept for this version: the bus store moved to `runevents.bus.store`."""

import warnings

from runevents.bus.store import BusRunEventStore, ProjectedRecordMissingError, ReadTablesUnavailableError

__all__ = ["BusRunEventStore", "ProjectedRecordMissingError", "ReadTablesUnavailableError"]

warnings.warn(
    "runevents.store.bus moved to runevents.bus.store; the old path goes away in the next version",
    DeprecationWarning,
    stacklevel=2,
)
