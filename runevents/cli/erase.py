"""`runevents erase` and `runevents keys rotate`: erasure of threads (or a user's), and KEK rotation."""

from __future__ import annotations

from typing import Annotated

import typer

from runevents.cli.retention import BusOption, opening_store
from runevents.cli.store_url import StoreUrlOption
from runevents.cli.support import run_or_fail, settings_of
from runevents.store import RunEventStore
from runevents.tables.keys import ThreadKeys
from runevents.tables.sql import engine_for

keys_app = typer.Typer(
    rich_markup_mode="markdown",
    help="The threads' data keys: rewrap them with a new key-encryption key.",
    no_args_is_help=True,
)


def erase_command(
    threads: Annotated[
        list[str] | None, typer.Argument(help="The threads to erase.", show_default=False)
    ] = None,
    user: Annotated[
        str | None, typer.Option("--user", help="Erase every thread holding an event of this user.")
    ] = None,
    store: StoreUrlOption = None,
    bus: BusOption = False,
) -> None:
    """Delete threads and destroy their data keys: on the bus, their records on the topic can never be
    opened again (a replay projects them as erased tombstones). See the README's "Deleting and erasing data".

    The bus needs the KEKs (RUNEVENTS_KEK or RUNEVENTS_KEK_FILE): give --bus. A store that does not seal
    its records refuses, before deleting anything. Exit status: 0 erased, 1 error.
    """
    if not threads and user is None:
        raise typer.BadParameter("give THREADS or --user", param_hint="THREADS")
    settings = settings_of()
    if store is not None and store.lower().startswith("kafka"):
        raise typer.BadParameter(
            "on the bus give --bus: its keys come from the settings", param_hint="--store"
        )
    opening, shown = opening_store(store, bus, settings)

    async def work() -> list[tuple[str, int]]:
        async with opening() as opened:
            chosen = list(threads or []) + (await opened.user_thread_ids(user) if user is not None else [])
            return [(thread, await _erase(opened, thread)) for thread in dict.fromkeys(chosen)]

    erased = run_or_fail(work(), settings)
    for thread, removed in erased:
        typer.echo(f"thread {thread!r}: {removed} events deleted, its keys destroyed ({shown})")
    if not erased:
        typer.echo(f"user {user!r} holds no thread in {shown}: nothing to erase")


async def _erase(store: RunEventStore, thread: str) -> int:
    return await store.delete_by_thread(thread, erase=True)


@keys_app.command("rotate")
def rotate() -> None:
    """Rewrap every live data key with the current KEK (the first of RUNEVENTS_KEK), in batches.

    Give the new KEK first and the old ones after it; once this is done, the old ones can go.
    """
    settings = settings_of()
    keyring = settings.keyring()
    if keyring is None:
        raise typer.BadParameter(
            "no KEK: set RUNEVENTS_KEK or RUNEVENTS_KEK_FILE", param_hint="RUNEVENTS_KEK"
        )

    async def work() -> int:
        engine = engine_for(settings.database())
        try:
            return await ThreadKeys(engine, keyring).rewrap()
        finally:
            await engine.dispose()

    rewrapped = run_or_fail(work(), settings)
    typer.echo(f"{rewrapped} data keys rewrapped with KEK {keyring.current!r}")
