"""`runevents replay`: rebuild the read tables from the topic into a new projection, with progress."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from runevents.cli.support import (
    DatabaseUrl,
    KafkaServers,
    RateColumn,
    Topic,
    check_names,
    run_or_fail,
    settings_of,
    stop_on_signals,
)
from runevents.ops import replay as ops
from runevents.settings import Settings


def replay(
    projection: Annotated[str, typer.Option(help="Name of the new projection (a lower-case identifier).")],
    database_url: DatabaseUrl = None,
    bootstrap_servers: KafkaServers = None,
    topic: Topic = None,
    schema: Annotated[
        str | None, typer.Option(help="PostgreSQL schema of the new tables (default: the projection's name).")
    ] = None,
) -> None:
    """Rebuild the read tables from the whole topic into a new projection, while the live one serves.

    Resumable: stopped (Ctrl-C) or killed, the same command goes on from where it was.

    Refuses a topic whose log no longer starts at offset 0 (retention not -1).
    """
    check_names(("--projection", "projection", projection), ("--schema", "schema", schema))
    settings = settings_of(database_url=database_url, kafka=bootstrap_servers, topic=topic)
    topic = settings.topic
    console = Console(highlight=False, soft_wrap=True)  # summary lines whole, for logs and greps
    replayed = run_or_fail(_replay(console, settings, projection, schema), settings)
    where = f"projection {projection!r} (schema {schema or projection})"
    if not replayed.caught_up:
        console.print(
            f"stopped: {replayed.records:,} records of {topic!r} replayed into {where} in "
            f"{replayed.seconds:.1f} s; run the same command to go on"
        )
        raise typer.Exit(130)
    console.print(
        f"replayed {replayed.records:,} records of {topic!r} into {where} in {replayed.seconds:.1f} s "
        f"({replayed.rate:,.0f} records/s); caught up with the log at "
        + ", ".join(f"{partition}:{offset}" for partition, offset in sorted(replayed.reached.items()))
    )
    console.print(
        f"keep it current with `runevents project --projection {projection} --schema {schema or projection}`"
    )


async def _replay(console: Console, settings: Settings, projection: str, schema: str | None) -> ops.Replayed:
    topic = settings.topic
    stop = stop_on_signals()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn("rec/s"),
        TimeRemainingColumn(),
    )
    # Started with the first progress: a replay refused before it starts shows its error alone.
    bar = Progress(*columns, console=console, transient=False)
    tasks: dict[int, TaskID] = {}

    def show(progress: ops.Progress) -> None:
        if not tasks:
            bar.start()
            tasks[-1] = bar.add_task(f"{topic} -> {projection}", total=None)
        for partition, (done, end) in sorted(progress.items()):
            if partition not in tasks:
                tasks[partition] = bar.add_task(f"  partition {partition}", total=None)
            bar.update(tasks[partition], completed=done, total=end)
        ends = [end for _, end in progress.values()]
        known = None if any(end is None for end in ends) else sum(e for e in ends if e is not None)
        bar.update(tasks[-1], completed=sum(done for done, _ in progress.values()), total=known)

    try:
        return await ops.replay(
            settings.bootstrap_servers(),
            settings.database(),
            projection=projection,
            schema=schema,
            topic=topic,
            on_progress=show,
            stop=stop,
            client_options=settings.kafka_options(),
            keyring=settings.keyring(),
        )
    finally:
        if tasks:
            bar.stop()
