"""Waiting for the projector: a writer's record is readable once its partition's stored offset passes it.

The projector notifies on every commit (LISTEN/NOTIFY); notifications can be missed (a dropped
connection, a listener started late), so the stored offsets are also polled while anyone waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from typing import Any, Final

import asyncpg

from runevents.consumer.projector import NOTIFY_CHANNEL
from runevents.errors import RunEventsError
from runevents.store import writes
from runevents.store.schema import projection_offsets

log = logging.getLogger(__name__)

DEFAULT_POLL_INTERVAL_S: Final = 0.5


class ProjectionTimeout(RunEventsError):
    """The event is durable on the topic, but the projection did not reach it within the wait."""


class ProjectionWatcher:
    """Knows how far a projection has got in each partition of its topic, and wakes those waiting."""

    def __init__(
        self,
        database_url: str,
        *,
        projection: str,
        topic: str,
        schema: str | None = None,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
    ) -> None:
        self._dsn = writes.libpq_dsn(database_url)
        self._projection = projection
        self._topic = topic
        self._schema = schema
        self._poll_interval_s = poll_interval_s
        self._poll_sql = (
            f"SELECT partition, next_offset FROM {writes.qualified(projection_offsets, schema)} "
            "WHERE projection = $1 AND topic = $2"
        )
        self._reached: dict[int, int] = {}
        self._waiters: dict[int, list[tuple[int, asyncio.Future[None]]]] = defaultdict(list)
        self._listener: asyncpg.Connection | None = None
        self._poller: asyncio.Task[None] | None = None
        self._starting = asyncio.Lock()
        self._poke = asyncio.Event()

    async def start(self) -> None:
        """Listen for the projector's notifications and start polling (once; later calls return)."""
        async with self._starting:
            if self._poller is not None:
                return
            await self._listen()
            self._poller = asyncio.create_task(self._poll())

    async def _listen(self) -> None:
        """(Re)open the LISTEN connection."""
        self._listener = await asyncpg.connect(self._dsn)
        await self._listener.add_listener(NOTIFY_CHANNEL, self._notified)

    async def close(self) -> None:
        """Stop listening and polling; anyone still waiting gets a `ProjectionTimeout`-free cancel."""
        if self._poller is not None:
            self._poller.cancel()
            # The poller never ends on its own; whatever it ended with, closing goes on.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._poller
            self._poller = None
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
            self._listener = None
        for waiting in self._waiters.values():
            for _, future in waiting:
                future.cancel()
        self._waiters.clear()

    async def wait(self, positions: dict[int, int], timeout_s: float) -> None:
        """Wait until the projection has applied every partition's record at `positions[partition]`."""
        await self.start()
        loop = asyncio.get_running_loop()
        futures = []
        for partition, offset in positions.items():
            if self._reached.get(partition, -1) > offset:
                continue
            future: asyncio.Future[None] = loop.create_future()
            self._waiters[partition].append((offset, future))
            futures.append(future)
        if not futures:
            return
        self._poke.set()  # a first poll now: the offsets may have passed before the listener started
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*futures)
        except TimeoutError:
            behind = {p: o for p, o in positions.items() if self._reached.get(p, -1) <= o}
            raise ProjectionTimeout(
                f"projection {self._projection!r} did not reach {behind} (partition: offset) of topic "
                f"{self._topic!r} within {timeout_s:g}s; the events are durable on the topic and will "
                "appear once a projector applies them"
            ) from None
        finally:
            for future in futures:
                future.cancel()

    def _advance(self, partition: int, next_offset: int) -> None:
        if next_offset <= self._reached.get(partition, -1):
            return
        self._reached[partition] = next_offset
        waiting = self._waiters.get(partition)
        if not waiting:
            return
        still = []
        for offset, future in waiting:
            if offset < next_offset:
                if not future.done():
                    future.set_result(None)
            elif not future.done():
                still.append((offset, future))
        self._waiters[partition] = still

    def _notified(self, connection: Any, pid: int, channel: str, payload: str) -> None:
        schema, projection, topic, reached = payload.split("\t")
        if (schema or None, projection, topic) == (self._schema, self._projection, self._topic):
            for part in reached.split(","):
                partition, next_offset = part.split(":")
                self._advance(int(partition), int(next_offset))

    async def _poll(self) -> None:
        connection: asyncpg.Connection | None = None
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll_interval_s):
                        await self._poke.wait()
                self._poke.clear()
                if not any(self._waiters.values()):
                    continue
                try:
                    if self._listener is None or self._listener.is_closed():
                        # The server ended it (a restart, a killed backend): notifications resume.
                        await self._listen()
                    if connection is None or connection.is_closed():
                        connection = await asyncpg.connect(self._dsn)
                    for partition, next_offset in await connection.fetch(
                        self._poll_sql, self._projection, self._topic
                    ):
                        self._advance(partition, next_offset)
                # Any failure, asyncpg's InternalClientError included: the poller is the waiters'
                # fallback and must outlive whatever the database does.
                except Exception as exc:
                    log.warning("polling the projection's offsets failed (%s); trying again", exc)
                    if connection is not None:
                        connection.terminate()
                    connection = None
        finally:
            if connection is not None:
                with contextlib.suppress(Exception):
                    await connection.close()
