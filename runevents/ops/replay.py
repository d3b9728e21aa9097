"""Replay: the read tables rebuilt from the topic, into a projection of their own, while the live one serves.

A replay is a projector with a new projection name and a schema of its own, run over every
partition from the stored offsets of that projection (0 the first time) until it has caught up with
the end of the log. Its offsets are committed with each batch, as any projector's, so a replay that
was stopped or killed goes on from where it was. It refuses a topic whose log no longer starts at
offset 0: tables built from part of the history would look complete and not be.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import select

from runevents.bus.names import DEFAULT_PROJECTION, DEFAULT_TOPIC
from runevents.bus.projector.loop import Projector
from runevents.bus.topic import TopicMissingError, log_offsets
from runevents.crypto.keyring import KeyWrapper
from runevents.errors import RunEventsError
from runevents.names import check_identifier, check_topic
from runevents.tables.migrate import upgrade_async
from runevents.tables.schema import projection_offsets
from runevents.tables.sql import engine_for

TICK_S: Final = 0.25

# Per partition: the replay's next offset, and the end of the log as last fetched (None: not yet known).
Progress = dict[int, tuple[int, int | None]]


class ReplayError(RunEventsError):
    """A replay that cannot start or go on; the message says why."""


def missing_history(earliest: Mapping[int, int]) -> str | None:
    """Why a log whose partitions start at `earliest` cannot be replayed whole; None if it can."""
    gone = {partition: offset for partition, offset in sorted(earliest.items()) if offset > 0}
    if not gone:
        return None
    starts = ", ".join(
        f"partition {partition} starts at offset {offset:,}" for partition, offset in gone.items()
    )
    return (
        f"the topic's log does not start at offset 0 ({starts}): retention is not -1, and "
        f"{sum(gone.values()):,} records of history are gone; tables replayed from the rest would "
        "look complete and not be"
    )


@dataclass(frozen=True, slots=True)
class Replayed:
    """How a replay ended: records applied by this run, how long it took, and where it stands."""

    records: int
    seconds: float
    reached: dict[int, int]
    caught_up: bool

    @property
    def rate(self) -> float:
        """Records of the topic applied per second by this run."""
        return self.records / self.seconds if self.seconds > 0 else 0.0


async def stored_offsets(
    database_url: str, schema: str | None, projection: str, topic: str
) -> dict[int, int]:
    """The next offset a projection stored for each partition of `topic` (none: not started)."""
    engine = engine_for(database_url, schema=schema)
    offsets = projection_offsets.c
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                select(offsets.partition, offsets.next_offset).where(
                    offsets.projection == projection, offsets.topic == topic
                )
            )
            return {row.partition: row.next_offset for row in rows}
    finally:
        await engine.dispose()


def caught_up(progress: Progress, partitions: int) -> bool:
    """Whether every one of `partitions` partitions has reached the end of its log as last fetched."""
    return len(progress) == partitions and all(
        end is not None and done >= end for done, end in progress.values()
    )


async def replay(
    bootstrap_servers: str,
    database_url: str,
    *,
    projection: str,
    schema: str | None = None,
    topic: str = DEFAULT_TOPIC,
    on_progress: Callable[[Progress], None] | None = None,
    stop: asyncio.Event | None = None,
    max_batch: int = 5000,
    tick_s: float = TICK_S,
    client_options: Mapping[str, Any] | None = None,
    keyring: KeyWrapper | None = None,
) -> Replayed:
    """Project the whole topic into `projection` (schema: its name) until caught up or stopped; sealed
    records are opened with `keyring` (those of erased threads become erased tombstones)."""
    # Names first (a projection's name is its schema's default name): a refused one creates nothing.
    check_identifier("projection", projection)
    schema = check_identifier("schema", schema or projection)
    check_topic(topic)
    if projection == DEFAULT_PROJECTION:
        raise ReplayError(f"{DEFAULT_PROJECTION!r} is the live projection's name; replay into a new one")
    try:
        earliest = await log_offsets(bootstrap_servers, topic, "start", client_options=client_options)
    except TopicMissingError as error:
        raise ReplayError(str(error)) from None
    problem = missing_history(earliest)
    if problem is not None:
        raise ReplayError(problem)
    await upgrade_async(database_url, schema=schema)
    # Where a stopped or killed replay had got to: this run's count and rate are of its own work.
    resumed_at = sum((await stored_offsets(database_url, schema, projection, topic)).values())
    projector = Projector(
        bootstrap_servers,
        database_url,
        topic=topic,
        projection=projection,
        schema=schema,
        partitions=sorted(earliest),
        max_batch=max_batch,
        client_options=dict(client_options or {}),
        keyring=keyring,
    )
    stop = stop or asyncio.Event()
    halt = asyncio.Event()
    running = asyncio.create_task(projector.run(halt))
    stopping = asyncio.ensure_future(stop.wait())
    started = time.monotonic()
    progress: Progress = {}
    try:
        while not (caught_up(progress, len(earliest)) or stop.is_set()):
            await asyncio.wait([running, stopping], timeout=tick_s, return_when=asyncio.FIRST_COMPLETED)
            if running.done():
                running.result()  # the projector's own error, if it had one, is the replay's
                raise ReplayError("the projector stopped before the replay caught up")
            progress = projector.progress()
            if on_progress is not None and progress:
                on_progress(progress)
    finally:
        stopping.cancel()
        if not running.done():
            halt.set()
            await running
    # The batch in hand when told to stop is committed first: where the replay stands is known only
    # now (the log's ends are those last fetched; the stopped consumer knows none).
    final = projector.progress()
    progress = {
        partition: (final.get(partition, (done, end))[0], end) for partition, (done, end) in progress.items()
    }
    reached = {partition: done for partition, (done, _) in progress.items()}
    return Replayed(
        records=sum(reached.values()) - resumed_at,
        seconds=time.monotonic() - started,
        reached=reached,
        caught_up=caught_up(progress, len(earliest)),
    )
