"""Waiting for the projector: a writer's record is readable once its partition's stored offset passes it.

The projector notifies on every commit (LISTEN/NOTIFY); notifications can be missed (a dropped
connection, a listener started late), so the stored offsets are also polled while anyone waits.
A small batch's commit also tells the seqs it gave (SEQS_CHANNEL): a writer that `expect`ed its events
finds them `told` once its wait is over, and reads back only what it was not told.

Pointed at a serving schema (see `runevents.ops.promote`), the watcher follows whichever projection
is served: each poll reads the served projection's name with its offsets, and a promotion makes it
forget what it knew of the previous one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Final

import asyncpg
from sqlalchemy import MetaData, Table
from sqlalchemy.engine import make_url

from runevents.bus.names import NOTIFY_CHANNEL, SEQS_CHANNEL
from runevents.errors import RunEventsError
from runevents.metrics import READ_YOUR_WRITES_WAIT
from runevents.names import check_identifier, check_topic
from runevents.retrying import RETRY_MAX_S, one_line, pause
from runevents.tables import writes
from runevents.tables.schema import projection_offsets

log = logging.getLogger(__name__)

DEFAULT_POLL_INTERVAL_S: Final = 0.5
# Each connect and query: a database that does not answer (unreachable, not refusing) must not
# hold the poller, a resync or a close for the minutes the operating system would wait.
DATABASE_TIMEOUT_S: Final = 10.0
# Closing a connection sends Terminate and waits for the server to hang up: not for long.
CLOSE_TIMEOUT_S: Final = 1.0


def _schema_name(schema: str | None) -> str:
    # A projector without a schema writes to the default one, told as "" in its notifications.
    return schema or "public"


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
        self._projection = check_identifier("projection", projection)
        self._topic = check_topic(topic)
        self._schema = None if schema is None else check_identifier("schema", schema)
        self._secrets = (make_url(database_url).password,)
        self._poll_interval_s = poll_interval_s
        # Whose notifications count, as (schema, projection); in a serving schema, learned by polling.
        self._following: tuple[str, str] | None = (_schema_name(schema), projection)
        self._serving = False
        self._poll_sql = (
            f"SELECT partition, next_offset, $1::text, $3::text FROM "
            f"{writes.qualified(projection_offsets, schema)} WHERE projection = $1 AND topic = $2"
        )
        self._generation = 0
        self._reached: dict[int, int] = {}
        self._waiters: dict[int, list[tuple[int, asyncio.Future[None]]]] = defaultdict(list)
        # The events writers expect the seqs of: None until a notification tells it.
        self._expected: dict[str, int | None] = {}
        self._listener: asyncpg.Connection | None = None
        self._poller: asyncio.Task[None] | None = None
        self._starting = asyncio.Lock()
        # Serving schemas only: the connection and lock of the look each wait takes first (`_refresh`).
        self._refreshing = asyncio.Lock()
        self._refresh_connection: asyncpg.Connection | None = None
        self._poke = asyncio.Event()
        # Set by close(): the poller ends on it, its waits cut short.
        self._closing = asyncio.Event()

    async def start(self) -> None:
        """Listen for the projector's notifications and start polling (once; later calls return)."""
        async with self._starting:
            if self._poller is not None:
                return
            await self._listen()
            assert self._listener is not None
            if self._schema is not None and await self._listener.fetchval(
                "SELECT to_regclass(format('%I.promotions', $1::text)) IS NOT NULL",
                self._schema,
                timeout=DATABASE_TIMEOUT_S,
            ):
                self._follow_serving()
            self._closing.clear()  # started again after a close
            self._poller = asyncio.create_task(self._poll())

    def _follow_serving(self) -> None:
        self._serving = True
        self._following = None
        # The serving schema's projection_offsets shows the served projection's rows only; its
        # latest promotion names that projection, read in the same snapshot as the offsets.
        promotions = writes.qualified(Table("promotions", MetaData()), self._schema)
        self._poll_sql = (
            "SELECT o.partition, o.next_offset, p.projection, p.projection_schema "
            f"FROM {writes.qualified(projection_offsets, self._schema)} o, "
            f"(SELECT projection, projection_schema FROM {promotions} ORDER BY id DESC LIMIT 1) p "
            "WHERE o.topic = $2 AND $1::text = $1 AND $3::text = $3"  # the same parameters as unserved
        )

    @property
    def generation(self) -> int:
        """How many times the projection followed has changed (promotions seen in the serving schema)."""
        return self._generation

    async def resync(self, generation: int) -> bool:
        """Poll now; return whether the projection followed has changed since `generation`."""
        connection = await self._connect()
        try:
            self._apply(await self._fetch_offsets(connection))
        finally:
            await _close(connection)
        return self._generation != generation

    async def _connect(self) -> asyncpg.Connection:
        connection: asyncpg.Connection = await asyncpg.connect(self._dsn, timeout=DATABASE_TIMEOUT_S)
        return connection

    async def _fetch_offsets(self, connection: asyncpg.Connection) -> list[Any]:
        rows: list[Any] = await connection.fetch(
            self._poll_sql,
            self._projection,
            self._topic,
            self._schema or "public",
            timeout=DATABASE_TIMEOUT_S,
        )
        return rows

    def _apply(self, rows: list[Any]) -> None:
        """Take a poll's rows: (partition, next_offset, projection, its schema)."""
        for partition, next_offset, projection, schema in rows:
            followed = (_schema_name(schema), projection)
            if self._serving and followed != self._following:
                if self._following is not None:
                    # Promoted: the old projection's offsets and seqs say nothing of the new one's.
                    self._reached.clear()
                    self._expected = dict.fromkeys(self._expected)
                    self._generation += 1
                self._following = followed
            self._advance(partition, next_offset)

    async def _listen(self) -> None:
        """(Re)open the LISTEN connection."""
        self._listener = await self._connect()
        await self._listener.add_listener(NOTIFY_CHANNEL, self._notified)
        await self._listener.add_listener(SEQS_CHANNEL, self._told_seqs)

    async def close(self) -> None:
        """Stop listening and polling; anyone still waiting gets a `ProjectionTimeout`-free cancel."""
        self._closing.set()
        if self._poller is not None:
            # Cancelled, not only told: it may be inside a connect or a query that does not answer.
            self._poller.cancel()
            # Whatever it ended with, closing goes on (its own close of its connection is bounded).
            await asyncio.wait((self._poller,), timeout=CLOSE_TIMEOUT_S + 1)
            self._poller = None
        if self._listener is not None:
            await _close(self._listener)
            self._listener = None
        if self._refresh_connection is not None:
            await _close(self._refresh_connection)
            self._refresh_connection = None
        for waiting in self._waiters.values():
            for _, future in waiting:
                future.cancel()
        self._waiters.clear()

    async def wait(self, positions: dict[int, int], timeout_s: float) -> None:
        """Wait until the projection has applied every partition's record at `positions[partition]`."""
        await self.start()
        if self._serving:
            await self._refresh()
        loop = asyncio.get_running_loop()
        futures = []
        for partition, offset in positions.items():
            if self._reached.get(partition, -1) > offset:
                continue
            future: asyncio.Future[None] = loop.create_future()
            self._waiters[partition].append((offset, future))
            futures.append(future)
        if not futures:
            READ_YOUR_WRITES_WAIT.labels(self._topic).observe(0.0)
            return
        self._poke.set()  # a first poll now: the offsets may have passed before the listener started
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*futures)
            READ_YOUR_WRITES_WAIT.labels(self._topic).observe(time.perf_counter() - started)
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

    async def _refresh(self) -> None:
        """Poll now, on a connection of its own: which projection is served is learned by polling, and a
        promotion made before a wait began must count, not the notifications of the one served before."""
        async with self._refreshing:
            try:
                if self._refresh_connection is None or self._refresh_connection.is_closed():
                    self._refresh_connection = await self._connect()
                self._apply(await self._fetch_offsets(self._refresh_connection))
            except Exception as exc:  # the poller is the fallback; the wait goes on without this look
                log.warning("looking up the served projection failed (%s)", one_line(exc, *self._secrets))
                if self._refresh_connection is not None:
                    self._refresh_connection.terminate()
                self._refresh_connection = None

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
        if ((_schema_name(schema), projection), topic) == (self._following, self._topic):
            for part in reached.split(","):
                partition, next_offset = part.split(":")
                self._advance(int(partition), int(next_offset))

    def expect(self, event_ids: Sequence[str]) -> None:
        """Keep the seqs of `event_ids` that notifications tell, until `forget`."""
        for event_id in event_ids:
            self._expected.setdefault(event_id, None)

    def told(self, event_ids: Sequence[str]) -> dict[str, int]:
        """The seqs notifications told of `event_ids` (those expected) so far."""
        if self._serving:
            # Which projection is served is learned by polling: a seq told by the one served a moment
            # ago would skip the read-back that finds a promotion (ProjectedRecordMissingError).
            return {}
        expected = self._expected
        return {event_id: seq for event_id in event_ids if (seq := expected.get(event_id)) is not None}

    def forget(self, event_ids: Sequence[str]) -> None:
        """Stop keeping the seqs of `event_ids`."""
        for event_id in event_ids:
            self._expected.pop(event_id, None)

    def _told_seqs(self, connection: Any, pid: int, channel: str, payload: str) -> None:
        schema, projection, topic, told = payload.split("\t")
        if ((_schema_name(schema), projection), topic) != (self._following, self._topic):
            return
        expected = self._expected
        if not expected:
            return
        for part in told.split(","):
            event_id, seq = part.split(":")
            if event_id in expected:
                expected[event_id] = int(seq)

    async def _poll(self) -> None:
        connection: asyncpg.Connection | None = None
        # After a failure, the next poll waits longer (up to RETRY_MAX_S): one line a try, not a flood.
        backoff = 0.0
        try:
            while not self._closing.is_set():
                if backoff:
                    if await pause(self._closing, backoff):
                        break
                else:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._poll_interval_s):
                            await self._poke.wait()
                self._poke.clear()
                if self._closing.is_set() or not any(self._waiters.values()):
                    continue
                try:
                    if self._listener is None or self._listener.is_closed():
                        # The server ended it (a restart, a killed backend): notifications resume.
                        await self._listen()
                    if connection is None or connection.is_closed():
                        connection = await self._connect()
                    self._apply(await self._fetch_offsets(connection))
                    backoff = 0.0
                # Any failure, asyncpg's InternalClientError included: the poller is the waiters'
                # fallback and must outlive whatever the database does.
                except Exception as exc:
                    backoff = min(max(backoff * 2, self._poll_interval_s), RETRY_MAX_S)
                    log.warning(
                        "polling the projection's offsets failed (%s); trying again in %g s",
                        one_line(exc, *self._secrets),
                        backoff,
                    )
                    if connection is not None:
                        connection.terminate()
                    connection = None
        finally:
            if connection is not None:
                await _close(connection)


async def _close(connection: asyncpg.Connection) -> None:
    """Close `connection`, politely if the server answers within CLOSE_TIMEOUT_S, else by dropping it."""
    # asyncpg aborts the connection itself when the polite close fails or times out.
    with contextlib.suppress(Exception):
        await connection.close(timeout=CLOSE_TIMEOUT_S)
