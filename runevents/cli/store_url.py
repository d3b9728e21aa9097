"""The `--store` option of the commands that read a thread (show, tail, serve), and the URL it gives."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated
from urllib.parse import parse_qs, urlencode, urlsplit

import typer
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from runevents.cli.support import fail, mask, remember_secrets
from runevents.settings import Settings, url_secrets

StoreUrlOption = Annotated[
    str | None,
    typer.Option(
        "--store",
        help="The store to read, any URL open_store takes: jsonl:///dir, sqlite:///path, "
        "postgresql://user@host/db[?schema=S], kafka://host:port/topic?database=... [default: the read "
        "tables of setting database_url (env RUNEVENTS_DATABASE_URL), in setting schema_name]",
        show_default=False,
    ),
]


def store_url(given: str | None, settings: Settings) -> str:
    """The URL of the store to read: --store, else the settings' database (its schema, password and TLS)."""
    if given is not None:
        remember_secrets(*url_secrets(given), *_inner_secrets(given))
        url = given
    elif settings.database_url is None:
        fail(
            "no store to read: give --store URL (jsonl:///dir, sqlite:///path, postgresql://..., "
            "kafka://...) or set database_url (RUNEVENTS_DATABASE_URL or `database_url` in the config file)"
        )
    else:
        url = settings.database()
        if settings.schema_name is not None:
            url += ("&" if "?" in url else "?") + urlencode({"schema": settings.schema_name})
    _refuse_missing(url)
    return url


def _inner_secrets(url: str) -> list[str]:
    """The passwords of the database a kafka URL names in its `database=` option."""
    return [
        secret for inner in parse_qs(urlsplit(url).query).get("database", []) for secret in url_secrets(inner)
    ]


def _refuse_missing(url: str) -> None:
    """Refuse a jsonl directory or SQLite file that is not there: reading one must not create it."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    path: Path | None = None
    kind = "directory"
    if scheme == "jsonl":
        path = Path(parts.netloc + parts.path) if parts.netloc + parts.path else None
    elif scheme.split("+")[0] == "sqlite":
        with contextlib.suppress(ArgumentError):  # a URL open_store refuses is refused there, in its words
            database = make_url(url.split("?", 1)[0]).database
            path = Path(database) if database and database != ":memory:" else None
        kind = "file"
    if path is not None and not path.exists():
        fail(f"{mask(url)}: no such {kind} {path}; show, tail and serve read a store, they do not create one")
