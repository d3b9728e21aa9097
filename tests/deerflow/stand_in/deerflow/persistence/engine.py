"""Stand-in for `deerflow.persistence.engine`: one async engine and session factory per process.

`init_engine` also creates deer-flow's own `run_events` table (its columns), as deer-flow's startup
does, so that the tests show runevents' tables living beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

_engine: AsyncEngine | None = None
_session_factory: async_sessionmaker[AsyncSession] | None = None

DEERFLOW_RUN_EVENTS = """CREATE TABLE IF NOT EXISTS run_events (
    id INTEGER PRIMARY KEY, thread_id VARCHAR(64) NOT NULL, run_id VARCHAR(64) NOT NULL,
    user_id VARCHAR(64), event_type VARCHAR(32) NOT NULL, category VARCHAR(16) NOT NULL,
    content TEXT NOT NULL DEFAULT '', event_metadata TEXT NOT NULL DEFAULT '{}', seq INTEGER NOT NULL,
    created_at TIMESTAMP NOT NULL, CONSTRAINT uq_events_thread_seq UNIQUE (thread_id, seq))"""


async def init_engine(backend: str, *, url: str = "", sqlite_dir: str = "", **_: Any) -> None:
    """Create the engine and session factory for `backend` (memory: none), and deer-flow's table."""
    global _engine, _session_factory
    if backend == "memory":
        return
    if backend not in ("sqlite", "postgres"):
        raise ValueError(f"Unknown persistence backend: {backend!r}")
    if sqlite_dir:
        Path(sqlite_dir).mkdir(parents=True, exist_ok=True)
    _engine = create_async_engine(url)
    _session_factory = async_sessionmaker(_engine, expire_on_commit=False)
    async with _engine.begin() as connection:
        await connection.execute(text(DEERFLOW_RUN_EVENTS))


def get_session_factory() -> async_sessionmaker[AsyncSession] | None:
    """The session factory, or None before `init_engine` (or with backend memory)."""
    return _session_factory


def get_engine() -> AsyncEngine | None:
    """The engine, or None."""
    return _engine


async def close_engine() -> None:
    """Dispose of the engine."""
    global _engine, _session_factory
    if _engine is not None:
        await _engine.dispose()
    _engine = None
    _session_factory = None
