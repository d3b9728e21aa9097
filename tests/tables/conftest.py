"""Fixtures of the sql backend's own tests: migrated SQLite and PostgreSQL databases."""

from tests.tables.support import database_url, migrated_pg, migrated_url

__all__ = ["database_url", "migrated_pg", "migrated_url"]
