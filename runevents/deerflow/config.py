"""The run-events configuration the drop-in reads: deer-flow's `run_events` section, plus runevents' own.

deer-flow's `RunEventsConfig` has `backend` (memory | db | jsonl), `max_trace_content` and
`track_token_usage`, and drops any other key. So the keys only runevents knows (`url`, `bus`, ...) come
either from a config object that carries them (a dict, or this module's `RunEventsConfig` in place of
deer-flow's) or from the environment (`RUNEVENTS_DEERFLOW_*`), which wins: an operator switches a
deployment's store without touching deer-flow's config model.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from runevents.errors import RunEventsError

log = logging.getLogger(__name__)

Backend = Literal["memory", "db", "jsonl", "bus", "url"]
DEERFLOW_MAX_TRACE_CONTENT = 10_240  # deer-flow's default, in bytes
DEFAULT_SCHEMA = "runevents"  # beside deer-flow's own tables, whose `run_events` would collide


class ConfigError(RunEventsError, ValueError):
    """A run-events configuration the drop-in cannot use."""


class BusConfig(BaseModel):
    """Where the bus backend publishes and reads; what is left out comes from runevents' settings."""

    model_config = ConfigDict(extra="forbid")

    brokers: str | None = Field(default=None, description="Kafka bootstrap servers (else RUNEVENTS_KAFKA)")
    topic: str | None = Field(default=None, description="The run-events topic (else RUNEVENTS_TOPIC)")
    database: str | None = Field(
        default=None, description="The read tables' PostgreSQL URL (else RUNEVENTS_DATABASE_URL)"
    )
    schema_name: str | None = Field(default=None, description="The projection's PostgreSQL schema")


class RunEventsConfig(BaseModel):
    """deer-flow's `run_events` section with runevents' keys: usable in place of deer-flow's model."""

    model_config = ConfigDict(extra="forbid")

    backend: Backend = Field(default="memory", description="memory | db | jsonl (deer-flow's), bus | url")
    max_trace_content: int | None = Field(
        default=DEERFLOW_MAX_TRACE_CONTENT, ge=1, description="Bytes a trace's content keeps (None: all)"
    )
    track_token_usage: bool = Field(default=True, description="deer-flow's; read by its RunJournal")
    url: str | None = Field(default=None, description="Any open_store URL, for backend `url`")
    bus: BusConfig | None = Field(default=None, description="The bus backend's brokers, topic, database")
    jsonl_dir: str = Field(default=".deer-flow", description="The jsonl backend's directory")
    content_markers: bool | None = Field(
        default=None, description="deer-flow's content_is_json/content_is_dict in metadata (default: db only)"
    )
    migrate: bool = Field(default=True, description="Upgrade the read tables at start (db); else refuse")
    schema_name: str = Field(
        default=DEFAULT_SCHEMA, description="PostgreSQL schema of the db backend's tables"
    )


DEERFLOW_PREFIX = "RUNEVENTS_DEERFLOW_"


class EnvironmentOverrides(BaseSettings):
    """`RUNEVENTS_DEERFLOW_*` variables: each, when set, wins over the config object's key."""

    model_config = SettingsConfigDict(env_prefix=DEERFLOW_PREFIX, extra="ignore")

    backend: Backend | None = None
    url: str | None = None
    jsonl_dir: str | None = None
    content_markers: bool | None = None
    migrate: bool | None = None
    schema_name: str | None = None


def read_config(config: object) -> RunEventsConfig:
    """The configuration in `config` (None, a mapping, deer-flow's model or any object with its
    attributes), with the environment's overrides; `ConfigError` names a key that is wrong."""
    given = _as_mapping(config)
    _warn_unknown_variables()
    try:
        overrides = EnvironmentOverrides().model_dump(exclude_none=True)
        if "url" in overrides and "backend" not in overrides:
            overrides["backend"] = "url"
        return RunEventsConfig.model_validate({**given, **overrides})
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(part) for part in problem["loc"]) or "run_events"
        # The message, not the input: a URL given may carry a password.
        raise ConfigError(f"run_events.{where}: {problem['msg']}") from None


# Not read from the environment by the drop-in: the variable its tests take a deer-flow checkout from.
_TEST_VARIABLES = frozenset({"RUNEVENTS_DEERFLOW_SRC"})


def _warn_unknown_variables() -> None:
    """Log each `RUNEVENTS_DEERFLOW_*` variable the drop-in does not read (a typo goes unnoticed else)."""
    fields = EnvironmentOverrides.model_fields
    known = sorted({DEERFLOW_PREFIX + name.upper() for name in fields} | _TEST_VARIABLES)
    for name in sorted(os.environ):
        if name.upper().startswith(DEERFLOW_PREFIX) and name.upper() not in known:
            log.warning("%s is not a runevents.deerflow variable and is ignored (known: %s)", name, known)


def _as_mapping(config: object) -> dict[str, Any]:
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return dict(config)
    dump = getattr(config, "model_dump", None)
    values: dict[str, Any] = dump() if callable(dump) else dict(vars(config))
    # deer-flow's own model, or a namespace standing for it: only the keys this model knows.
    return {key: value for key, value in values.items() if key in RunEventsConfig.model_fields}
