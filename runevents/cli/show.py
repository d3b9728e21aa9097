"""`runevents show` and `runevents tail`: a thread's records in any store, a page at a time or live."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Annotated, Any, Final, TypeVar

import orjson
import typer
from aiokafka.errors import KafkaError
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy.exc import SQLAlchemyError

from runevents.cli.demo_output import caller_of, demo_table, kind_and_preview, one_line
from runevents.cli.store_url import StoreUrlOption, store_url
from runevents.cli.support import (
    failure_line,
    mask,
    run_or_fail,
    settings_of,
    stop_on_signals,
)
from runevents.errors import InvalidQueryError, RunEventsError, ThreadDeletedError
from runevents.events import MIDDLEWARE_CALLER_PREFIX, Record
from runevents.settings import Settings
from runevents.store import open_store

T = TypeVar("T")

INTERRUPTED: Final = 130  # the exit status of a command stopped by Ctrl-C (or SIGTERM)
DEFAULT_PAGE: Final = 50  # deer-flow's page of messages
EVENTS_READ: Final = 500  # events read at a time while looking for a run's page (list_events' default)

UserOption = Annotated[
    str | None, typer.Option("--user", help="Only the records of this user_id.", show_default=False)
]
ThreadArgument = Annotated[str, typer.Argument(help="The thread's id.", show_default=False)]


def show(
    thread: ThreadArgument,
    run: Annotated[
        str | None,
        typer.Option(help="Show this run's events, of every category, instead of the messages."),
    ] = None,
    before_seq: Annotated[
        int | None, typer.Option(min=1, help="The page before this seq (default: the newest page).")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="Records per page.")] = DEFAULT_PAGE,
    user: UserOption = None,
    store: StoreUrlOption = None,
) -> None:
    """Print one page of a thread's messages (or, with --run, of a run's events) as a table.

    The newest page, or the page before --before-seq; a last line names the --before-seq of the page
    before it when there is one. Exit status: 0 shown (an empty page too), 1 error, 130 Ctrl-C.
    """
    settings = settings_of()
    url = store_url(store, settings)
    console = Console(highlight=False)
    if run is None:
        read = _messages_page(url, thread, before_seq, limit, user)
    else:
        read = _events_page(url, thread, run, before_seq, limit, user)
    page, more = _interruptible(read, url, settings)
    what = "messages" if run is None else f"events of run {run!r}"
    if not page:
        before = "" if before_seq is None else f" before seq {before_seq}"
        console.print(f"no {what}{before} in thread {thread!r}", markup=False)
        return
    console.print(
        f"thread {thread!r}, {what}: seq {page[0]['seq']}..{page[-1]['seq']} ({len(page)})", markup=False
    )
    console.print(_messages_table(page) if run is None else _events_table(page))
    if more:
        console.print(f"older {what.split()[0]}: run again with --before-seq {page[0]['seq']}", markup=False)


def tail(
    thread: ThreadArgument,
    after_seq: Annotated[
        int, typer.Option(min=0, help="Start after this seq (0: the whole thread, then what comes).")
    ] = 0,
    run: Annotated[str | None, typer.Option(help="Only this run's records.")] = None,
    category: Annotated[
        list[str] | None,
        typer.Option(
            metavar="<str>", help="Only records of this category (message, trace, ...); repeat for more."
        ),
    ] = None,
    user: UserOption = None,
    store: StoreUrlOption = None,
) -> None:
    """Follow a thread: print its records after --after-seq, then each new one as it is stored.

    One line per record: seq, time (UTC), run, category, type and a preview of the content. Runs
    until Ctrl-C (exit 130) or until the thread is deleted (exit 0). The memory and jsonl stores
    belong to one process, so only the sql and bus stores show other processes' writes; a jsonl
    directory stays locked (to writers too) while tail runs.
    """
    settings = settings_of()
    url = store_url(store, settings)
    typer.echo(f"following thread {thread!r} in {mask(url)} after seq {after_seq}; Ctrl-C stops", err=True)
    work = _follow(Console(highlight=False), url, thread, after_seq, run, category, user)
    deleted = _interruptible(work, url, settings)
    if deleted:
        typer.echo(f"thread {thread!r} was deleted: nothing more to follow", err=True)


class StoreUnreadableError(RunEventsError):
    """The store could not be opened or read; the message names it, its passwords masked."""


def _interruptible(work: Coroutine[Any, Any, T], url: str, settings: Settings) -> T:
    """Run `work` until it ends or Ctrl-C (or SIGTERM) stops it, then exit 130; errors are one line."""

    async def until_stopped() -> tuple[T] | None:
        stop = stop_on_signals()
        task = asyncio.ensure_future(work)
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not task.done():
            task.cancel()  # the work's `async with` closes the store
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return None
        try:
            return (task.result(),)
        except InvalidQueryError:  # an argument (a thread id, say): about the command, not the store
            raise
        except (RunEventsError, SQLAlchemyError, OSError, KafkaError, ValueError, ImportError) as error:
            # Said with the store it is about, unless the error names it already (a refused URL).
            line, shown = failure_line(error, settings), mask(url)
            raise StoreUnreadableError(line if shown in line else f"{shown}: {line}") from None

    try:
        done = run_or_fail(until_stopped(), settings)
    except KeyboardInterrupt:  # before the signal handlers were in place
        done = None
    if done is None:
        raise typer.Exit(INTERRUPTED)
    return done[0]


async def _messages_page(
    url: str, thread: str, before_seq: int | None, limit: int, user: str | None
) -> tuple[list[Record], bool]:
    """The newest page of messages before `before_seq`, and whether there are older ones."""
    async with open_store(url) as store:
        page = await store.list_messages(thread, limit=limit + 1, before_seq=before_seq, user_id=user)
    return page[-limit:], len(page) > limit


async def _events_page(
    url: str, thread: str, run: str, before_seq: int | None, limit: int, user: str | None
) -> tuple[list[Record], bool]:
    """The last `limit` events of a run before `before_seq`, and whether there are earlier ones."""
    # list_events pages forward only: read the run from its start, keeping the last limit + 1.
    kept: deque[Record] = deque(maxlen=limit + 1)
    async with open_store(url) as store:
        after = 0
        while True:
            batch = await store.list_events(thread, run, after_seq=after, limit=EVENTS_READ, user_id=user)
            kept.extend(r for r in batch if before_seq is None or r["seq"] < before_seq)
            if len(batch) < EVENTS_READ or (before_seq is not None and batch[-1]["seq"] + 1 >= before_seq):
                break
            after = batch[-1]["seq"]
    page = list(kept)
    return page[-limit:], len(page) > limit


async def _follow(
    console: Console,
    url: str,
    thread: str,
    after_seq: int,
    run: str | None,
    categories: list[str] | None,
    user: str | None,
) -> bool:
    """Print each record of the subscription as it comes; True once the thread is deleted."""
    async with open_store(url) as store:
        records = store.subscribe(
            thread, after_seq=after_seq, run_id=run, categories=categories, user_id=user
        )
        try:
            async for record in records:
                console.print(_record_line(record), no_wrap=True, overflow="ellipsis")
        except ThreadDeletedError:
            return True
        finally:
            await records.aclose()
    return False


def _messages_table(page: list[Record]) -> Table:
    table = demo_table("seq", "time (UTC)", "run", "type", "preview", flexible="preview")
    for record in page:
        cells = (str(record["seq"]), _time(record), record["run_id"], record["event_type"], _preview(record))
        table.add_row(*(one_line(cell) for cell in cells), style=_style(record))
    return table


def _events_table(page: list[Record]) -> Table:
    table = demo_table("seq", "category", "type", "task_id", "time (UTC)", "preview", flexible="preview")
    for record in page:
        cells = (
            str(record["seq"]),
            record["category"],
            record["event_type"],
            str(record["metadata"].get("task_id") or ""),
            _time(record),
            _preview(record),
        )
        table.add_row(*(one_line(cell) for cell in cells), style=_style(record))
    return table


def _record_line(record: Record) -> Text:
    """One line of `tail`: seq, time, run, category, type, preview."""
    return Text.assemble(
        (f"{record['seq']:>6}", "bold"),
        f"  {_time(record)}  {record['run_id']}  {record['category']:<8}  {record['event_type']:<16}  ",
        one_line(_preview(record)),
        style=_style(record) or "",
    )


def _time(record: Record) -> str:
    """When the record was made, in UTC to the second."""
    return f"{datetime.fromisoformat(record['created_at']).astimezone(UTC):%Y-%m-%d %H:%M:%S}"


def _preview(record: Record) -> str:
    """The text of a message (or the tools it calls); other content as its JSON."""
    content = record["content"]
    if isinstance(content, dict) and not ("content" in content or "tool_calls" in content):
        return orjson.dumps(content).decode()
    return kind_and_preview(record)[1]


def _style(record: Record) -> str | None:
    """Middleware's records dimmed, as the demo shows them."""
    return "dim" if caller_of(record).startswith(MIDDLEWARE_CALLER_PREFIX) else None
