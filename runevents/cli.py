"""The `runevents` command line: one Typer app, one subcommand per job."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from runevents import admin_cli, demo_cli
from runevents.backfill_cli import backfill as backfill_command
from runevents.cli_support import CONFIG_FILE
from runevents.dead_letters_cli import dead_letters_app
from runevents.heap import keep_heap_top
from runevents.promote_cli import projection_app
from runevents.promote_cli import promote as promote_command
from runevents.replay_cli import replay as replay_command
from runevents.settings import CONFIG_ENV

app = typer.Typer(
    rich_markup_mode="markdown",
    help="runevents: storage for the event streams of AI agent runs.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def main(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            envvar=CONFIG_ENV,
            help="A TOML file of settings (see `runevents config`); options and RUNEVENTS_* "
            "variables take precedence over it.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """runevents: storage for the event streams of AI agent runs.

    Every setting can be given as an option, as a RUNEVENTS_* variable or in the --config file;
    `runevents config` prints them all and where each came from.
    """
    CONFIG_FILE.set(config)
    # Every command runs in a process of runevents' own (a projector, the demo and its writers).
    keep_heap_top()


app.command("demo")(demo_cli.demo)
# The operator's commands, after `demo`, in the order an operator meets them.
app.command("project")(admin_cli.project)
app.command("replay")(replay_command)
app.command("promote")(promote_command)
app.add_typer(projection_app, name="projection")
app.command("backfill")(backfill_command)
app.add_typer(dead_letters_app, name="dead-letters")
app.add_typer(admin_cli.db_app, name="db")
app.add_typer(admin_cli.topic_app, name="topic")
app.command("schema")(admin_cli.schema)
app.command("config")(admin_cli.config)

if __name__ == "__main__":
    app()
