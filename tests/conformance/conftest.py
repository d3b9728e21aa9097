"""Fixtures that run every conformance test once per backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runevents.store import RunEventStore
from tests.backends.registry import BACKENDS, Backend


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """The backend under test, over storage of its own."""
    return BACKENDS[request.param](tmp_path / "store")


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[RunEventStore]:
    """A store of the backend under test, closed after the test."""
    opened = backend.open()
    yield opened
    await opened.close()
