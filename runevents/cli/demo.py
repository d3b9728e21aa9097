"""`runevents demo`: a simulated fleet through a backend, and what it stored, checked."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Final

import orjson
import typer
from aiokafka.errors import KafkaError
from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text
from sqlalchemy.exc import SQLAlchemyError

from runevents.cli.support import error_line, fail, remember_secrets
from runevents.devstack.fleet import RECEIPT, FleetSummary, run_fleet
from runevents.devstack.stack import (
    DATABASE_ENV,
    KAFKA_ENV,
    DevStack,
    DevStackError,
    StackProgress,
    port_taken,
    split_agents,
)
from runevents.errors import RunEventsError, StoreLockedError, UnsupportedDatabaseError
from runevents.events import MIDDLEWARE_CALLER_PREFIX, Record
from runevents.settings import url_secrets
from runevents.store import JsonlRunEventStore, RunEventStore
from runevents.tables.sql import check_database_url

PAGE: Final = 8  # messages per page in the demo (deer-flow's default is 50)
RUN_ROWS: Final = 16  # events of the sample run shown before eliding the rest
THREAD_ROWS: Final = 8  # threads listed one by one in the counts table
ALL: Final = 100_000  # a limit above any run the demo writes
PROGRESS_TICK_S: Final = 0.25  # how often the bus demo's progress bar looks at the topic and the tables


class Backend(StrEnum):
    """Where `runevents demo` writes its fleet."""

    BUS = "bus"
    JSONL = "jsonl"


def demo(
    backend: Annotated[
        Backend,
        typer.Option(
            help="bus: the dev stack (PostgreSQL, a broker, projector and writer processes); "
            "jsonl: files in one process."
        ),
    ] = Backend.BUS,
    agents: Annotated[int, typer.Option(min=1, help="Concurrent simulated agents.")] = 32,
    runs_per_agent: Annotated[int, typer.Option(min=1, help="Runs each agent writes.")] = 20,
    directory: Annotated[
        Path | None,
        typer.Option(
            "--dir",
            help="Empty or new directory for the JSONL files, or (bus) the dev stack's data and logs; "
            "kept (default: a fresh temp dir; the bus demo's is removed unless the demo fails).",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the simulated fleet (same seed, same events).")] = 7,
    writers: Annotated[
        int, typer.Option(min=1, help="bus: writer processes the agents are spread over.")
    ] = 4,
    projectors: Annotated[int, typer.Option(min=1, help="bus: projector processes in the group.")] = 2,
    partitions: Annotated[int, typer.Option(min=1, help="bus: partitions of the demo's topic.")] = 6,
) -> None:
    """Run a simulated fleet of agents through a backend (the bus by default) and show what was stored."""
    if directory is not None and directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise typer.BadParameter(
            f"{directory} is not an empty directory; the demo writes a fresh fleet", param_hint="--dir"
        )
    console = Console(highlight=False)
    if backend is Backend.JSONL:
        base = directory or Path(tempfile.mkdtemp(prefix="runevents-demo-"))
        failed = asyncio.run(_demo(console, base, agents, runs_per_agent, seed))
    else:
        fleet = _Fleet(agents, runs_per_agent, seed, writers)
        failed = _run_bus_demo(console, directory, fleet, partitions=partitions, projectors=projectors)
    if failed:
        raise typer.Exit(1)


async def _demo(console: Console, base: Path, agents: int, runs_per_agent: int, seed: int) -> list[str]:
    """Run the fleet, show what was stored, and return the names of the checks that failed."""
    console.print(
        f"[bold]runevents demo[/]: {agents} agents x {runs_per_agent} runs (seed {seed}) -> "
        "[bold]jsonl[/] backend, durability=flush"
    )
    # soft_wrap: a long path stays one line that the terminal wraps, so it can be copied whole.
    console.print(Text(f"files (kept): {base}/threads/<thread>/runs/<run>.jsonl\n"), soft_wrap=True)
    checks: dict[str, tuple[bool, str]] = {}  # name -> (passed, the line that says so)
    async with JsonlRunEventStore(base) as store:
        summary = await run_fleet(store, agents=agents, runs_per_agent=runs_per_agent, seed=seed)
        _print_written(console, summary, base)
        thread = max(summary.events_by_thread, key=lambda t: (summary.events_by_thread[t], t))
        await _print_messages(console, store, thread, summary.threads[thread])
        await _print_run(console, store, thread, summary.threads[thread])
        checks["receipts"] = await _check_receipts(store, summary)
        before = {t: await _thread_counts(store, t, runs) for t, runs in summary.threads.items()}
        checks["lock"] = await _check_second_store(base, thread)
    async with JsonlRunEventStore(base) as reopened:
        after = {t: await _thread_counts(reopened, t, runs) for t, runs in summary.threads.items()}
        same = _print_counts(console, summary, before, after)
        record = await reopened.put(
            thread_id=thread,
            run_id=summary.threads[thread][-1],
            event_type="demo.reopened",
            category="trace",
            content="a write after reopening",
            metadata={"caller": "runevents demo"},
        )
    checks["reopen counts"] = (same, "")
    last_seq = before[thread][2]
    continues = record["seq"] == last_seq + 1
    verdict = "[green]continues[/]" if continues else "[red]does NOT continue[/]"
    checks["seq continues"] = (
        continues,
        f"write after reopen: {thread} got seq {record['seq']} (last {last_seq}): seq {verdict}",
    )
    for _, line in checks.values():
        if line:
            console.print(line)
    failed = [name for name, (ok, _) in checks.items() if not ok]
    if failed:
        console.print(f"[bold red]FAILED[/]: {', '.join(failed)}")
    else:
        console.print(f"[bold green]all {len(checks)} checks passed[/]: {', '.join(checks)}")
    return failed


def _print_written(console: Console, summary: FleetSummary, base: Path) -> None:
    files = list(base.glob("threads/*/runs/*.jsonl"))
    size = sum(path.stat().st_size for path in files)
    console.print(
        f"wrote [bold]{summary.events:,}[/] events ({len(summary.threads):,} threads, {summary.runs:,} runs) "
        f"in {summary.seconds:.2f} s: [bold]{summary.events_per_second:,.0f} events/s[/]"
    )
    console.print(
        "  the time includes the simulated agents; make bench times the store alone\n"
        f"  on disk: {len(files):,} run files, {size / 1024:,.0f} KiB ({size / max(summary.events, 1):,.0f} "
        f"bytes/event); {summary.batches:,} put_batch calls\n"
        f"  {summary.receipts_created:,} run.delivery receipts by put_if_absent; "
        f"{summary.receipts_repeated:,} repeated calls wrote nothing\n"
    )


def _caller(record: Record) -> str:
    return str(record["metadata"].get("caller", ""))


def _kind_and_preview(record: Record) -> tuple[str, str]:
    """A message's kind (human, ai, tool:<name> or the middleware that wrote it) and its text."""
    content: Any = record["content"]
    if not isinstance(content, dict):
        text = content if isinstance(content, str) else orjson.dumps(content).decode()
        return record["event_type"], text
    kind = str(content.get("type", record["event_type"]))
    text = str(content.get("content") or "")
    calls = content.get("tool_calls") or []
    if not text and calls:
        text = "-> " + ", ".join(str(call.get("name")) for call in calls)
    if kind == "tool":
        kind = f"tool:{content.get('name')}"
    if _caller(record).startswith(MIDDLEWARE_CALLER_PREFIX):
        kind = _caller(record)
    return kind, text


def _table(*columns: str, flexible: str = "") -> Table:
    # Only the flexible column gives up width on a narrow terminal; its cells end in an ellipsis.
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for column in columns:
        numeric = column in ("seq", "bytes", "runs", "written", "stored", "messages", "last seq")
        table.add_column(
            column, justify="right" if numeric else "left", no_wrap=column != flexible, max_width=64
        )
    return table


def _cell(text: str) -> Text:
    return Text(" ".join(text.split()), no_wrap=True, overflow="ellipsis")


async def _print_messages(console: Console, store: RunEventStore, thread: str, runs: list[str]) -> None:
    page = await store.list_messages(thread, limit=PAGE)
    console.print(f"[bold]{thread}[/], latest messages: list_messages(limit={PAGE})")
    table = _table("seq", "run", "kind", "preview", flexible="preview")
    for record in page:
        kind, text = _kind_and_preview(record)
        style = "dim" if kind.startswith(MIDDLEWARE_CALLER_PREFIX) else None
        row = (str(record["seq"]), record["run_id"], kind, text)
        table.add_row(*(_cell(cell) for cell in row), style=style)
    console.print(table)
    if not page:
        return
    older = await store.list_messages(thread, limit=PAGE, before_seq=page[0]["seq"])
    span = f"seq {older[0]['seq']}..{older[-1]['seq']}" if older else "nothing"
    console.print(f"  paging back like deer-flow: list_messages(before_seq={page[0]['seq']}) -> {span}")
    visible = await store.get_last_visible_ai_seq_by_run(thread, runs[-5:])
    shown = " ".join(f"{run.rsplit('-', 1)[-1]}={seq}" for run, seq in visible.items())
    console.print(f"  last visible AI seq per run: {shown}\n")


async def _sample_run(store: RunEventStore, thread: str, runs: list[str]) -> tuple[str, list[Record]]:
    # The shortest run that delegated to a subagent, so the task_id filter has something to show.
    events = {run: await store.list_events(thread, run, limit=ALL) for run in runs}
    with_task = [run for run in runs if any(e["event_type"] == "subagent.start" for e in events[run])]
    run = min(with_task or runs, key=lambda r: len(events[r]))
    return run, events[run]


async def _print_run(console: Console, store: RunEventStore, thread: str, runs: list[str]) -> None:
    run, events = await _sample_run(store, thread, runs)
    console.print(f"[bold]{run}[/], every event: list_events({thread}, {run})")
    table = _table("seq", "event_type", "category", "caller / task_id", "bytes", flexible="caller / task_id")
    # A long run shows its head and its tail (run.end and the receipt), not just the head.
    shown = events if len(events) <= RUN_ROWS else [*events[: RUN_ROWS - 4], None, *events[-4:]]
    for record in shown:
        if record is None:
            table.add_row("...", f"{len(events) - RUN_ROWS + 1} more")
            continue
        task_id = record["metadata"].get("task_id")
        who = f"{_caller(record)} / {task_id}" if task_id else _caller(record)
        size = f"{len(orjson.dumps(record['content'])):,}"
        cells = (str(record["seq"]), record["event_type"], record["category"], who, size)
        table.add_row(*(_cell(cell) for cell in cells))
    console.print(table)
    task_ids = [e["metadata"]["task_id"] for e in events if e["event_type"] == "subagent.start"]
    if task_ids:
        steps = await store.list_events(thread, run, task_id=task_ids[0])
        kinds = Counter(e["event_type"].removeprefix("subagent.") for e in steps)
        steps_shown = ", ".join(kind if count == 1 else f"{kind} x{count}" for kind, count in kinds.items())
        console.print(f"  list_events(task_id={task_ids[0]}) -> {len(steps)} events: {steps_shown}")
    console.print()


async def _check_receipts(store: RunEventStore, summary: FleetSummary) -> tuple[bool, str]:
    per_run = [
        len(await store.list_events(thread, run, event_types=[RECEIPT]))
        for thread, runs in summary.threads.items()
        for run in runs
    ]
    ok = all(count == 1 for count in per_run)
    verdict = "[green]exactly one each[/]" if ok else f"[red]counts {sorted(set(per_run))}[/]"
    return ok, f"run.delivery receipts across {len(per_run)} runs: {verdict}"


async def _thread_counts(store: RunEventStore, thread: str, runs: list[str]) -> tuple[int, int, int]:
    """(events stored, messages, last seq) of one thread."""
    events = [record for run in runs for record in await store.list_events(thread, run, limit=ALL)]
    return len(events), await store.count_messages(thread), max((e["seq"] for e in events), default=0)


async def _check_second_store(base: Path, thread: str) -> tuple[bool, str]:
    try:
        async with JsonlRunEventStore(base) as second:
            await second.count_messages(thread)
    except StoreLockedError:
        return True, "a second store on the open directory: [green]refused[/] (StoreLockedError)"
    return False, "a second store on the open directory: [red]NOT refused[/]"


def _print_counts(
    console: Console,
    summary: FleetSummary,
    before: dict[str, tuple[int, int, int]],
    after: dict[str, tuple[int, int, int]],
) -> bool:
    console.print("[bold]per thread[/]: written by the fleet, stored (list_events, count_messages), reopened")
    table = _table("thread", "runs", "written", "stored", "messages", "last seq", "after reopen")
    threads = list(summary.threads)
    same = {t: after[t] == before[t] and before[t][0] == summary.events_by_thread[t] for t in threads}
    for thread in threads[:THREAD_ROWS]:
        stored, messages, last_seq = before[thread]
        verdict = "[green]same[/]" if same[thread] else f"[red]{after[thread]}[/]"
        cells = (len(summary.threads[thread]), summary.events_by_thread[thread], stored, messages, last_seq)
        table.add_row(thread, *(str(cell) for cell in cells), verdict)
    rest = threads[THREAD_ROWS:]
    if rest:
        # A big fleet shows its first threads and one row that sums (and checks) the others.
        totals = [
            sum(len(summary.threads[t]) for t in rest),
            sum(summary.events_by_thread[t] for t in rest),
            sum(before[t][0] for t in rest),
            sum(before[t][1] for t in rest),
        ]
        failed = [t for t in rest if not same[t]]
        verdict = "[green]same[/]" if not failed else f"[red]{len(failed)} differ[/]"
        table.add_row(f"{len(rest)} more threads", *(str(total) for total in totals), "", verdict)
    console.print(table)
    return all(same.values())


@dataclass(frozen=True, slots=True)
class _Fleet:
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


def _run_bus_demo(
    console: Console, directory: Path | None, fleet: _Fleet, *, partitions: int, projectors: int
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
        failed = asyncio.run(_bus_demo(console, stack, fleet))
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


async def _bus_demo(console: Console, stack: DevStack, fleet: _Fleet) -> list[str]:
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
    return failed


async def _write_with_progress(
    console: Console, stack: DevStack, fleet: _Fleet
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
    thread = max(summary.events_by_thread, key=lambda t: (summary.events_by_thread[t], t))
    await _print_messages(console, store, thread, summary.threads[thread])
    stored = {t: await _stored_thread(store, t, runs) for t, runs in summary.threads.items()}
    _print_bus_counts(console, summary, stored)
    return {
        "lag 0": (settled.lag == 0, f"projector lag after the fleet: {settled.lag:,} records"),
        "seq 1..n": _check_gap_free(stored),
        "counts": _check_counts(summary, stored, settled),
        "acks stored": _check_acknowledged(summary, stored),
        "receipts": await _check_receipts(store, summary),
    }


async def _stored_thread(store: RunEventStore, thread: str, runs: list[str]) -> _Stored:
    """Every record of a thread (run by run, then by seq) and its message count, through the store."""
    records = [record for run in runs for record in await store.list_events(thread, run, limit=ALL)]
    records.sort(key=lambda record: record["seq"])
    return _Stored(records, await store.count_messages(thread))


def _print_bus_counts(console: Console, summary: FleetSummary, stored: dict[str, _Stored]) -> None:
    console.print("[bold]per thread[/]: written by the fleet, stored (list_events, count_messages)")
    table = _table("thread", "runs", "written", "stored", "messages", "last seq", "seq")
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
