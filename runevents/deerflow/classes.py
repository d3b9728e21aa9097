"""deer-flow's store classes, constructible as deer-flow constructs its own, each a runevents store."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from runevents.bus.store import BusRunEventStore as _BusStore
from runevents.deerflow.config import DEERFLOW_MAX_TRACE_CONTENT, DEFAULT_SCHEMA, ConfigError
from runevents.deerflow.store import DeerFlowRunEventStore
from runevents.deerflow.users import Users
from runevents.lifecycle.blobs import BlobStore
from runevents.store import JsonlRunEventStore as _JsonlStore
from runevents.store import MemoryRunEventStore as _MemoryStore
from runevents.tables import migrate
from runevents.tables.sql import SqlRunEventStore

log = logging.getLogger(__name__)

SQLITE_FILE_NAME = "runevents.db"  # beside deer-flow's own SQLite file, whose run_events would collide


class MemoryRunEventStore(DeerFlowRunEventStore):
    """deer-flow's `MemoryRunEventStore()`: runevents' memory store, scoped to deer-flow's current user.

    Beyond deer-flow's arguments, every class takes runevents' `blobs` and `offload_over`: where cut
    contents are kept whole (`get_full_content`), and which categories are cut past which size.
    """

    def __init__(
        self,
        *,
        max_trace_content: int | None = None,
        content_markers: bool = False,
        users: Users | None = None,
        blobs: BlobStore | None = None,
        offload_over: Mapping[str, int] | None = None,
    ) -> None:
        store = _MemoryStore(max_trace_content=max_trace_content, blobs=blobs, offload_over=offload_over)
        super().__init__(store, users=users, content_markers=content_markers)


class JsonlRunEventStore(DeerFlowRunEventStore):
    """deer-flow's `JsonlRunEventStore(base_dir=...)`: the same directory layout, opened in place."""

    def __init__(
        self,
        base_dir: str | os.PathLike[str] | None = None,
        *,
        max_trace_content: int | None = None,
        content_markers: bool = False,
        users: Users | None = None,
        blobs: BlobStore | None = None,
        offload_over: Mapping[str, int] | None = None,
    ) -> None:
        store = _JsonlStore(
            Path(base_dir) if base_dir else Path(".deer-flow"),
            max_trace_content=max_trace_content,
            blobs=blobs,
            offload_over=offload_over,
        )
        super().__init__(store, users=users, content_markers=content_markers)


class DbRunEventStore(DeerFlowRunEventStore):
    """deer-flow's `DbRunEventStore(session_factory)`: runevents' sql store on deer-flow's database.

    The read tables go beside deer-flow's own: in schema `schema` on PostgreSQL, in a file
    `runevents.db` next to deer-flow's on SQLite (deer-flow's `run_events` table has the same name).
    With `migrate`, they are upgraded before the first read or write (one process at a time); without,
    the store refuses with the `runevents db upgrade` command to run.
    """

    def __init__(
        self,
        session_factory: Any,
        *,
        max_trace_content: int | None = DEERFLOW_MAX_TRACE_CONTENT,
        schema: str = DEFAULT_SCHEMA,
        migrate: bool = True,
        content_markers: bool = True,
        users: Users | None = None,
        blobs: BlobStore | None = None,
        offload_over: Mapping[str, int] | None = None,
    ) -> None:
        url = runevents_database(session_factory)
        on_postgresql = make_url(url).get_backend_name() == "postgresql"
        store = SqlRunEventStore(
            url,
            schema=schema if on_postgresql else None,
            max_trace_content=max_trace_content,
            blobs=blobs,
            offload_over=offload_over,
        )
        prepare = None
        if migrate:
            in_schema = schema if on_postgresql else None

            async def prepare() -> None:
                await migrate_tables(url, in_schema)

        super().__init__(store, users=users, content_markers=content_markers, prepare=prepare)


class BusRunEventStore(DeerFlowRunEventStore):
    """runevents' bus store for deer-flow: puts publish to the topic, reads read the projection's tables."""

    def __init__(
        self,
        bootstrap_servers: str,
        database_url: str,
        *,
        max_trace_content: int | None = DEERFLOW_MAX_TRACE_CONTENT,
        content_markers: bool = False,
        users: Users | None = None,
        **options: Any,
    ) -> None:
        store = _BusStore(bootstrap_servers, database_url, max_trace_content=max_trace_content, **options)
        super().__init__(store, users=users, content_markers=content_markers)


async def migrate_tables(url: str, schema: str | None) -> None:
    """Upgrade the read tables at `url` to this runevents' revision."""
    await migrate.upgrade_async(url, schema=schema)


def runevents_database(session_factory: Any) -> str:
    """The URL of the database runevents' tables live in, from deer-flow's session factory."""
    engine = (
        getattr(session_factory, "kw", {}).get("bind")
        if not isinstance(session_factory, AsyncEngine)
        else session_factory
    )
    if not isinstance(engine, AsyncEngine):
        raise ConfigError(
            "DbRunEventStore takes deer-flow's session factory, an async_sessionmaker bound to its engine "
            f"(deerflow.persistence.engine.get_session_factory()); got {type(session_factory).__name__}"
        )
    url: URL = engine.url
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        url = url.set(database=str(Path(url.database).with_name(SQLITE_FILE_NAME)))
    return url.render_as_string(hide_password=False)
