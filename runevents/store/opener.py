"""`open_store`: a store for a backend URL. Each backend reads its own URL's options."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Final
from urllib.parse import SplitResult, parse_qs, quote, unquote_plus, urlsplit

from runevents.errors import InvalidStoreUrlError
from runevents.lifecycle.blob_urls import BlobUrl, parse_blob_url, shown_blob_url
from runevents.masking import mask_secrets
from runevents.store.base import RunEventStore
from runevents.store.jsonl import JsonlRunEventStore
from runevents.store.memory import MemoryRunEventStore

# The backends that live outside this package, by scheme, each a module with an `open_url(StoreUrl)`.
# They are named, not imported: a memory or jsonl store loads neither SQLAlchemy nor aiokafka, and the
# port and the local backends depend on no other backend (tests/test_import_rules.py).
OPENERS: Final = {
    "postgresql": "runevents.tables.sql",
    "postgres": "runevents.tables.sql",
    "sqlite": "runevents.tables.sql",
    "kafka": "runevents.bus.store_url",
}


@dataclass
class StoreUrl:
    """A backend URL taken apart: its parts, its options not yet read, and the URL as errors show it."""

    url: str
    parts: SplitResult
    options: dict[str, str]
    max_trace_content: int | None
    # The URL with its passwords masked: the only form an error may show.
    shown: str

    def pop(self, name: str, default: str | None = None) -> str | None:
        """Take option `name` (so that it does not count as unknown)."""
        return self.options.pop(name, default)

    def blobs(self) -> BlobUrl | None:
        """Take option `blobs`, a blob store URL (percent-encoded), checked but not yet opened."""
        value = self.pop("blobs")
        return None if value is None else parse_blob_url(value)

    def max_trace_content_or(self, default: int) -> int:
        """The URL's `max_trace_content`, else the backend's default."""
        return default if self.max_trace_content is None else self.max_trace_content

    def error(self, problem: str) -> InvalidStoreUrlError:
        """An error naming the masked URL and what is wrong with it."""
        return InvalidStoreUrlError(f"{self.shown!r}: {problem}")

    def refuse_unknown(self) -> None:
        """Fail on options nobody took, before a store (and its connections) is made."""
        if self.options:
            raise self.error(f"unknown option(s) {', '.join(sorted(self.options))}")


def open_store(url: str) -> RunEventStore:
    """A store for a backend URL: `memory://`, `jsonl:///dir?durability=fsync`, a PostgreSQL or SQLite
    URL, or `kafka://host:port[,host:port]/topic?database=<postgresql URL, percent-encoded>` (the bus).
    Every backend but memory takes `blobs=<blob store URL, percent-encoded>` (runevents.lifecycle.blob_urls).

    Every error is an `InvalidStoreUrlError` (or `UnsupportedDatabaseError`, `InvalidNameError`) whose
    message shows the URL with its passwords masked.
    """
    if not isinstance(url, str):
        raise InvalidStoreUrlError(f"a backend URL is a str, got {type(url).__name__}")
    parts = urlsplit(url)
    options = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    shown = _shown(url) if "blobs" in options else mask_secrets(url)
    parsed = StoreUrl(
        url, parts, options, _max_trace_content(options.pop("max_trace_content", None), shown), shown
    )
    scheme = parts.scheme.lower()
    if scheme == "memory":
        parsed.refuse_unknown()
        return MemoryRunEventStore(max_trace_content=parsed.max_trace_content)
    if scheme == "jsonl":
        return _jsonl_store(parsed)
    opener = OPENERS.get(scheme.split("+")[0])
    if opener is None:
        raise parsed.error(
            f"unknown backend {parts.scheme!r}; expected memory://, jsonl://, postgresql://, sqlite:// or kafka://"
        )
    store: RunEventStore = importlib.import_module(opener).open_url(parsed)
    return store


def _shown(url: str) -> str:
    """`url` with its passwords masked and its `blobs=` shown by the blob URLs' own rule.

    mask_secrets knows database URLs; a blob store URL, percent-encoded inside this one, may carry
    secrets by names it does not know (an s3 URL's `aws_secret_access_key=`).
    """
    base, _, query = url.partition("?")
    fields = []
    for field in query.split("&"):
        name, _, value = field.partition("=")
        if name == "blobs":
            field = f"blobs={quote(shown_blob_url(unquote_plus(value)), safe=':/*')}"
        fields.append(field)
    return mask_secrets(f"{base}?{'&'.join(fields)}")


def _max_trace_content(value: str | None, shown: str) -> int | None:
    if value is None:
        return None
    if not value.isdigit():
        raise InvalidStoreUrlError(f"{shown!r}: max_trace_content must be a number of bytes, got {value!r}")
    return int(value)


def _jsonl_store(url: StoreUrl) -> RunEventStore:
    path = url.parts.netloc + url.parts.path
    if not path:
        raise url.error("a jsonl URL names a directory, e.g. jsonl:///var/lib/runevents")
    durability = url.pop("durability", "flush")
    if durability not in ("flush", "fsync"):
        raise url.error(f"durability must be 'flush' or 'fsync', got {durability!r}")
    blobs = url.blobs()
    url.refuse_unknown()
    try:
        return JsonlRunEventStore(
            path,
            durability="fsync" if durability == "fsync" else "flush",
            max_trace_content=url.max_trace_content,
            blobs=None if blobs is None else blobs.open(),
        )
    except ValueError as exc:
        raise url.error(str(exc)) from None
