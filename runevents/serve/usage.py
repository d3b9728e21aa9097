"""`GET /api/threads/{thread_id}/token-usage`: deer-flow's thread token usage, when the store keeps usage.

Usage is kept beside the read tables by `runevents usage run` (runevents/usage/); this module knows it
only as `TokenUsageReader`, a Protocol, so the service still reads through the contract alone.
A store without usage (memory, JSONL, SQLite, or tables before revision 0004) answers 404 saying so.
"""

from __future__ import annotations

from typing import Any, Final, Protocol

from fastapi import APIRouter, HTTPException, Request

from runevents.serve.access import ReaderDep, StoreDep, check_visible, served_of
from runevents.serve.models import ThreadTokenUsage
from runevents.serve.reads import REFUSALS, ThreadId

NOT_KEPT: Final = "token usage is not kept by this store"


class TokenUsageReader(Protocol):
    """What the route reads usage through (runevents.usage.UsageReader is one)."""

    async def thread_usage(self, thread_id: str, user_id: str | None = None) -> dict[str, Any] | None:
        """The thread's usage (of `user_id`'s calls only, if given); None if usage is not kept."""
        ...

    async def close(self) -> None:
        """Release what the reader holds."""
        ...


router = APIRouter(prefix="/api/threads", tags=["usage"], responses=REFUSALS)


@router.get(
    "/{thread_id}/token-usage",
    response_model=ThreadTokenUsage,
    responses={404: {"description": f"The thread is not the token's user's, or {NOT_KEPT}"}},
)
async def thread_token_usage(
    thread_id: ThreadId, request: Request, store: StoreDep, reader: ReaderDep
) -> dict[str, Any]:
    """Token usage of the thread: totals, per model, per caller kind and (runevents' addition) per run."""
    usage = served_of(request).usage
    if usage is None:
        raise HTTPException(404, NOT_KEPT)
    await check_visible(store, thread_id, reader)
    found = await usage.thread_usage(thread_id, reader.user_id)
    if found is None:
        raise HTTPException(404, NOT_KEPT)
    return found
