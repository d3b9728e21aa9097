"""The backends the conformance suite runs on, and how a test opens each."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runevents.store import JsonlRunEventStore, MemoryRunEventStore, RunEventStore


@dataclass(frozen=True)
class Backend:
    """One backend under test: how to open a store over its storage, and what it can do."""

    name: str
    opener: Callable[..., RunEventStore]
    # Whether a store opened again over the same storage sees what an earlier one wrote.
    persistent: bool

    def open(self, **options: Any) -> RunEventStore:
        """A new store object over this backend's storage (options: `max_trace_content`)."""
        return self.opener(**options)


def memory_backend(_: Path) -> Backend:
    """The memory backend: every open is a new, empty store."""
    return Backend("memory", lambda **options: MemoryRunEventStore(**options), persistent=False)


def jsonl_backend(directory: Path) -> Backend:
    """The JSONL backend over one directory: every open sees what earlier ones wrote."""
    return Backend("jsonl", lambda **options: JsonlRunEventStore(directory, **options), persistent=True)


BACKENDS: dict[str, Callable[[Path], Backend]] = {
    "memory": memory_backend,
    "jsonl": jsonl_backend,
}
