"""The read routes: a thread's message pages, a run's messages and events, message counts and seqs.

The shapes and bounds are deer-flow's (`app/gateway/routers/thread_runs.py`); docs/http.md lists
every difference.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

from fastapi import APIRouter, Path, Query, Request, Response

from runevents.events import MAX_ID_LENGTH
from runevents.serve.access import ReaderDep, StoreDep, check_visible
from runevents.serve.models import (
    MessageCount,
    MessageSeqs,
    Problems,
    Refusal,
    RunMessagesPage,
    StoredRecord,
    ThreadMessagesPage,
)
from runevents.serve.problems import invalid
from runevents.serve.records import json_response, presented_all
from runevents.store.arguments import MAX_SEQ

# deer-flow's page bounds.
MAX_PAGE: Final = 200
MAX_EVENTS: Final = 2000

ThreadId = Annotated[
    str,
    Path(min_length=1, max_length=MAX_ID_LENGTH, description="A thread id: 1 to 64 characters, no controls"),
]
RunId = Annotated[
    str, Path(min_length=1, max_length=MAX_ID_LENGTH, description="A run id: 1 to 64 characters, no controls")
]
PageLimit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="Messages in the page")]
BeforeSeq = Annotated[int | None, Query(ge=1, le=MAX_SEQ, description="Only messages before this seq")]
# deer-flow takes after_seq >= 1, so no forward page can start at the first record; 0 does here.
AfterSeq = Annotated[
    int | None, Query(ge=0, le=MAX_SEQ, description="Only records after this seq (0: from the first)")
]

# The refusals every thread route may answer, for the OpenAPI document.
REFUSALS: Final[dict[int | str, dict[str, Any]]] = {
    401: {"model": Refusal, "description": "Auth is on and the bearer token is missing or unknown"},
    404: {"model": Refusal, "description": "The token's user has no message in this thread"},
    422: {"model": Problems, "description": "A parameter is invalid; `loc` names it"},
}

router = APIRouter(prefix="/api/threads", tags=["reads"], responses=REFUSALS)


@router.get("/{thread_id}/messages/page", response_model=ThreadMessagesPage)
async def thread_messages_page(
    thread_id: ThreadId,
    request: Request,
    store: StoreDep,
    reader: ReaderDep,
    limit: PageLimit = 50,
    before_seq: BeforeSeq = None,
) -> Response:
    """A backward page of the thread's messages by seq: the latest, or the last before `before_seq`."""
    if "after_seq" in request.query_params:
        # As deer-flow: a client that sends it expects a forward page, which this route never gives.
        raise invalid("query", "after_seq", "after_seq is not supported by this backward-only endpoint")
    # One more than asked: whether it comes back says whether older messages exist.
    rows = await store.list_messages(
        thread_id, limit=limit + 1, before_seq=before_seq, user_id=reader.user_id
    )
    await check_visible(store, thread_id, reader, seen=bool(rows))
    has_more = len(rows) > limit
    data = rows[-limit:]
    return json_response(
        {
            "data": presented_all(data),
            "has_more": has_more,
            "next_before_seq": data[0]["seq"] if has_more else None,
        }
    )


@router.get("/{thread_id}/runs/{run_id}/messages", response_model=RunMessagesPage)
async def run_messages(
    thread_id: ThreadId,
    run_id: RunId,
    store: StoreDep,
    reader: ReaderDep,
    limit: PageLimit = 50,
    before_seq: BeforeSeq = None,
    after_seq: AfterSeq = None,
) -> Response:
    """A page of one run's messages: the first after `after_seq`, else the last before `before_seq`."""
    rows = await store.list_messages_by_run(
        thread_id, run_id, limit=limit + 1, before_seq=before_seq, after_seq=after_seq, user_id=reader.user_id
    )
    await check_visible(store, thread_id, reader, seen=bool(rows))
    has_more = len(rows) > limit
    # The extra row lies past the page's far end: after it when paging forward, else before it.
    data = rows[:limit] if after_seq is not None else rows[-limit:]
    return json_response({"data": presented_all(data), "has_more": has_more})


@router.get("/{thread_id}/runs/{run_id}/events", response_model=list[StoredRecord])
async def run_events(
    thread_id: ThreadId,
    run_id: RunId,
    store: StoreDep,
    reader: ReaderDep,
    event_types: Annotated[
        str | None, Query(description="Comma-separated event types to keep; absent or empty: every type")
    ] = None,
    task_id: Annotated[str | None, Query(description="Only records whose metadata.task_id is this")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_EVENTS, description="Records at most")] = 500,
    after_seq: AfterSeq = None,
) -> Response:
    """Every record of one run (debug and audit), ascending; the filters apply before `limit`."""
    types = event_types.split(",") if event_types else None
    rows = await store.list_events(
        thread_id,
        run_id,
        event_types=types,
        task_id=task_id,
        after_seq=after_seq,
        limit=limit,
        user_id=reader.user_id,
    )
    await check_visible(store, thread_id, reader, seen=bool(rows))
    return json_response(presented_all(rows))


@router.get("/{thread_id}/messages/count", response_model=MessageCount)
async def message_count(thread_id: ThreadId, store: StoreDep, reader: ReaderDep) -> Response:
    """How many message records the thread holds."""
    count = await store.count_messages(thread_id, user_id=reader.user_id)
    await check_visible(store, thread_id, reader, seen=count > 0)
    return json_response({"count": count})


@router.get("/{thread_id}/messages/seqs", response_model=MessageSeqs)
async def message_seqs(
    thread_id: ThreadId,
    store: StoreDep,
    reader: ReaderDep,
    ids: Annotated[
        list[str],
        Query(
            description="Message ids (the `id` of a message's content), comma-separated or repeated: "
            "`ids=a,b` or `ids=a&ids=b`"
        ),
    ],
) -> Response:
    """The seq of the earliest message record carrying each message id: where a message sits in the feed."""
    wanted = [part for value in ids for part in value.split(",") if part]
    seqs = await store.get_message_seqs(thread_id, wanted, user_id=reader.user_id)
    await check_visible(store, thread_id, reader, seen=bool(seqs))
    return json_response({"seqs": seqs})
