"""The contract and its backends; `open_store` picks one from a URL."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from runevents.events import DEFAULT_MAX_TRACE_CONTENT
from runevents.store.base import RunEventStore
from runevents.store.jsonl import JsonlRunEventStore
from runevents.store.memory import MemoryRunEventStore
from runevents.topic import DEFAULT_TOPIC

__all__ = ["JsonlRunEventStore", "MemoryRunEventStore", "RunEventStore", "open_store"]


def open_store(url: str) -> RunEventStore:
    """A store for a backend URL: `memory://`, `jsonl:///dir?durability=fsync`, a PostgreSQL or SQLite
    URL, or `kafka://host:port[,host:port]/topic?database=<postgresql URL, percent-encoded>` (the bus)."""
    parts = urlsplit(url)
    options = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    max_trace = options.pop("max_trace_content", None)
    max_trace_content = int(max_trace) if max_trace is not None else None
    if parts.scheme == "memory":
        store: RunEventStore = MemoryRunEventStore(max_trace_content=max_trace_content)
    elif parts.scheme == "jsonl":
        path = parts.netloc + parts.path
        if not path:
            raise ValueError(f"{url!r}: a jsonl URL names a directory, e.g. jsonl:///var/lib/runevents")
        durability = options.pop("durability", "flush")
        if durability not in ("flush", "fsync"):
            raise ValueError(f"{url!r}: durability must be 'flush' or 'fsync', got {durability!r}")
        store = JsonlRunEventStore(
            path,
            durability="fsync" if durability == "fsync" else "flush",
            max_trace_content=max_trace_content,
        )
    elif parts.scheme.split("+")[0] in ("postgresql", "postgres", "sqlite"):
        from runevents.store.sql import SqlRunEventStore  # SQLAlchemy loads only for the sql backend

        schema = options.pop("schema", None)
        # Not urlunsplit: it folds sqlite:////abs/path (no host) into sqlite://abs/path.
        database_url = url.split("?", 1)[0]
        store = SqlRunEventStore(
            database_url,
            schema=schema,
            max_trace_content=DEFAULT_MAX_TRACE_CONTENT if max_trace is None else max_trace_content,
        )
    elif parts.scheme == "kafka":
        # aiokafka loads only for the bus backend.
        from runevents.consumer.projector import DEFAULT_PROJECTION
        from runevents.store.bus import BusRunEventStore

        database = options.pop("database", None)
        if not parts.netloc or not database:
            raise ValueError(
                f"{url!r}: a kafka URL names the brokers and the read tables' database, e.g. "
                "kafka://broker:9092/run-events?database=postgresql%3A%2F%2Fuser%40db%2Frunevents"
            )
        store = BusRunEventStore(
            parts.netloc,
            database,
            topic=parts.path.strip("/") or DEFAULT_TOPIC,
            projection=options.pop("projection", DEFAULT_PROJECTION),
            schema=options.pop("schema", None),
            max_trace_content=DEFAULT_MAX_TRACE_CONTENT if max_trace is None else max_trace_content,
        )
    else:
        raise ValueError(
            f"{url!r}: unknown backend {parts.scheme!r}; expected memory://, jsonl://, postgresql://, "
            "sqlite:// or kafka://"
        )
    if options:
        raise ValueError(f"{url!r}: unknown option(s) {', '.join(sorted(options))}")
    return store
