"""The contract and the local backends; `open_store` picks any backend from a URL."""

from runevents.store.base import RunEventStore
from runevents.store.jsonl import JsonlRunEventStore
from runevents.store.memory import MemoryRunEventStore
from runevents.store.opener import open_store

__all__ = ["JsonlRunEventStore", "MemoryRunEventStore", "RunEventStore", "open_store"]
