"""`runevents topic create` and `runevents schema`: the topic, and the JSON Schema of its records."""

from __future__ import annotations

from typing import Annotated

import typer

from runevents.bus.topic import DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_PARTITIONS, create_topic
from runevents.cli.support import KafkaServers, Topic, run_or_fail, settings_of
from runevents.events import envelope_json_schema_text

topic_app = typer.Typer(
    rich_markup_mode="markdown", help="The run-events topic: create it.", no_args_is_help=True
)


@topic_app.command("create")
def topic_create(
    bootstrap_servers: KafkaServers = None,
    topic: Topic = None,
    partitions: Annotated[
        int, typer.Option(min=1, help="Partitions: the most projectors that can share the work.")
    ] = DEFAULT_PARTITIONS,
    replication_factor: Annotated[int, typer.Option(min=1, help="Copies of each partition.")] = 1,
    max_message_bytes: Annotated[
        int, typer.Option(min=1024, help="The largest record the topic takes (max.message.bytes).")
    ] = DEFAULT_MAX_MESSAGE_BYTES,
) -> None:
    """Create the topic, kept forever (retention.ms=-1): replay and backfill need all of its history.

    A topic that exists already is left as it is (exit 0, and says so).
    """
    settings = settings_of(kafka=bootstrap_servers, topic=topic)
    created = run_or_fail(
        create_topic(
            settings.bootstrap_servers(),
            settings.topic,
            partitions=partitions,
            replication_factor=replication_factor,
            max_message_bytes=max_message_bytes,
            client_options=settings.kafka_options(),
        ),
        settings,
    )
    if not created:
        typer.echo(f"topic {settings.topic!r} exists already at {settings.kafka}: left as it is")
        return
    typer.echo(
        f"created topic {settings.topic!r} at {settings.kafka}: {partitions} partitions, replication "
        f"factor {replication_factor}, retention.ms=-1, max.message.bytes={max_message_bytes}"
    )


def schema() -> None:
    """Print the topic's JSON Schema (the envelope of every record: puts, put_if_absent, deletes)."""
    typer.echo(envelope_json_schema_text(), nl=False)
