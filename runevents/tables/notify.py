"""Thread notifications: which threads a commit wrote or deleted, told on a PostgreSQL channel.

Writers send them inside their transaction, so PostgreSQL delivers them at commit (never for a
rollback); subscriptions listen (tables/listener.py). A payload is `schema TAB op TAB thread TAB ...`:
ids hold no control characters (the event rules refuse them), so a tab cannot be inside one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

THREADS_CHANNEL: Final = "runevents_threads"
WRITTEN: Final = "w"
DELETED: Final = "d"
# PostgreSQL refuses payloads of 8000 bytes or more; a commit of many threads is told in several.
_PAYLOAD_LIMIT: Final = 7000

_NOTIFY_SQL: Final = (
    "SELECT count(pg_notify(channel, payload)) FROM unnest($1::text[], $2::text[]) AS n(channel, payload)"
)
_NOTIFY_TEXT: Final = text(
    "SELECT count(pg_notify(:channel, payload)) FROM unnest(CAST(:payloads AS text[])) AS payload"
)


@dataclass(frozen=True, slots=True)
class ThreadNotice:
    """One decoded notification: the schema written, what happened, and to which threads."""

    schema: str | None
    op: Literal["w", "d"]
    thread_ids: tuple[str, ...]


def payloads(schema: str | None, op: Literal["w", "d"], thread_ids: Iterable[str]) -> list[str]:
    """The payloads telling that `op` happened to `thread_ids` in `schema`."""
    head = f"{schema or ''}\t{op}"
    found: list[str] = []
    current = head
    for thread_id in thread_ids:
        if len(current) + len(thread_id) + 1 > _PAYLOAD_LIMIT:
            found.append(current)
            current = head
        current += "\t" + thread_id
    if current != head:
        found.append(current)
    return found


def decode(payload: str) -> ThreadNotice | None:
    """The notice a payload carries, or None for one this version does not know."""
    schema, op, *thread_ids = payload.split("\t")
    if op not in (WRITTEN, DELETED) or not thread_ids:
        return None
    return ThreadNotice(schema or None, WRITTEN if op == WRITTEN else DELETED, tuple(thread_ids))


async def notify_asyncpg(
    connection: asyncpg.Connection,
    schema: str | None,
    op: Literal["w", "d"],
    thread_ids: Iterable[str],
    *,
    also: Sequence[tuple[str, str]] = (),
) -> None:
    """Queue the notices on an asyncpg connection's transaction, and `also` (channel, payload) pairs."""
    told = [(THREADS_CHANNEL, payload) for payload in payloads(schema, op, thread_ids)]
    told += also
    # One statement for every channel: a round trip per batch written, not per channel.
    await connection.fetchval(_NOTIFY_SQL, [channel for channel, _ in told], [payload for _, payload in told])


async def notify(
    connection: AsyncConnection, schema: str | None, op: Literal["w", "d"], thread_ids: Iterable[str]
) -> None:
    """Queue the notices on a SQLAlchemy connection's transaction (PostgreSQL only; SQLite has none)."""
    if connection.dialect.name == "postgresql":
        await connection.execute(
            _NOTIFY_TEXT, {"channel": THREADS_CHANNEL, "payloads": payloads(schema, op, thread_ids)}
        )
