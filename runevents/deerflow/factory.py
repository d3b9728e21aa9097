"""`make_run_event_store(config)`: deer-flow's factory, building runevents stores."""

from __future__ import annotations

import importlib
import logging

from runevents.deerflow.classes import DbRunEventStore, JsonlRunEventStore, MemoryRunEventStore
from runevents.deerflow.config import ConfigError, RunEventsConfig, read_config
from runevents.deerflow.store import DeerFlowRunEventStore
from runevents.deerflow.users import Users
from runevents.settings import load_settings
from runevents.store import open_store

log = logging.getLogger(__name__)

SESSIONS = "deerflow.persistence.engine"


def make_run_event_store(config: object = None) -> DeerFlowRunEventStore:
    """The store a deer-flow `run_events` configuration names (memory, db, jsonl, bus or url)."""
    chosen = read_config(config)
    users = Users.find()
    markers = chosen.content_markers
    if chosen.backend == "memory":
        return MemoryRunEventStore(content_markers=bool(markers), users=users)
    if chosen.backend == "jsonl":
        return JsonlRunEventStore(chosen.jsonl_dir, content_markers=bool(markers), users=users)
    if chosen.backend == "db":
        return _db_store(chosen, users)
    if chosen.backend == "bus":
        return _bus_store(chosen, users)
    if chosen.url is None:
        raise ConfigError("run_events.url: backend `url` needs a store URL (or RUNEVENTS_DEERFLOW_URL)")
    return DeerFlowRunEventStore(open_store(chosen.url), users=users, content_markers=bool(markers))


def _db_store(chosen: RunEventsConfig, users: Users) -> DeerFlowRunEventStore:
    try:
        sessions = importlib.import_module(SESSIONS)
    except ImportError:
        raise ConfigError(
            f"run_events.backend: `db` uses deer-flow's database ({SESSIONS} is not importable here); "
            "outside deer-flow, use backend `url` with the database's URL"
        ) from None
    factory = sessions.get_session_factory()
    if factory is None:
        # deer-flow's own fallback, said out loud: `database.backend: memory` has no engine to share.
        log.warning(
            "run_events.backend is db but deer-flow has no database configured: events are kept in memory"
        )
        return MemoryRunEventStore(content_markers=chosen.content_markers is not False, users=users)
    return DbRunEventStore(
        factory,
        max_trace_content=chosen.max_trace_content,
        schema=chosen.schema_name,
        migrate=chosen.migrate,
        content_markers=chosen.content_markers is not False,
        users=users,
    )


def _bus_store(chosen: RunEventsConfig, users: Users) -> DeerFlowRunEventStore:
    bus = chosen.bus
    # What the config leaves out comes from runevents' settings (RUNEVENTS_KAFKA, ...), TLS and SASL too.
    given = {} if bus is None else bus.model_dump(exclude_none=True)
    options = {
        "kafka": given.get("brokers"),
        "topic": given.get("topic"),
        "database_url": given.get("database"),
        "schema_name": given.get("schema_name"),
    }
    settings = load_settings(options).settings
    settings.require("kafka", "database_url")
    store = settings.bus_store(max_trace_content=chosen.max_trace_content)
    return DeerFlowRunEventStore(store, users=users, content_markers=bool(chosen.content_markers))


__all__ = ["make_run_event_store"]
