"""The stored record: the model and dict every backend returns, and which messages a user sees."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Final

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from runevents.events.codec import utc_iso
from runevents.events.input import MESSAGE_CATEGORY
from runevents.events.prepared import PreparedEvent

AI_RESPONSE_EVENT_TYPES: Final = frozenset({"llm.ai.response", "ai_message"})
MIDDLEWARE_CALLER_PREFIX: Final = "middleware:"

Record = dict[str, Any]


def _assume_utc(value: datetime) -> datetime:
    # Records written before offsets were enforced (deer-flow's SQLite store drops them) are UTC.
    return value if value.utcoffset() is not None else value.replace(tzinfo=UTC)


class RunEventRecord(BaseModel):
    """One stored event: the envelope every backend returns (guarantee 4)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    thread_id: str
    run_id: str
    seq: int = Field(ge=1)
    event_id: str
    event_type: str
    category: str
    content: str | dict[str, Any] | list[Any]
    metadata: dict[str, Any]
    created_at: Annotated[datetime, AfterValidator(_assume_utc)]
    user_id: str | None = None


def make_record(event: PreparedEvent, seq: int) -> Record:
    """The envelope record of a prepared event once its seq is assigned."""
    return {
        "thread_id": event.thread_id,
        "run_id": event.run_id,
        "seq": seq,
        "event_id": event.event_id,
        "event_type": event.event_type,
        "category": event.category,
        "content": event.content,
        "metadata": event.metadata,
        "created_at": event.created_at,
        "user_id": event.user_id,
    }


def record_from_model(model: RunEventRecord) -> Record:
    """The envelope record of a validated stored record, timestamps in UTC."""
    return {
        "thread_id": model.thread_id,
        "run_id": model.run_id,
        "seq": model.seq,
        "event_id": model.event_id,
        "event_type": model.event_type,
        "category": model.category,
        "content": model.content,
        "metadata": model.metadata,
        "created_at": utc_iso(model.created_at),
        "user_id": model.user_id,
    }


def is_visible_ai_message(event_type: str, category: str, metadata: Mapping[str, Any]) -> bool:
    """Whether a record is an AI response a user sees (not written by middleware)."""
    if category != MESSAGE_CATEGORY or event_type not in AI_RESPONSE_EVENT_TYPES:
        return False
    caller = metadata.get("caller")
    return not str(caller if caller is not None else "").startswith(MIDDLEWARE_CALLER_PREFIX)
