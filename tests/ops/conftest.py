"""Fixtures of the operations tests: the bus tests' migrated database, topic, projectors and store."""

from tests.bus.conftest import bus_db, bus_store, make_projector, topic

__all__ = ["bus_db", "bus_store", "make_projector", "topic"]
