"""`python -m runevents.cli`: the same app as the `runevents` command."""

from runevents.cli.app import app

app()
