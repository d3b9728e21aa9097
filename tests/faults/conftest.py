"""Fixtures of the fault tests: the bus tests' migrated database, and a topic of six partitions."""

from __future__ import annotations

import uuid

import pytest

from runevents.bus.topic import create_topic
from tests.bus.conftest import bus_db

__all__ = ["WIDE_PARTITIONS", "bus_db", "wide_topic"]

WIDE_PARTITIONS = 6


@pytest.fixture
async def wide_topic(kafka_bootstrap: str) -> str:
    """A fresh topic of `WIDE_PARTITIONS` partitions."""
    name = f"faults-{uuid.uuid4().hex[:12]}"
    assert await create_topic(kafka_bootstrap, name, partitions=WIDE_PARTITIONS)
    return name
