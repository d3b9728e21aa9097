"""Fixtures of the usage tests: the bus tests' migrated database and fresh topic."""

from tests.bus.conftest import bus_db, topic

__all__ = ["bus_db", "topic"]
