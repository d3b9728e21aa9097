"""The `runevents` command line: the Typer app and one module per command group."""

from runevents.cli.app import app

__all__ = ["app"]
