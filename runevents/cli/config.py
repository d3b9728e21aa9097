"""`runevents config`: the effective settings and where each came from."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from runevents.cli.support import CONFIG_FILE, fail
from runevents.settings import SettingsError, load_settings


def config() -> None:
    """Print the effective settings and where each came from (option, env, file or default).

    Secrets are masked and the database URL is shown without its password.
    """
    try:
        loaded = load_settings({}, CONFIG_FILE.get())
    except SettingsError as error:
        fail(str(error))
    table = Table("setting", "value", "from", box=None)
    for name, value in loaded.settings.shown().items():
        table.add_row(name, value, loaded.origins[name])
    Console(highlight=False, width=200).print(table)
