"""`runevents demo --backend bus`: the fleet's writer processes on the dev stack, a progress bar
following the topic and the projection, and the checks of what the read tables hold."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import typer
from aiokafka.errors import KafkaError
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text
from sqlalchemy.exc import SQLAlchemyError

from runevents.cli.demo_output import (
    ALL,
    THREAD_ROWS,
    busiest_thread,
    check_receipts,
    demo_table,
    print_messages,
)
from runevents.cli.demo_serve import serve_until_stopped
from runevents.cli.support import error_line, fail, remember_secrets
from runevents.devstack.fleet import FleetSummary
from runevents.devstack.stack import (
    DATABASE_ENV,
    KAFKA_ENV,
    DevStack,
    DevStackError,
    StackProgress,
    port_taken,
    split_agents,
)
from runevents.errors import RunEventsError, UnsupportedDatabaseError
from runevents.events import Record
from runevents.settings import url_secrets
from runevents.store import RunEventStore
from runevents.tables.sql import check_database_url

PROGRESS_TICK_S: Final = 0.25  # how often the bus demo's progress bar looks at the topic and the tables


@dataclass(frozen=True, slots=True)
class Fleet:
    """The simulated fleet the bus demo runs: its size, seed, and the processes it is spread over."""

    agents: int
    runs_per_agent: int
    seed: int
    writers: int

    @property
    def processes(self) -> int:
        """The writer processes the agents are spread over (never more than the agents)."""
        return len(split_agents(self.agents, self.writers))


@dataclass(frozen=True, slots=True)
class _Stored:
    """One thread as the read tables hold it: every record (ascending seq) and its message count."""

    records: list[Record]
    messages: int

    @property
    def gap_free(self) -> bool:
        """Whether the thread's seqs are exactly 1..n."""
        return [record["seq"] for record in self.records] == list(range(1, len(self.records) + 1))


def run_bus_demo(
    console: Console,
    directory: Path | None,
    fleet: Fleet,
    *,
    partitions: int,
    projectors: int,
    serve: bool = False,
) -> list[str]:
    """Run the bus demo on the dev stack, turning any failure into one line; the failed checks' names."""
    database_url = os.environ.get(DATABASE_ENV) or None
    if database_url is not None:
        remember_secrets(*url_secrets(database_url))
        try:
            backend = check_database_url(database_url).get_backend_name()
        except UnsupportedDatabaseError as error:
            fail(f"{DATABASE_ENV}: {error}")
        if backend != "postgresql":
            fail(
                f"{DATABASE_ENV}: the bus demo's read tables are in PostgreSQL, expected a postgresql:// URL"
            )
    work_dir = directory or Path(tempfile.mkdtemp(prefix="runevents-devstack-"))
    stack = DevStack(
        work_dir,
        database_url=database_url,
        bootstrap_servers=os.environ.get(KAFKA_ENV) or None,
        partitions=partitions,
        projectors=projectors,
    )
    kafka_log = logging.getLogger("aiokafka")
    level = kafka_log.level
    # The Kafka client logs each failed connection attempt; the demo gets the same failures as
    # exceptions and says them in one line.
    kafka_log.setLevel(logging.CRITICAL)
    failed: list[str] = []
    failure = ""
    interrupted = False
    try:
        failed = asyncio.run(_bus_demo(console, stack, fleet, serve))
    except KeyboardInterrupt:
        interrupted = True
    except DevStackError as error:
        cause = f": {error_line(error.__cause__)}" if error.__cause__ else ""
        port = "; a port was taken while starting, run it again" if port_taken(error) else ""
        failure = f"{error}{cause}{port}"
    except (RunEventsError, SQLAlchemyError, KafkaError, OSError) as error:
        failure = f"the demo failed: {error_line(error)}"
    finally:
        kafka_log.setLevel(level)
    logs = work_dir.is_dir() and any(work_dir.iterdir())
    # The stack's files are kept when asked for, or when a failure left logs worth reading.
    keep = directory is not None or (logs and bool(failure or failed) and not interrupted)
    if not keep:
        shutil.rmtree(work_dir, ignore_errors=True)
    if interrupted:
        console.print("interrupted: the writers, the projectors and the dev stack are stopped")
        raise typer.Exit(130)
    if failure:
        fail(failure + (f" (logs in {work_dir})" if keep else ""))
    if failed and keep:
        console.print(f"the dev stack's logs are in {work_dir}")
    return failed


async def _bus_demo(console: Console, stack: DevStack, fleet: Fleet, serve: bool) -> list[str]:
    """Start the dev stack, run the fleet's writer processes, show what was stored; the failed checks."""
    console.print(
        f"[bold]runevents demo[/]: {fleet.agents} agents x {fleet.runs_per_agent} runs (seed {fleet.seed}) "
        "-> [bold]bus[/] backend"
    )
    started = time.perf_counter()
    async with stack:
        console.print(f"dev stack up in {time.perf_counter() - started:.1f} s:")
        for line in stack.describe():
            console.print(Text(f"  {line}"), soft_wrap=True)
        per = f"{fleet.agents / fleet.processes:.3g}"
        console.print(f"  {fleet.processes} writer processes, {per} agents each, writing through the topic\n")
        summary, settled = await _write_with_progress(console, stack, fleet)
        async with stack.store() as store:
            checks = await _show_bus_fleet(console, store, summary, settled, fleet.processes)
        if serve:
            # The projectors keep running: what the viewer follows live is the projection as it is.
            await serve_until_stopped(console, stack.store(), busiest_thread(summary))
        codes = await stack.stop_projectors()
    stopped = all(code == 0 for code in codes)
    shown = ", ".join(str(code) for code in codes)
    verdict = "[green]clean[/]" if stopped else "[red]NOT clean[/]"
    checks["clean stop"] = (
        stopped,
        f"{len(codes)} projector processes stopped by SIGTERM: exit {shown}, {verdict}",
    )
    for _, line in checks.values():
        console.print(line)
    failed = [name for name, (ok, _) in checks.items() if not ok]
    total = f"{time.perf_counter() - started:.1f} s"
    if failed:
        console.print(f"[bold red]FAILED[/] after {total}: {', '.join(failed)}")
    else:
        console.print(f"[bold green]all {len(checks)} checks passed[/] in {total}: {', '.join(checks)}")
    if not serve:
        console.print(
            "to browse these runs in the run viewer, keep the stack up: runevents demo --serve "
            "(this one is gone now)"
        )
    return failed


async def _write_with_progress(
    console: Console, stack: DevStack, fleet: Fleet
) -> tuple[FleetSummary, StackProgress]:
    """Run the writer processes while a progress bar follows the topic and the projection."""
    writing = asyncio.create_task(
        stack.write_fleet(
            writers=fleet.writers, agents=fleet.agents, runs_per_agent=fleet.runs_per_agent, seed=fleet.seed
        )
    )
    # Fits 80 columns: runs done (the bar), records on the topic, events projected, lag, rate, ETA.
    columns = (
        BarColumn(bar_width=10),
        TaskProgressColumn(),
        TextColumn("published {task.fields[published]:,} projected {task.fields[events]:,}"),
        TextColumn("lag {task.fields[lag]:,} {task.fields[rate]:,.0f} events/s"),
        TimeRemainingColumn(),
    )
    first_record: float | None = None  # the rate counts from the first record, not the processes' start
    try:
        with Progress(*columns, console=console) as bar:
            total = fleet.agents * fleet.runs_per_agent
            task = bar.add_task("writing", total=total, published=0, events=0, lag=0, rate=0.0)
            done = False
            while not done:
                # The fleet's end is checked before the last look, so the bar ends on the final numbers.
                await asyncio.wait({writing}, timeout=PROGRESS_TICK_S)
                done = writing.done()
                if done and writing.exception() is not None:
                    break
                now = await (stack.settled() if done else stack.progress())
                if first_record is None and now.published:
                    first_record = time.perf_counter()
                seconds = time.perf_counter() - (first_record or time.perf_counter())
                bar.update(
                    task,
                    completed=now.runs,
                    published=now.published,
                    events=now.events,
                    lag=now.lag,
                    rate=now.events / seconds if seconds > 0 else 0.0,
                )
    finally:
        if not writing.done():
            writing.cancel()
        # Reaped whatever happened, so no writer process outlives the demo.
        await asyncio.gather(writing, return_exceptions=True)
    return writing.result(), now


async def _show_bus_fleet(
    console: Console, store: RunEventStore, summary: FleetSummary, settled: StackProgress, processes: int
) -> dict[str, tuple[bool, str]]:
    """Print the rate, a thread's messages and per-thread counts; return the checks (name -> passed, line)."""
    size = f"{len(summary.threads):,} threads, {summary.runs:,} runs"
    took = f"from {processes} writer processes in {summary.seconds:.2f} s"
    console.print(f"\nwrote [bold]{summary.events:,}[/] events ({size}) {took}")
    console.print(
        f"  [bold]{summary.events_per_second:,.0f} events/s end to end[/]: every put_batch and "
        "put_if_absent\n  returned once its records were projected and readable (read-your-writes)\n"
        f"  {settled.published:,} records on the topic, {summary.receipts_repeated:,} of them repeated "
        f"receipts\n  that wrote nothing; projector lag at the end: [bold]{settled.lag:,} records[/]\n"
    )
    thread = busiest_thread(summary)
    await print_messages(console, store, thread, summary.threads[thread])
    stored = {t: await _stored_thread(store, t, runs) for t, runs in summary.threads.items()}
    _print_bus_counts(console, summary, stored)
    return {
        "lag 0": (settled.lag == 0, f"projector lag after the fleet: {settled.lag:,} records"),
        "seq 1..n": _check_gap_free(stored),
        "counts": _check_counts(summary, stored, settled),
        "acks stored": _check_acknowledged(summary, stored),
        "receipts": await check_receipts(store, summary),
    }


async def _stored_thread(store: RunEventStore, thread: str, runs: list[str]) -> _Stored:
    """Every record of a thread (run by run, then by seq) and its message count, through the store."""
    records = [record for run in runs for record in await store.list_events(thread, run, limit=ALL)]
    records.sort(key=lambda record: record["seq"])
    return _Stored(records, await store.count_messages(thread))


def _print_bus_counts(console: Console, summary: FleetSummary, stored: dict[str, _Stored]) -> None:
    console.print("[bold]per thread[/]: written by the fleet, stored (list_events, count_messages)")
    table = demo_table("thread", "runs", "written", "stored", "messages", "last seq", "seq")
    threads = list(summary.threads)
    for thread in threads[:THREAD_ROWS]:
        records = stored[thread].records
        last = records[-1]["seq"] if records else 0
        cells = (len(summary.threads[thread]), summary.events_by_thread[thread], len(records))
        verdict = "[green]1..n[/]" if stored[thread].gap_free else "[red]gaps[/]"
        table.add_row(
            thread, *(str(cell) for cell in cells), str(stored[thread].messages), str(last), verdict
        )
    rest = threads[THREAD_ROWS:]
    if rest:
        # A big fleet shows its first threads and one row that sums (and checks) the others.
        totals = [
            sum(len(summary.threads[t]) for t in rest),
            sum(summary.events_by_thread[t] for t in rest),
            sum(len(stored[t].records) for t in rest),
            sum(stored[t].messages for t in rest),
        ]
        gaps = [t for t in rest if not stored[t].gap_free]
        verdict = "[green]1..n[/]" if not gaps else f"[red]{len(gaps)} with gaps[/]"
        table.add_row(f"{len(rest)} more threads", *(str(total) for total in totals), "", verdict)
    console.print(table)


def _check_gap_free(stored: dict[str, _Stored]) -> tuple[bool, str]:
    gaps = [thread for thread, rows in stored.items() if not rows.gap_free]
    verdict = "[green]1..n in every one[/]" if not gaps else f"[red]gaps in {', '.join(gaps[:3])}[/]"
    return not gaps, f"seq of {len(stored)} threads: {verdict}"


def _check_counts(
    summary: FleetSummary, stored: dict[str, _Stored], settled: StackProgress
) -> tuple[bool, str]:
    # Written by the fleet = rows read back = the counter rows' counts, thread by thread and in all.
    rows = sum(len(thread.records) for thread in stored.values())
    wrong = [
        thread
        for thread, rows_of in stored.items()
        if len(rows_of.records) != summary.events_by_thread[thread]
        or rows_of.messages != sum(1 for r in rows_of.records if r["category"] == "message")
    ]
    ok = not wrong and rows == summary.events == settled.events
    verdict = "[green]equal[/]" if ok else f"[red]differ ({', '.join(wrong[:3]) or 'in all'})[/]"
    return ok, (
        f"events written {summary.events:,}, read back {rows:,}, counted {settled.events:,}; "
        f"per thread: {verdict}"
    )


def _check_acknowledged(summary: FleetSummary, stored: dict[str, _Stored]) -> tuple[bool, str]:
    found = {(r["thread_id"], r["seq"], r["event_id"]) for rows in stored.values() for r in rows.records}
    missing = [ack for ack in summary.acknowledged if ack not in found]
    verdict = "[green]all stored at their seq[/]" if not missing else f"[red]{len(missing)} missing[/]"
    return not missing, f"records the writers got back: {len(summary.acknowledged):,}, {verdict}"
