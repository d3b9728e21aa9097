"""The response models of the HTTP routes: what /openapi.json publishes and every response is checked by."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class StoredRecord(BaseModel):
    """One stored event, the envelope every backend returns; callers ignore fields they do not know."""

    # Extra fields pass through: a record is the store's, and a later envelope may add to it.
    model_config = ConfigDict(extra="allow")

    thread_id: str
    run_id: str
    seq: int = Field(ge=1, description="Per-thread, strictly increasing and gap-free in write order")
    event_id: str
    event_type: str
    category: str
    content: str | dict[str, Any] | list[Any]
    metadata: dict[str, Any]
    created_at: str = Field(description="UTC, ISO-8601 with +00:00")
    user_id: str | None = None


class ThreadMessagesPage(BaseModel):
    """A backward page of a thread's messages, ascending within the page."""

    data: list[StoredRecord]
    has_more: bool = Field(description="Older messages exist before the first of this page")
    next_before_seq: int | None = Field(
        default=None, description="The `before_seq` of the next (older) page; null on the last page"
    )


class RunMessagesPage(BaseModel):
    """A page of one run's messages, ascending."""

    data: list[StoredRecord]
    has_more: bool = Field(
        description="More messages lie beyond this page: after it when paging with after_seq, else before it"
    )


class MessageCount(BaseModel):
    """How many message records a thread holds (of the caller's user, when the token reads one user)."""

    count: int = Field(ge=0)


class MessageSeqs(BaseModel):
    """The seq of the earliest message record carrying each asked-for message id; unknown ids left out."""

    seqs: dict[str, int]


class ModelUsage(BaseModel):
    """Tokens of one model in a thread, and in how many runs it was called."""

    tokens: int = 0
    runs: int = Field(default=0, description="Runs in which this model was called")


class CallerUsage(BaseModel):
    """Tokens by deer-flow's caller kinds: `subagent:*`, `middleware:*`, anything else the lead agent."""

    lead_agent: int = 0
    subagent: int = 0
    middleware: int = 0


class RunUsage(BaseModel):
    """Tokens and calls of one run (a runevents addition)."""

    total_tokens: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    calls: int = 0
    calls_without_usage: int = 0


class ThreadTokenUsage(BaseModel):
    """deer-flow's `ThreadTokenUsageResponse`, plus runevents' additions (`by_run` and below).

    A sum counts the calls that carried that count; a call whose record carried no usable usage is
    counted in `calls_without_usage`, never as 0 tokens.
    """

    thread_id: str
    total_tokens: int = 0
    total_input_tokens: int = 0
    total_output_tokens: int = 0
    total_runs: int = Field(default=0, description="Runs with at least one model call")
    by_model: dict[str, ModelUsage] = Field(default_factory=dict)
    by_caller: CallerUsage = Field(default_factory=CallerUsage)
    context_usage: dict[str, Any] | None = Field(default=None, description="Always null: not kept")
    by_run: dict[str, RunUsage] = Field(default_factory=dict)
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    reasoning_tokens: int = 0
    calls: int = Field(default=0, description="Model calls (llm.ai.response records)")
    calls_without_usage: int = Field(default=0, description="Calls whose usage is unknown")


class Health(BaseModel):
    """Whether the store answers."""

    status: str = Field(description="`ok`, or `unavailable` with the reason")
    reason: str | None = None


class Problem(BaseModel):
    """One thing wrong with a request: where (`["query", "limit"]`) and what."""

    loc: list[str | int]
    msg: str
    type: str


class Problems(BaseModel):
    """A 422 body: what was wrong with the request, each naming the parameter."""

    detail: list[Problem]


class Refusal(BaseModel):
    """A 401 or 404 body."""

    detail: str
