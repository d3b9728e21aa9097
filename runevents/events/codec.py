"""The JSON codec: values and timestamps as the persistent backends store them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

import orjson

# orjson would write datetimes as ISO-8601 and dataclasses as objects; the contract (and deer-flow,
# whose stores call json.dumps(default=str)) turns every value JSON cannot hold into str(value).
_JSON_OPTIONS: Final = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def to_json(value: Any) -> bytes:
    """Serialize a JSON value as the persistent backends store it (non-JSON values via str)."""
    return orjson.dumps(value, default=str, option=_JSON_OPTIONS)


def utc_iso(moment: datetime) -> str:
    """An aware timestamp as ISO-8601 in UTC with a +00:00 offset."""
    return moment.astimezone(UTC).isoformat()
