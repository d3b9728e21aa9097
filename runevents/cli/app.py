"""The `runevents` command line: one Typer app, one subcommand per job."""

from __future__ import annotations

import sys
import traceback
from importlib.metadata import version
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperOption

from runevents.cli.backfill import backfill as backfill_command
from runevents.cli.config import config as config_command
from runevents.cli.db import db_app
from runevents.cli.dead_letters import dead_letters_app
from runevents.cli.demo import demo as demo_command
from runevents.cli.erase import erase_command, keys_app
from runevents.cli.project import project as project_command
from runevents.cli.promote import projection_app
from runevents.cli.promote import promote as promote_command
from runevents.cli.replay import replay as replay_command
from runevents.cli.retention import retention_app
from runevents.cli.serve import hash_token_command
from runevents.cli.serve import serve as serve_command
from runevents.cli.show import show as show_command
from runevents.cli.show import tail as tail_command
from runevents.cli.support import begin_command, error_line, mask
from runevents.cli.topic import schema as schema_command
from runevents.cli.topic import topic_app
from runevents.cli.usage import usage_app
from runevents.heap import freeze_startup_objects, keep_heap_top
from runevents.settings import CONFIG_ENV

_value_type = TyperOption.display_type_rich


def _flag_type(option: TyperOption, ctx: Any) -> str | None:
    """The value type help shows for an option: none for a flag (`--strict`, `--help`), as it takes none."""
    if option.is_flag and not option.count:
        return None
    return _value_type(option, ctx)


# Typer labels every flag `<bool>`, as if it took a value; one place for every command's help.
setattr(TyperOption, "display_type_rich", _flag_type)  # noqa: B010 (mypy refuses assigning a method)


class RunEventsApp(typer.Typer):
    """The app, whose unexpected errors (bugs) still print nothing secret: the traceback is masked."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the command line; an error no command turned into a line prints masked, and exits 1."""
        # A process of runevents' own (not a test's in-process runner): the commands' modules are
        # imported by now, the bulk of what a full collection would walk.
        freeze_startup_objects()
        try:
            return super().__call__(*args, **kwargs)
        except Exception as error:  # every expected failure is a one-line `error:` before it gets here
            sys.stderr.write(mask("".join(traceback.format_exception(error))))
            sys.stderr.write(f"error: unexpected {error_line(error)} (a bug in runevents)\n")
            raise SystemExit(1) from None


app = RunEventsApp(
    rich_markup_mode="markdown",
    help="runevents: storage for the event streams of AI agent runs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(asked: bool) -> None:
    if asked:
        typer.echo(f"runevents {version('runevents')}")
        raise typer.Exit()


@app.callback()
def main(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            envvar=CONFIG_ENV,
            help=f"A TOML file of settings (see `runevents config`); options and RUNEVENTS_* "
            f"variables take precedence over it [env {CONFIG_ENV}]",
            show_default=False,
            show_envvar=False,
        ),
    ] = None,
    _version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="Print runevents' version and exit."
        ),
    ] = False,
) -> None:
    """runevents: storage for the event streams of AI agent runs.

    Every setting can be given as an option, as a RUNEVENTS_* variable or in the --config file;
    `runevents config` prints them all and where each came from.
    """
    begin_command(config)
    # Every command runs in a process of runevents' own (a projector, the demo and its writers).
    keep_heap_top()


app.command("demo")(demo_command)
# Reading a thread in any store: a page of it, or its records as they come.
app.command("show")(show_command)
app.command("tail")(tail_command)
# The read side over HTTP (deer-flow's routes, live streams, the viewer) and its tokens.
app.command("serve")(serve_command)
app.command("hash-token")(hash_token_command)
# The operator's commands, after `demo`, in the order an operator meets them.
app.command("project")(project_command)
app.command("replay")(replay_command)
app.command("promote")(promote_command)
app.add_typer(projection_app, name="projection")
app.command("backfill")(backfill_command)
app.add_typer(dead_letters_app, name="dead-letters")
# The log's lifecycle: what retention no longer keeps goes.
app.add_typer(retention_app, name="retention")
# Erasure: threads deleted and their keys destroyed, so the topic's copies can never be opened.
app.command("erase")(erase_command)
app.add_typer(keys_app, name="keys")
# The second kind of consumer of the topic: token usage, in a group and tables of its own.
app.add_typer(usage_app, name="usage")
app.add_typer(db_app, name="db")
app.add_typer(topic_app, name="topic")
app.command("schema")(schema_command)
app.command("config")(config_command)
