"""deer-flow's run-event store API on runevents: switch a deer-flow deployment by configuration.

`make_run_event_store(config)` takes deer-flow's `run_events` configuration (backend memory, db or
jsonl) plus runevents' `bus` and `url` backends; the classes construct as deer-flow's do. Reads follow
deer-flow's current user (`deerflow.runtime.user_context`) when deer-flow is installed. docs/deer-flow.md
walks the switch.
"""

from runevents.deerflow.classes import (
    BusRunEventStore,
    DbRunEventStore,
    JsonlRunEventStore,
    MemoryRunEventStore,
)
from runevents.deerflow.config import BusConfig, ConfigError, RunEventsConfig
from runevents.deerflow.factory import make_run_event_store
from runevents.deerflow.store import DeerFlowRunEventStore, with_markers
from runevents.deerflow.users import AUTO, Users
from runevents.store import RunEventStore

__all__ = [
    "AUTO",
    "BusConfig",
    "BusRunEventStore",
    "ConfigError",
    "DbRunEventStore",
    "DeerFlowRunEventStore",
    "JsonlRunEventStore",
    "MemoryRunEventStore",
    "RunEventStore",
    "RunEventsConfig",
    "Users",
    "make_run_event_store",
    "with_markers",
]
