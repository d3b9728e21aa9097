"""Small helpers the conformance tests share: building events, reading a thread back, comparing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

from runevents.store import RunEventStore
from tests.backends.registry import Backend

Record = dict[str, Any]

# The envelope every returned record carries (guarantee 4).
ENVELOPE = (
    "thread_id",
    "run_id",
    "seq",
    "event_id",
    "event_type",
    "category",
    "content",
    "metadata",
    "created_at",
    "user_id",
)

# More than any test writes to one run: "give me everything".
EVERYTHING = 100_000


def event(
    thread_id: str = "t1",
    run_id: str = "r1",
    *,
    event_type: str = "llm.ai.response",
    category: str = "message",
    content: Any = "",
    metadata: Any = None,
    created_at: Any = None,
    user_id: Any = None,
) -> dict[str, Any]:
    """One event as `put_batch` takes it (and as `put` takes it with `**`)."""
    return {
        "thread_id": thread_id,
        "run_id": run_id,
        "event_type": event_type,
        "category": category,
        "content": content,
        "metadata": metadata,
        "created_at": created_at,
        "user_id": user_id,
    }


def message(thread_id: str = "t1", run_id: str = "r1", **fields: Any) -> dict[str, Any]:
    """A `message` event."""
    return event(thread_id, run_id, **{"category": "message", **fields})


def trace(thread_id: str = "t1", run_id: str = "r1", **fields: Any) -> dict[str, Any]:
    """A `trace` event."""
    return event(thread_id, run_id, **{"event_type": "llm.start", "category": "trace", **fields})


def seqs(records: Iterable[Record]) -> list[int]:
    """The seqs of records, in the order given."""
    return [record["seq"] for record in records]


def envelope(record: Record) -> Record:
    """The envelope fields of a record (a backend may add fields callers ignore)."""
    return {field: record[field] for field in ENVELOPE}


def canonical(value: Any) -> str:
    """JSON text that tells apart what `==` does not (`1`, `1.0` and `True`)."""
    return json.dumps(value, sort_keys=True)


def assert_same(actual: Any, expected: Any) -> None:
    """Equal, JSON types included."""
    # builders.py is not rewritten by pytest, so say what differed.
    assert actual == expected, f"{actual!r} != {expected!r}"
    assert canonical(actual) == canonical(expected), f"{canonical(actual)} != {canonical(expected)}"


async def run_records(store: RunEventStore, thread_id: str, run_id: str) -> list[Record]:
    """Every record of one run."""
    return await store.list_events(thread_id, run_id, limit=EVERYTHING)


async def thread_records(store: RunEventStore, thread_id: str, run_ids: Iterable[str]) -> list[Record]:
    """Every record of the given runs of a thread, in seq order."""
    found: list[Record] = []
    for run_id in run_ids:
        found.extend(await run_records(store, thread_id, run_id))
    return sorted(found, key=lambda record: int(record["seq"]))


@asynccontextmanager
async def opened(backend: Backend, **options: Any) -> AsyncIterator[RunEventStore]:
    """A store of the backend under test, closed on the way out."""
    store = backend.open(**options)
    try:
        yield store
    finally:
        await store.close()
