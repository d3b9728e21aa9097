"""`runevents retention`: expire what a retention policy no longer keeps, in any store."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Annotated

import typer
from sqlalchemy import select

from runevents.cli.store_url import StoreUrlOption, store_url
from runevents.cli.support import log_to_stderr, mask, run_or_fail, settings_of, stop_on_signals
from runevents.errors import RunEventsError
from runevents.lifecycle.retention import InvalidRetentionPolicyError, RetentionPolicy, parse_policy
from runevents.ops.retention import DEFAULT_BLOB_GRACE, DEFAULT_STEP, RetentionReport, apply_retention
from runevents.settings import Settings
from runevents.store import RunEventStore, open_store
from runevents.tables.schema import projection_offsets
from runevents.tables.sql import SqlRunEventStore

log = logging.getLogger("runevents.retention")

retention_app = typer.Typer(
    rich_markup_mode="markdown",
    help="Retention: expire the events a policy no longer keeps (by age, by count, per category).",
    no_args_is_help=True,
)


class ProjectedTablesError(RunEventsError):
    """Read tables that are a projection of a topic, given to a command that must write through it."""


POLICY_HELP = (
    "clauses separated by ';', the first the default rule, then 'category: ...'; each of max_age=N with "
    "a unit of s, m, h, d or w (30d), keep_events=N, keep_runs=N, or forever. "
    "Example: 'max_age=90d; trace: max_age=7d; message: forever'"
)
PolicyOption = Annotated[
    str | None,
    typer.Option(
        "--policy",
        help=f"The default policy, for threads without one of their own: {POLICY_HELP} "
        "[default: setting retention (env RUNEVENTS_RETENTION), else forever]",
        show_default=False,
    ),
]
ThreadArgument = Annotated[str, typer.Argument(help="The thread's id.", show_default=False)]
BusOption = Annotated[
    bool,
    typer.Option(
        "--bus",
        help="Through the topic, as `runevents project` is configured (settings kafka, topic, projection, "
        "database_url, schema_name, TLS and SASL): what a bus deployment runs.",
    ),
]


def opening_store(
    given: str | None, bus: bool, settings: Settings
) -> tuple[Callable[[], RunEventStore], str]:
    """How to open the store a command works on (inside its run, so a refusal is one line), and its name:
    --bus's, else --store's (or the settings')."""
    if bus:
        if given is not None:
            raise typer.BadParameter("give --store or --bus, not both", param_hint="--bus")
        return settings.bus_store, f"topic {settings.topic!r}"
    url = store_url(given, settings)
    return functools.partial(open_store, url), mask(url)


def _parsed(policy: str, option: str) -> RetentionPolicy:
    try:
        return parse_policy(policy)
    except InvalidRetentionPolicyError as error:
        raise typer.BadParameter(str(error), param_hint=option) from None


@retention_app.command("set")
def set_policy(
    thread: ThreadArgument,
    policy: Annotated[
        str | None,
        typer.Argument(help=f"The thread's own policy: {POLICY_HELP}.", show_default=False),
    ] = None,
    clear: Annotated[
        bool, typer.Option("--clear", help="Take the thread's own policy back: the default applies.")
    ] = False,
    store: StoreUrlOption = None,
    bus: BusOption = False,
) -> None:
    """Give a thread a retention policy of its own, which `retention apply` follows instead of the default."""
    if (policy is None) == (not clear):
        raise typer.BadParameter("give either a POLICY or --clear", param_hint="POLICY")
    chosen = None if policy is None else _parsed(policy, "POLICY")
    settings = settings_of()
    opening, _ = opening_store(store, bus, settings)

    async def work() -> None:
        async with opening() as opened:
            await _refuse_projection(opened)
            await opened.set_retention(thread, chosen)

    run_or_fail(work(), settings)
    typer.echo(f"thread {thread!r}: " + ("the default policy" if chosen is None else chosen.text()))


@retention_app.command("show")
def show_policy(thread: ThreadArgument, store: StoreUrlOption = None, bus: BusOption = False) -> None:
    """Print a thread's own retention policy, or say the default applies."""
    settings = settings_of()
    opening, _ = opening_store(store, bus, settings)

    async def work() -> RetentionPolicy | None:
        async with opening() as opened:
            return await opened.get_retention(thread)

    own = run_or_fail(work(), settings)
    if own is None:
        typer.echo(f"thread {thread!r}: the default policy ({parse_policy(settings.retention).text()})")
    else:
        typer.echo(f"thread {thread!r}: {own.text()}")


@retention_app.command("apply")
def apply(
    policy: PolicyOption = None,
    store: StoreUrlOption = None,
    step: Annotated[
        int, typer.Option(min=1, max=10_000, help="Seqs expired per step (each step a transaction).")
    ] = DEFAULT_STEP,
    every: Annotated[
        int | None,
        typer.Option(min=1, help="Apply again every this many seconds, until SIGTERM (default: once)."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would expire; remove nothing.")
    ] = False,
    bus: BusOption = False,
    blob_grace_s: Annotated[
        int,
        typer.Option(
            min=0,
            help="With a blob store (blobs= in the store's URL): blobs no event points at are removed "
            "once this old (a blob is written before its event).",
        ),
    ] = int(DEFAULT_BLOB_GRACE.total_seconds()),
) -> None:
    """Expire from every thread what the policy no longer keeps, in bounded steps; safe to stop and rerun.

    Progress goes to stderr, a thread a line, and the summary last. On the bus give the topic's URL
    (--store kafka://...): expiry is written to the log, so a replay keeps it; the read tables of a
    projection are refused. A store with a blob store also loses the blobs no event points at any more.
    Exit status: 0 done (or stopped by SIGTERM/Ctrl-C), 1 error.
    """
    settings = settings_of()
    chosen = _parsed(settings.retention if policy is None else policy, "--policy")
    opening, shown = opening_store(store, bus, settings)
    log_to_stderr(settings.log_level)
    log.info("applying %s to %s", chosen.text(), shown)
    grace = timedelta(seconds=blob_grace_s)
    report = run_or_fail(_apply(opening, chosen, step, every, dry_run, grace), settings)
    typer.echo(report.line())


async def _apply(
    opening: Callable[[], RunEventStore],
    policy: RetentionPolicy,
    step: int,
    every: int | None,
    dry_run: bool,
    blob_grace: timedelta,
) -> RetentionReport:
    stop = stop_on_signals()
    async with opening() as opened:
        await _refuse_projection(opened)
        while True:
            report = await apply_retention(
                opened,
                policy,
                step=step,
                dry_run=dry_run,
                stop=stop,
                progress=_progress,
                blob_grace=blob_grace,
            )
            if every is None or report.stopped:
                return report
            log.info("%s; next in %s", report.line(), timedelta(seconds=every))
            try:
                await asyncio.wait_for(stop.wait(), timeout=every)
            except TimeoutError:
                continue
            return report


def _progress(report: RetentionReport) -> None:
    log.info("%s so far", report.line().removeprefix("retention done: "))


async def _refuse_projection(store: RunEventStore) -> None:
    """Refuse the read tables of a projection: expiring them directly, a replay would bring it all back."""
    if not isinstance(store, SqlRunEventStore) or store.engine.dialect.name != "postgresql":
        return
    async with store.engine.connect() as connection:
        topic = (await connection.execute(select(projection_offsets.c.topic).limit(1))).scalar()
    if topic is not None:
        raise ProjectedTablesError(
            f"these read tables are a projection of topic {topic!r}: expire through the topic "
            "(--store kafka://<brokers>/<topic>?database=...), or a replay brings the events back"
        )
