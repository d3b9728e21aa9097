"""`runevents promote` and `runevents projection`: which projection readers see, and dropping old ones."""

from __future__ import annotations

from typing import Annotated

import typer

from runevents.cli.support import DatabaseUrl, KafkaServers, Topic, check_names, run_or_fail, settings_of
from runevents.ops import promote as ops

projection_app = typer.Typer(
    rich_markup_mode="markdown",
    help="The projections in a database: which one is served, and dropping old ones.",
    no_args_is_help=True,
)

Serving = Annotated[
    str, typer.Option("--serving", help="The schema readers use: views of the served projection's tables.")
]
Schema = Annotated[
    str | None,
    typer.Option(help="Schema of the projection's tables (default: its name; 'public' for main)."),
]


def promote(
    projection: Annotated[str, typer.Argument(help="The projection readers are to see.")],
    database_url: DatabaseUrl = None,
    bootstrap_servers: KafkaServers = None,
    schema: Schema = None,
    serving: Serving = ops.DEFAULT_SERVING,
    topic: Topic = None,
    max_lag: Annotated[
        int, typer.Option(min=0, help="Refuse if the projection is more records than this behind the topic.")
    ] = ops.DEFAULT_MAX_LAG,
) -> None:
    """Switch readers of the serving schema to PROJECTION, atomically.

    Readers (and the bus store's writers) that use the serving schema see the old projection's
    tables or the new one's, never a mix. The first promotion creates the serving schema: point
    readers at it once (`?schema=serving` in their URL), and every later switch is this command.
    """
    check_names(
        ("PROJECTION", "projection", projection),
        ("--schema", "schema", schema),
        ("--serving", "schema", serving),
    )
    settings = settings_of(database_url=database_url, kafka=bootstrap_servers, topic=topic)
    topic = settings.topic
    promoted = run_or_fail(
        ops.promote(
            settings.bootstrap_servers(),
            settings.database(),
            projection,
            schema=schema,
            serving=serving,
            topic=topic,
            max_lag=max_lag,
            client_options=settings.kafka_options(),
        ),
        settings,
    )
    typer.echo(
        f"schema {serving!r} now serves projection {promoted.projection!r} (schema {promoted.schema}), "
        f"{promoted.lag:,} records behind topic {topic!r} when promoted"
    )


@projection_app.command("drop")
def drop(
    projection: Annotated[str, typer.Argument(help="The projection to drop, with its schema.")],
    database_url: DatabaseUrl = None,
    schema: Schema = None,
    serving: Serving = ops.DEFAULT_SERVING,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Drop a projection that is not served: its schema and all its tables (stop its projectors first)."""
    check_names(
        ("PROJECTION", "projection", projection),
        ("--schema", "schema", schema),
        ("--serving", "schema", serving),
    )
    where = ops.projection_schema(projection, schema)
    if not yes:
        typer.confirm(f"drop projection {projection!r} and schema {where!r} with all its tables?", abort=True)
    settings = settings_of(database_url=database_url)
    run_or_fail(ops.drop(settings.database(), projection, schema=schema, serving=serving), settings)
    typer.echo(f"dropped projection {projection!r} (schema {where})")


@projection_app.command("history")
def history(database_url: DatabaseUrl = None, serving: Serving = ops.DEFAULT_SERVING) -> None:
    """Every promotion of the serving schema, oldest first; the last one is served now."""
    check_names(("--serving", "schema", serving))
    settings = settings_of(database_url=database_url)
    promotions = run_or_fail(ops.history(settings.database(), serving), settings)
    if not promotions:
        typer.echo(f"nothing was ever promoted in schema {serving!r}")
        return
    for promoted in promotions:
        typer.echo(
            f"{promoted.promoted_at.isoformat(timespec='seconds')}  {promoted.projection} "
            f"(schema {promoted.schema}, topic {promoted.topic}, {promoted.lag:,} behind) "
            f"by {promoted.promoted_by}"
        )
