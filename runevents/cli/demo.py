"""`runevents demo`: a simulated fleet through a backend, and what it stored, checked."""

from __future__ import annotations

import asyncio
import tempfile
from collections import Counter
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Final

import orjson
import typer
from rich.console import Console
from rich.text import Text

from runevents.cli.demo_bus import Fleet, run_bus_demo
from runevents.cli.demo_output import (
    ALL,
    THREAD_ROWS,
    busiest_thread,
    caller_of,
    check_receipts,
    demo_table,
    one_line,
    print_messages,
)
from runevents.devstack.fleet import FleetSummary, run_fleet
from runevents.errors import StoreLockedError
from runevents.events import Record
from runevents.store import JsonlRunEventStore, RunEventStore

RUN_ROWS: Final = 16  # events of the sample run shown before eliding the rest


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
    serve: Annotated[
        bool,
        typer.Option(
            "--serve",
            help="bus: after the fleet, keep the dev stack up and serve its read tables (the run viewer "
            "at /) until Ctrl-C.",
        ),
    ] = False,
) -> None:
    """Run a simulated fleet of agents through a backend (the bus by default) and show what was stored."""
    if directory is not None and directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise typer.BadParameter(
            f"{directory} is not an empty directory; the demo writes a fresh fleet", param_hint="--dir"
        )
    console = Console(highlight=False)
    if serve and backend is not Backend.BUS:
        raise typer.BadParameter(
            "the jsonl demo ends with its files kept: serve them with runevents serve --store jsonl://DIR",
            param_hint="--serve",
        )
    if backend is Backend.JSONL:
        base = directory or Path(tempfile.mkdtemp(prefix="runevents-demo-"))
        failed = asyncio.run(_demo(console, base, agents, runs_per_agent, seed))
    else:
        fleet = Fleet(agents, runs_per_agent, seed, writers)
        failed = run_bus_demo(
            console, directory, fleet, partitions=partitions, projectors=projectors, serve=serve
        )
    if failed:
        raise typer.Exit(1)


async def _demo(console: Console, base: Path, agents: int, runs_per_agent: int, seed: int) -> list[str]:
    """Run the fleet, show what was stored, and return the names of the checks that failed."""
    console.print(
        f"[bold]runevents demo[/]: {agents} agents x {runs_per_agent} runs (seed {seed}) -> "
        "[bold]jsonl[/] backend, durability=flush"
    )
    # soft_wrap: a long path stays one line that the terminal wraps, so it can be copied whole.
    console.print(
        Text(
            f"files (kept): {base}/threads/<thread>/runs/<run>.jsonl; the run viewer shows them after "
            f"the demo: runevents serve --store jsonl://{base}, then http://127.0.0.1:8470/\n"
        ),
        soft_wrap=True,
    )
    checks: dict[str, tuple[bool, str]] = {}  # name -> (passed, the line that says so)
    async with JsonlRunEventStore(base) as store:
        summary = await run_fleet(store, agents=agents, runs_per_agent=runs_per_agent, seed=seed)
        _print_written(console, summary, base)
        thread = busiest_thread(summary)
        await print_messages(console, store, thread, summary.threads[thread])
        await _print_run(console, store, thread, summary.threads[thread])
        checks["receipts"] = await check_receipts(store, summary)
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


async def _sample_run(store: RunEventStore, thread: str, runs: list[str]) -> tuple[str, list[Record]]:
    # The shortest run that delegated to a subagent, so the task_id filter has something to show.
    events = {run: await store.list_events(thread, run, limit=ALL) for run in runs}
    with_task = [run for run in runs if any(e["event_type"] == "subagent.start" for e in events[run])]
    run = min(with_task or runs, key=lambda r: len(events[r]))
    return run, events[run]


async def _print_run(console: Console, store: RunEventStore, thread: str, runs: list[str]) -> None:
    run, events = await _sample_run(store, thread, runs)
    console.print(f"[bold]{run}[/], every event: list_events({thread}, {run})")
    table = demo_table(
        "seq", "event_type", "category", "caller / task_id", "bytes", flexible="caller / task_id"
    )
    # A long run shows its head and its tail (run.end and the receipt), not just the head.
    shown = events if len(events) <= RUN_ROWS else [*events[: RUN_ROWS - 4], None, *events[-4:]]
    for record in shown:
        if record is None:
            table.add_row("...", f"{len(events) - RUN_ROWS + 1} more")
            continue
        task_id = record["metadata"].get("task_id")
        who = f"{caller_of(record)} / {task_id}" if task_id else caller_of(record)
        size = f"{len(orjson.dumps(record['content'])):,}"
        cells = (str(record["seq"]), record["event_type"], record["category"], who, size)
        table.add_row(*(one_line(cell) for cell in cells))
    console.print(table)
    task_ids = [e["metadata"]["task_id"] for e in events if e["event_type"] == "subagent.start"]
    if task_ids:
        steps = await store.list_events(thread, run, task_id=task_ids[0])
        kinds = Counter(e["event_type"].removeprefix("subagent.") for e in steps)
        steps_shown = ", ".join(kind if count == 1 else f"{kind} x{count}" for kind, count in kinds.items())
        console.print(f"  list_events(task_id={task_ids[0]}) -> {len(steps)} events: {steps_shown}")
    console.print()


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
    table = demo_table("thread", "runs", "written", "stored", "messages", "last seq", "after reopen")
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
