"""The read tables' Alembic migrations: upgrade a database, and check that one is at this version's head.

The revisions live in the package (`runevents/tables/migrations`), so an installed wheel can upgrade a
database without an alembic.ini: the Alembic `Config` is built here, in code.
"""

from __future__ import annotations

import asyncio
import threading
from functools import cache
from pathlib import Path
from typing import Final

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from runevents.errors import SchemaOutdatedError

MIGRATIONS_DIR: Final = Path(__file__).resolve().parent / "migrations"
_ONE_AT_A_TIME: Final = threading.Lock()


def alembic_config(url: str, *, schema: str | None = None) -> Config:
    """An Alembic config for the package's revisions on the database at `url` (no alembic.ini)."""
    if schema is not None and make_url(url).get_backend_name() != "postgresql":
        raise ValueError(f"a schema name is for PostgreSQL only, not {make_url(url).get_backend_name()}")
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # New revisions are named by their id alone: `--rev-id 0002_what_changed` gives 0002_what_changed.py.
    config.set_main_option("file_template", "%%(rev)s")
    # Attributes, not ini options: configparser would read a '%' of a URL-encoded password as interpolation.
    config.attributes["url"] = url
    config.attributes["schema"] = schema
    return config


def upgrade(url: str, *, schema: str | None = None, revision: str = "head") -> None:
    """Upgrade the read tables at `url` (in `schema`, PostgreSQL only) to `revision`; sync, for the CLI."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        # env.py runs the revisions with asyncio.run, which cannot nest in a running loop.
        raise RuntimeError("migrate.upgrade() is synchronous; from async code, await upgrade_async()")
    # Alembic keeps the running migration's context in module globals: one upgrade at a time per
    # process (processes take turns through an advisory lock in env.py).
    with _ONE_AT_A_TIME:
        command.upgrade(alembic_config(url, schema=schema), revision)


async def upgrade_async(url: str, *, schema: str | None = None, revision: str = "head") -> None:
    """Upgrade the read tables at `url` (to head, or to `revision`) from async code, in a worker thread."""
    await asyncio.to_thread(upgrade, url, schema=schema, revision=revision)


@cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory(str(MIGRATIONS_DIR))


@cache
def head_revision() -> str:
    """The revision the read tables of this version of runevents are at."""
    head = _scripts().get_current_head()
    if head is None:
        raise RuntimeError(f"no Alembic revision in {MIGRATIONS_DIR / 'versions'}")
    return head


@cache
def _known_revisions() -> frozenset[str]:
    return frozenset(script.revision for script in _scripts().walk_revisions())


def is_known_revision(revision: str) -> bool:
    """Whether every head of `revision` (heads joined by commas) is one of this runevents' revisions."""
    return all(head in _known_revisions() for head in revision.split(","))


def _current_heads(connection: Connection, schema: str | None) -> tuple[str, ...]:
    context = MigrationContext.configure(connection, opts={"version_table_schema": schema})
    return context.get_current_heads()


async def current_revision(connection: AsyncConnection, *, schema: str | None = None) -> str | None:
    """The revision the read tables behind `connection` are at, or None before the first upgrade."""
    heads = await connection.run_sync(_current_heads, schema)
    return ",".join(heads) or None


async def check_schema(connection: AsyncConnection, *, schema: str | None = None) -> None:
    """Raise `SchemaOutdatedError` unless the read tables behind `connection` are at `head_revision()`."""
    head = head_revision()
    heads = await connection.run_sync(_current_heads, schema)
    if heads == (head,):
        return
    where = connection.engine.url.render_as_string(hide_password=True)
    if connection.dialect.name == "postgresql":
        where += f" (schema {schema or connection.dialect.default_schema_name})"
    at = ",".join(heads) or "none"
    if all(revision in _known_revisions() for revision in heads):
        option = "" if schema is None else f" --schema {schema}"
        raise SchemaOutdatedError(
            f"the read tables at {where} are at revision {at}; this runevents needs {head}: "
            f"run `runevents db upgrade URL{option}`"
        )
    raise SchemaOutdatedError(
        f"the read tables at {where} are at revision {at}, which this runevents does not know "
        f"(it needs {head}): upgrade runevents, or point it at another database"
    )
