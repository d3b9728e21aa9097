"""What both demos print: a thread's latest messages, tables that fit a terminal, the receipts check."""

from __future__ import annotations

from typing import Any, Final

import orjson
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from runevents.devstack.fleet import RECEIPT, FleetSummary
from runevents.events import MIDDLEWARE_CALLER_PREFIX, Record
from runevents.store import RunEventStore

PAGE: Final = 8  # messages per page in the demo (deer-flow's default is 50)
THREAD_ROWS: Final = 8  # threads listed one by one in the counts table
ALL: Final = 100_000  # a limit above any run the demo writes


def caller_of(record: Record) -> str:
    """Who wrote `record`: the caller its metadata names, or "" if none."""
    return str(record["metadata"].get("caller", ""))


def kind_and_preview(record: Record) -> tuple[str, str]:
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
    if caller_of(record).startswith(MIDDLEWARE_CALLER_PREFIX):
        kind = caller_of(record)
    return kind, text


def demo_table(*columns: str, flexible: str = "") -> Table:
    """A table in the demo's look, numbers right-aligned, with `columns` as its header."""
    # Only the flexible column gives up width on a narrow terminal; its cells end in an ellipsis.
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for column in columns:
        numeric = column in ("seq", "bytes", "runs", "written", "stored", "messages", "last seq")
        table.add_column(
            column, justify="right" if numeric else "left", no_wrap=column != flexible, max_width=64
        )
    return table


def one_line(text: str) -> Text:
    """`text` as one line, cut with an ellipsis where its column is too narrow."""
    return Text(" ".join(text.split()), no_wrap=True, overflow="ellipsis")


async def print_messages(console: Console, store: RunEventStore, thread: str, runs: list[str]) -> None:
    """Print a thread's latest messages, the page before them and its runs' last visible AI seq."""
    page = await store.list_messages(thread, limit=PAGE)
    console.print(f"[bold]{thread}[/], latest messages: list_messages(limit={PAGE})")
    table = demo_table("seq", "run", "kind", "preview", flexible="preview")
    for record in page:
        kind, text = kind_and_preview(record)
        style = "dim" if kind.startswith(MIDDLEWARE_CALLER_PREFIX) else None
        row = (str(record["seq"]), record["run_id"], kind, text)
        table.add_row(*(one_line(cell) for cell in row), style=style)
    console.print(table)
    if not page:
        return
    older = await store.list_messages(thread, limit=PAGE, before_seq=page[0]["seq"])
    span = f"seq {older[0]['seq']}..{older[-1]['seq']}" if older else "nothing"
    console.print(f"  paging back like deer-flow: list_messages(before_seq={page[0]['seq']}) -> {span}")
    visible = await store.get_last_visible_ai_seq_by_run(thread, runs[-5:])
    shown = " ".join(f"{run.rsplit('-', 1)[-1]}={seq}" for run, seq in visible.items())
    console.print(f"  last visible AI seq per run: {shown}\n")


async def check_receipts(store: RunEventStore, summary: FleetSummary) -> tuple[bool, str]:
    """Whether every run holds exactly one run.delivery receipt, and the line that says so."""
    per_run = [
        len(await store.list_events(thread, run, event_types=[RECEIPT]))
        for thread, runs in summary.threads.items()
        for run in runs
    ]
    ok = all(count == 1 for count in per_run)
    verdict = "[green]exactly one each[/]" if ok else f"[red]counts {sorted(set(per_run))}[/]"
    return ok, f"run.delivery receipts across {len(per_run)} runs: {verdict}"


def busiest_thread(summary: FleetSummary) -> str:
    """The thread the fleet wrote most events to (the demo's sample thread)."""
    return max(summary.events_by_thread, key=lambda t: (summary.events_by_thread[t], t))
