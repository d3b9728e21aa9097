"""Deprecated path, kept for this version: the sql store moved to `runevents.tables.sql`."""

import warnings

from runevents.tables.sql import LIBPQ_TLS, SqlRunEventStore, check_database_url, engine_for

__all__ = ["LIBPQ_TLS", "SqlRunEventStore", "check_database_url", "engine_for"]

warnings.warn(
    "runevents.store.sql moved to runevents.tables.sql; the old path goes away in the next version",
    DeprecationWarning,
    stacklevel=2,
)
