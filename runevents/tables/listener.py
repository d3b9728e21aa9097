"""One LISTEN connection per database and event loop, fanning thread notifications out to subscriptions.

Every subscription of a process to a PostgreSQL database watches a doorbell here; the writers (the sql
store, the bus's projector) notify on commit (tables/notify.py). The connection opens with the first
subscription and closes with the last. If it drops, it reconnects and rings every subscription to
read again from its last seq, so a notification lost meanwhile costs a read, never a record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, ClassVar, Final

import asyncpg

from runevents.masking import error_line
from runevents.store.subscriptions import Doorbell, Doorbells
from runevents.tables.failures import DATABASE_ERRORS, ReadFailedError, reason_of
from runevents.tables.notify import DELETED, THREADS_CHANNEL, decode

log = logging.getLogger(__name__)

RECONNECT_FIRST_S: Final = 0.1
RECONNECT_MAX_S: Final = 5.0
CONNECT_TIMEOUT_S: Final = 10.0


class ThreadListener:
    """The LISTEN connection of one database in one event loop, and the doorbells it rings."""

    _open: ClassVar[dict[tuple[int, str], ThreadListener]] = {}

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        # Per schema: a delete in one tenant's schema must not end another's subscriptions of a thread id.
        self._doorbells: dict[str | None, Doorbells] = {}
        self._connection: asyncpg.Connection | None = None
        self._connecting = asyncio.Lock()
        self._reconnecting: asyncio.Task[None] | None = None
        self._watchers = 0

    @classmethod
    @contextlib.asynccontextmanager
    async def watch(cls, dsn: str, schema: str | None, thread_id: str) -> AsyncIterator[Doorbell]:
        """A doorbell for `thread_id` in `schema`, rung once the listener has heard of a commit to it."""
        key = (id(asyncio.get_running_loop()), dsn)
        listener = cls._open.get(key)
        if listener is None:
            listener = cls._open[key] = cls(dsn)
        listener._watchers += 1
        try:
            doorbells = listener._doorbells.setdefault(schema, Doorbells())
            with doorbells.watch(thread_id) as bell:
                # Listening before the subscription's first read: nothing committed after it is missed.
                await listener._connect()
                yield bell
        finally:
            listener._watchers -= 1
            if listener._watchers == 0:
                del cls._open[key]
                await listener._close()

    async def _connect(self) -> None:
        async with self._connecting:
            if self._connection is not None:
                return
            try:
                connection = await asyncpg.connect(self._dsn, timeout=CONNECT_TIMEOUT_S)
                await connection.add_listener(THREADS_CHANNEL, self._heard)
            except DATABASE_ERRORS as exc:
                raise ReadFailedError(
                    f"listening to the read tables' database failed: {reason_of(exc)}"
                ) from exc
            connection.add_termination_listener(self._lost)
            self._connection = connection

    def _heard(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        notice = decode(payload)
        if notice is None:
            return
        for schema, doorbells in self._doorbells.items():
            if notice.op != DELETED:
                doorbells.ring(notice.thread_ids)
            elif schema == notice.schema:
                doorbells.ring(notice.thread_ids, deleted=True)
            else:
                # A delete in another schema (or one a serving schema's views show): the subscription
                # checks its own thread's seq counter, which went back only if its thread was deleted.
                doorbells.ring(notice.thread_ids, resync=True)

    def _lost(self, _connection: Any) -> None:
        self._connection = None
        if self._watchers and self._reconnecting is None:
            self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        delay = RECONNECT_FIRST_S
        try:
            while self._watchers:
                try:
                    await self._connect()
                except ReadFailedError as exc:
                    log.warning("the subscriptions' LISTEN connection is down, retrying: %s", error_line(exc))
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RECONNECT_MAX_S)
                    continue
                # Whatever was committed while no one listened: every subscription reads again.
                for doorbells in self._doorbells.values():
                    doorbells.ring_all(resync=True)
                return
        finally:
            self._reconnecting = None

    async def _close(self) -> None:
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnecting
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.remove_termination_listener(self._lost)
            with contextlib.suppress(*DATABASE_ERRORS, OSError):
                await connection.close(timeout=2)
