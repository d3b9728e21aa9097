"""The contract and its backends; `open_store` picks one from a URL."""

from __future__ import annotations

from urllib.parse import parse_qs, urlencode, urlsplit

from runevents.bus.names import DEFAULT_PROJECTION, DEFAULT_TOPIC
from runevents.errors import InvalidStoreUrlError
from runevents.events import DEFAULT_MAX_TRACE_CONTENT
from runevents.masking import mask_secrets
from runevents.store.base import RunEventStore
from runevents.store.jsonl import JsonlRunEventStore
from runevents.store.memory import MemoryRunEventStore

__all__ = ["JsonlRunEventStore", "MemoryRunEventStore", "RunEventStore", "open_store"]


def open_store(url: str) -> RunEventStore:
    """A store for a backend URL: `memory://`, `jsonl:///dir?durability=fsync`, a PostgreSQL or SQLite
    URL, or `kafka://host:port[,host:port]/topic?database=<postgresql URL, percent-encoded>` (the bus).

    Every error is an `InvalidStoreUrlError` (or `UnsupportedDatabaseError`, `InvalidNameError`) whose
    message shows the URL with its passwords masked.
    """
    if not isinstance(url, str):
        raise InvalidStoreUrlError(f"a backend URL is a str, got {type(url).__name__}")
    shown = mask_secrets(url)
    parts = urlsplit(url)
    options = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    max_trace_content = _max_trace_content(options.pop("max_trace_content", None), shown)
    scheme = parts.scheme.lower()
    if scheme == "memory":
        store: RunEventStore = MemoryRunEventStore(max_trace_content=max_trace_content)
    elif scheme == "jsonl":
        store = _jsonl_store(parts.netloc + parts.path, options, max_trace_content, shown)
    elif scheme.split("+")[0] in ("postgresql", "postgres", "sqlite"):
        from runevents.store.sql import LIBPQ_TLS, SqlRunEventStore  # SQLAlchemy loads only for sql

        schema = options.pop("schema", None)
        # The TLS parameters stay in the URL the engine reads (see runevents.store.sql.engine_for);
        # anything else in the query is open_store's and must be known.
        tls: dict[str, str] = {key: options.pop(key) for key in LIBPQ_TLS if key in options}
        # Not urlunsplit: it folds sqlite:////abs/path (no host) into sqlite://abs/path.
        database_url = url.split("?", 1)[0] + (f"?{urlencode(tls)}" if tls else "")
        _refuse_unknown(options, shown)
        store = SqlRunEventStore(
            database_url,
            schema=schema,
            max_trace_content=DEFAULT_MAX_TRACE_CONTENT if max_trace_content is None else max_trace_content,
        )
    elif scheme == "kafka":
        # aiokafka loads only for the bus backend.
        from runevents.store.bus import BusRunEventStore

        database = options.pop("database", None)
        if not parts.netloc or not database:
            raise InvalidStoreUrlError(
                f"{shown!r}: a kafka URL names the brokers and the read tables' database, e.g. "
                "kafka://broker:9092/run-events?database=postgresql%3A%2F%2Fuser%40db%2Frunevents"
            )
        topic, projection, schema = (
            parts.path.strip("/") or DEFAULT_TOPIC,
            options.pop("projection", DEFAULT_PROJECTION),
            options.pop("schema", None),
        )
        _refuse_unknown(options, shown)
        store = BusRunEventStore(
            parts.netloc,
            database,
            topic=topic,
            projection=projection,
            schema=schema,
            max_trace_content=DEFAULT_MAX_TRACE_CONTENT if max_trace_content is None else max_trace_content,
        )
    else:
        raise InvalidStoreUrlError(
            f"{shown!r}: unknown backend {parts.scheme!r}; expected memory://, jsonl://, postgresql://, "
            "sqlite:// or kafka://"
        )
    _refuse_unknown(options, shown)
    return store


def _max_trace_content(value: str | None, shown: str) -> int | None:
    if value is None:
        return None
    if not value.isdigit():
        raise InvalidStoreUrlError(f"{shown!r}: max_trace_content must be a number of bytes, got {value!r}")
    return int(value)


def _jsonl_store(
    path: str, options: dict[str, str], max_trace_content: int | None, shown: str
) -> RunEventStore:
    if not path:
        raise InvalidStoreUrlError(
            f"{shown!r}: a jsonl URL names a directory, e.g. jsonl:///var/lib/runevents"
        )
    durability = options.pop("durability", "flush")
    if durability not in ("flush", "fsync"):
        raise InvalidStoreUrlError(f"{shown!r}: durability must be 'flush' or 'fsync', got {durability!r}")
    _refuse_unknown(options, shown)
    try:
        return JsonlRunEventStore(
            path,
            durability="fsync" if durability == "fsync" else "flush",
            max_trace_content=max_trace_content,
        )
    except ValueError as exc:
        raise InvalidStoreUrlError(f"{shown!r}: {exc}") from None


def _refuse_unknown(options: dict[str, str], shown: str) -> None:
    # Checked before a store is made: a store opened on a typo would hold connections nobody closes.
    if options:
        raise InvalidStoreUrlError(f"{shown!r}: unknown option(s) {', '.join(sorted(options))}")
