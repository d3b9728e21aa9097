"""Processes the dev stack runs in sessions of their own: starting, reaping, and the fleet's writers.

`python -m runevents.devstack.processes` is one writer process: it reads its `WriterSpec` as JSON on
stdin and prints its `WriterReport` as JSON on stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Final

from pydantic import BaseModel

from runevents.bus.store import BusRunEventStore
from runevents.devstack.fleet import FleetSummary, run_fleet
from runevents.devstack.services import DATABASE_ENV, KAFKA_ENV, DevStackError
from runevents.heap import HEAP_TOP_PAD

STOP_TIMEOUT_S: Final = 30.0


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


def split_agents(agents: int, writers: int) -> list[tuple[int, int]]:
    """(first agent, agents) of each writer: `agents` spread as evenly as they go over `writers`."""
    writers = max(1, min(writers, agents))
    bounds = [agents * n // writers for n in range(writers + 1)]
    return [(start, end - start) for start, end in itertools.pairwise(bounds)]


async def spawn(
    work_dir: Path,
    name: str,
    args: list[str],
    *,
    database_url: str,
    bootstrap_servers: str,
    stdin: bool = False,
) -> asyncio.subprocess.Process:
    """Run this Python on `args` in a session of its own, its output to `<name>.log` in `work_dir`."""
    # The URL and servers travel in the environment, not argv, where `ps` would show a password.
    env = {**os.environ, DATABASE_ENV: database_url, KAFKA_ENV: bootstrap_servers}
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("MALLOC_TOP_PAD_", str(HEAP_TOP_PAD))  # see runevents.heap: writers too
    work_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (one mkdir per process started: cheaper than a thread)
    with (work_dir / f"{name}.log").open("ab") as log:
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


async def run_writers(work_dir: Path, specs: Sequence[WriterSpec]) -> list[WriterReport]:
    """Run one writer process per spec, all at once; return their reports, in the order of `specs`."""
    processes: list[asyncio.subprocess.Process] = []
    try:
        processes += [
            await spawn(
                work_dir,
                f"writer-{n}",
                ["-m", __name__],
                database_url=spec.database_url,
                bootstrap_servers=spec.bootstrap_servers,
                stdin=True,
            )
            for n, spec in enumerate(specs)
        ]
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(_writer_report(work_dir, number, process, spec))
                for number, (process, spec) in enumerate(zip(processes, specs, strict=True))
            ]
    except BaseExceptionGroup as group_error:
        # One writer's failure says it best; the others were cancelled because of it.
        raise group_error.exceptions[0] from None
    finally:
        # Only a failed or interrupted fleet leaves writers running; their work is moot by then.
        for process in processes:
            signal_if_running(process, signal.SIGKILL)
            await reap(process)
    return [task.result() for task in tasks]


async def reap(process: asyncio.subprocess.Process) -> int:
    """Wait for `process` to exit; kill it past a deadline. Its exit code (negative: a signal's)."""
    try:
        return await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
    except TimeoutError:
        signal_if_running(process, signal.SIGKILL)
        return await process.wait()


def signal_if_running(process: asyncio.subprocess.Process, signum: int) -> None:
    """Send `signum` to `process` unless it has exited already."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)


def last_line(log: Path) -> str:
    """The last non-empty line of a process's log, for a one-line error."""
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except FileNotFoundError:
        return "(no log)"
    return f"{lines[-1].strip()} (log: {log})" if lines else f"(empty log: {log})"


async def _writer_report(
    work_dir: Path, number: int, process: asyncio.subprocess.Process, spec: WriterSpec
) -> WriterReport:
    """Hand one writer its spec, wait for it, and read its report."""
    out, _ = await process.communicate(spec.model_dump_json().encode())
    if process.returncode != 0:
        raise DevStackError(
            f"writer process {number} exited with code {process.returncode}: "
            f"{last_line(work_dir / f'writer-{number}.log')}"
        )
    return WriterReport.model_validate_json(out)


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
