"""The dev stack behind `runevents demo`: PostgreSQL, a broker, the read tables, a topic, projector
processes, and the writer processes of a simulated fleet.

The services (`runevents.devstack.services`) are local ones from PyPI wheels unless
`RUNEVENTS_DATABASE_URL` / `RUNEVENTS_KAFKA` name running ones. Either way the stack works in a
schema, a topic and a projection (hence a consumer group) of its own, fresh each run, so it never
touches data it did not create. Its projectors and writers run as processes of their own
(`runevents.devstack.processes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from runevents.bus.store import BusRunEventStore
from runevents.bus.topic import create_topic
from runevents.devstack.fleet import RECEIPT, FleetSummary, combine
from runevents.devstack.processes import (
    WriterSpec,
    last_line,
    reap,
    run_writers,
    signal_if_running,
    spawn,
    split_agents,
)
from runevents.devstack.services import (
    DATABASE_ENV,
    KAFKA_ENV,
    DevStackError,
    StackServices,
    port_taken,
    stage,
)
from runevents.tables.migrate import upgrade_async
from runevents.tables.schema import projection_offsets, run_events, thread_counters
from runevents.tables.sql import engine_for

# What `runevents demo` imports from here; some of it lives in `services` and `processes`.
__all__ = [
    "DATABASE_ENV",
    "KAFKA_ENV",
    "DevStack",
    "DevStackError",
    "StackProgress",
    "port_taken",
    "split_agents",
]

# Tansu completes a group join only after half the session timeout: a short one starts the projectors
# in about a second, and a stopped one's partitions move on as fast.
SESSION_TIMEOUT_MS: Final = 2000
READY_TIMEOUT_S: Final = 60.0
SETTLE_TIMEOUT_S: Final = 15.0
_POLL_S: Final = 0.1


@dataclass(frozen=True, slots=True)
class StackProgress:
    """Where the stack stands: records on the topic, records projected, what the read tables hold."""

    published: int
    applied: int
    events: int
    runs: int

    @property
    def lag(self) -> int:
        """Records on the topic that the projection has not applied yet."""
        return max(self.published - self.applied, 0)


class DevStack:
    """PostgreSQL, a broker, fresh read tables and topic, and projector processes; `async with` runs them."""

    def __init__(
        self,
        work_dir: Path,
        *,
        database_url: str | None = None,
        bootstrap_servers: str | None = None,
        partitions: int = 6,
        projectors: int = 2,
    ) -> None:
        self.work_dir = work_dir
        self.partitions = partitions
        self.projectors = projectors
        # One fresh name for the schema, the topic and the projection (so the consumer group too).
        self.name = f"demo_{uuid.uuid4().hex[:10]}"
        self._services = StackServices(
            work_dir, database_url=database_url, bootstrap_servers=bootstrap_servers
        )
        self._engine: AsyncEngine | None = None
        self._monitor: AIOKafkaConsumer | None = None
        self._partitions = [TopicPartition(self.name, n) for n in range(partitions)]
        self._projectors: list[asyncio.subprocess.Process] = []
        self._cleanup = contextlib.AsyncExitStack()

    @property
    def database_url(self) -> str:
        """The SQLAlchemy URL of the stack's PostgreSQL."""
        return self._services.database_url

    @property
    def bootstrap_servers(self) -> str:
        """The bootstrap servers of the stack's broker."""
        return self._services.bootstrap_servers

    def describe(self) -> list[str]:
        """One line per part of the stack: what it is and where."""
        services = self._services.describe()
        schema_kept, topic_kept = (" (kept)" if named else "" for named in self._services.named)
        return [
            *services,
            f"read tables in schema {self.name}{schema_kept}, "
            f"topic {self.name}{topic_kept} ({self.partitions} partitions)",
            f"{len(self._projectors)} projector processes sharing the topic in one consumer group "
            f"(projection {self.name})",
        ]

    async def __aenter__(self) -> DevStack:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start the services, migrate a fresh schema, create the topic, and start the projectors."""
        await self._services.start(self._cleanup)
        shown = make_url(self.database_url).render_as_string(hide_password=True)
        with stage(f"cannot create the read tables in {shown} (schema {self.name})"):
            await upgrade_async(self.database_url, schema=self.name)
        with stage(f"cannot create topic {self.name} on {self.bootstrap_servers}"):
            await create_topic(self.bootstrap_servers, self.name, partitions=self.partitions)
        self._engine = engine_for(self.database_url, schema=self.name, pool_size=2)
        self._cleanup.push_async_callback(self._engine.dispose)
        with stage(f"cannot read topic {self.name} on {self.bootstrap_servers}"):
            await self._start_monitor()
        self._cleanup.push_async_callback(self.stop_projectors)
        for number in range(self.projectors):
            self._projectors.append(await self._spawn_projector(number))
        await self._wait_for_projectors()

    async def stop(self) -> None:
        """Stop the projectors and the services this stack started; safe to call again."""
        cleanup, self._cleanup = self._cleanup, contextlib.AsyncExitStack()
        await cleanup.aclose()

    def store(self) -> BusRunEventStore:
        """A bus store on the stack's topic, projection and schema (the caller closes it)."""
        return BusRunEventStore(
            self.bootstrap_servers, self.database_url, topic=self.name, projection=self.name, schema=self.name
        )

    async def progress(self) -> StackProgress:
        """How far the writers and the projectors have got; raises if a projector process died."""
        self._raise_if_a_projector_exited()
        assert self._monitor is not None
        assert self._engine is not None
        # Drained so the monitor keeps fetching: each fetch response brings the partitions' high water
        # (end_offsets is wrong on some brokers, Tansu among them; the fetched high water is not).
        await self._monitor.getmany(timeout_ms=0, max_records=100_000)
        published = sum(self._monitor.highwater(tp) or 0 for tp in self._partitions)
        o = projection_offsets.c
        async with self._engine.connect() as connection:
            applied = await connection.scalar(
                select(func.coalesce(func.sum(o.next_offset), 0)).where(
                    o.projection == self.name, o.topic == self.name
                )
            )
            events = await connection.scalar(
                select(func.coalesce(func.sum(thread_counters.c.event_count), 0))
            )
            runs = await connection.scalar(
                select(func.count()).select_from(run_events).where(run_events.c.event_type == RECEIPT)
            )
        return StackProgress(published, int(applied or 0), int(events or 0), int(runs or 0))

    async def settled(self, timeout_s: float = SETTLE_TIMEOUT_S) -> StackProgress:
        """The progress once the monitor has seen the whole topic and the projection has applied it all."""
        assert self._monitor is not None
        deadline = time.monotonic() + timeout_s
        while True:
            progress = await self.progress()
            # Equal, not just lag 0: a high water fetched before the last writes would read as no lag.
            positions = [await self._monitor.position(tp) for tp in self._partitions]
            highs = [self._monitor.highwater(tp) for tp in self._partitions]
            if progress.published == progress.applied and positions == highs:
                return progress
            if time.monotonic() > deadline:
                return progress
            await asyncio.sleep(_POLL_S)

    async def write_fleet(self, *, writers: int, agents: int, runs_per_agent: int, seed: int) -> FleetSummary:
        """Run the simulated fleet split across `writers` processes; return what they wrote, combined."""
        specs = [
            WriterSpec(
                bootstrap_servers=self.bootstrap_servers,
                database_url=self.database_url,
                topic=self.name,
                projection=self.name,
                db_schema=self.name,
                first_agent=first,
                agents=count,
                runs_per_agent=runs_per_agent,
                seed=seed,
            )
            for first, count in split_agents(agents, writers)
        ]
        reports = await run_writers(self.work_dir, specs)
        span = max(r.finished_at for r in reports) - min(r.started_at for r in reports)
        return combine([report.summary for report in reports], span)

    async def stop_projectors(self) -> list[int]:
        """SIGTERM the projectors and wait for each; return their exit codes (negative: killed)."""
        processes, self._projectors = self._projectors, []
        for process in processes:
            signal_if_running(process, signal.SIGTERM)
        return [await reap(process) for process in processes]

    async def _start_monitor(self) -> None:
        """A consumer of the whole topic that only watches its high water, for the published count."""
        monitor = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers, enable_auto_commit=False, fetch_max_wait_ms=100
        )
        await monitor.start()
        self._monitor = monitor
        self._cleanup.push_async_callback(monitor.stop)
        monitor.assign(self._partitions)
        await monitor.seek_to_beginning(*self._partitions)

    async def _spawn_projector(self, number: int) -> asyncio.subprocess.Process:
        """Start `runevents project` in a process of its own, in the stack's projection and group."""
        args = ["-m", "runevents.cli", "project", "--topic", self.name, "--projection", self.name]
        args += ["--metrics-port", "0"]  # several projectors on one host: none serves metrics
        args += ["--schema", self.name, "--session-timeout-ms", str(SESSION_TIMEOUT_MS)]
        return await spawn(
            self.work_dir,
            f"projector-{number}",
            args,
            database_url=self.database_url,
            bootstrap_servers=self.bootstrap_servers,
        )

    async def _wait_for_projectors(self) -> None:
        """Wait until the projectors have taken every partition (each has a stored offset row)."""
        assert self._engine is not None
        o = projection_offsets.c
        counted = select(func.count()).where(o.projection == self.name, o.topic == self.name)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            self._raise_if_a_projector_exited()
            async with self._engine.connect() as connection:
                if await connection.scalar(counted) == self.partitions:
                    return
            if time.monotonic() > deadline:
                raise DevStackError(
                    f"the projectors did not take the topic's partitions within {READY_TIMEOUT_S:.0f} s "
                    f"(logs in {self.work_dir})"
                )
            await asyncio.sleep(_POLL_S)

    def _raise_if_a_projector_exited(self) -> None:
        for number, process in enumerate(self._projectors):
            if process.returncode is not None:
                raise DevStackError(
                    f"projector process {number} exited with code {process.returncode}: "
                    f"{last_line(self.work_dir / f'projector-{number}.log')}"
                )
