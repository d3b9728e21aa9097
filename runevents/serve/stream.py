"""The live route: a thread's records as Server-Sent Events, backed by `RunEventStore.subscribe`.

Each record is one event: `id:` its seq, `event: record`, `data:` the record's JSON. A browser's
EventSource sends the last id it saw as `Last-Event-ID` when it reconnects, and that header wins
over `after_seq`, so a reconnect resumes right after the last record received: no gap, no repeat.
A comment line (`: ping`) every `heartbeat_s` keeps proxies from closing an idle stream. When the
thread is deleted the stream sends `event: deleted` and ends; a client should then stop (an
EventSource would otherwise reconnect, to a thread that starts again at seq 1).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, Any, Final

import anyio
from fastapi import APIRouter, Header, Query, Request
from prometheus_client import Gauge
from sse_starlette import EventSourceResponse, ServerSentEvent

from runevents.errors import ThreadDeletedError
from runevents.events import MAX_ID_LENGTH, Record
from runevents.masking import error_line
from runevents.serve.access import ReaderDep, StoreDep, check_visible, served_of
from runevents.serve.reads import REFUSALS, ThreadId
from runevents.serve.records import presented, sse_json
from runevents.store.arguments import MAX_SEQ

log = logging.getLogger(__name__)

# A client that stops reading (its buffers full) is dropped after this long rather than held for ever.
SEND_TIMEOUT_S: Final = 60.0

router = APIRouter(prefix="/api/threads", tags=["live"], responses=REFUSALS)

_STREAM_DOC: Final[dict[int | str, dict[str, Any]]] = {
    200: {
        "description": "An endless text/event-stream: `event: record` per record (`id:` = seq), "
        "`event: deleted` when the thread is deleted, `event: error` if the store fails, `: ping` comments",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


@router.get("/{thread_id}/stream", response_class=EventSourceResponse, responses=_STREAM_DOC)
async def stream_thread(
    thread_id: ThreadId,
    request: Request,
    store: StoreDep,
    reader: ReaderDep,
    after_seq: Annotated[
        int, Query(ge=0, le=MAX_SEQ, description="Send the records after this seq (0: all), then new ones")
    ] = 0,
    last_event_id: Annotated[
        int | None,
        Header(
            alias="Last-Event-ID",
            ge=0,
            le=MAX_SEQ,
            description="Set by a reconnecting EventSource; takes precedence over after_seq",
        ),
    ] = None,
    run_id: Annotated[
        str | None, Query(min_length=1, max_length=MAX_ID_LENGTH, description="Only this run's records")
    ] = None,
    categories: Annotated[
        str | None, Query(description="Comma-separated categories to keep (`message,outputs`); absent: all")
    ] = None,
) -> EventSourceResponse:
    """Follow a thread live: its records after a seq in seq order, then each new one as it is stored."""
    start = after_seq if last_event_id is None else last_event_id
    kept = categories.split(",") if categories else None
    # Read before answering, so that a refusal (a bad id for this backend, a thread the token's user
    # cannot see) is a 4xx, not an error inside a stream that already answered 200.
    count = await store.count_messages(thread_id, user_id=reader.user_id)
    await check_visible(store, thread_id, reader, seen=count > 0)
    subscription = store.subscribe(
        thread_id, after_seq=start, run_id=run_id, categories=kept, user_id=reader.user_id
    )
    served = served_of(request)
    return EventSourceResponse(
        _events(subscription, thread_id, served.metrics.open_streams),
        ping=served.heartbeat_s,
        ping_message_factory=lambda: ServerSentEvent(comment="ping"),
        send_timeout=SEND_TIMEOUT_S,
    )


async def _events(
    subscription: AsyncGenerator[Record, None], thread_id: str, open_streams: Gauge
) -> AsyncIterator[ServerSentEvent]:
    """The SSE events of a subscription; it is closed however the stream ends (the client leaving too)."""
    open_streams.inc()
    try:
        async for record in subscription:
            yield ServerSentEvent(data=sse_json(presented(record)), id=str(record["seq"]), event="record")
    except ThreadDeletedError:
        yield ServerSentEvent(data=sse_json({"thread_id": thread_id}), event="deleted")
    except Exception as error:  # the store failed: say so, end, and let the client reconnect and resume
        line = error_line(error)
        log.warning("stream of thread %r ended: %s", thread_id, line)
        failed = {"detail": "the store failed; reconnect to resume"}
        yield ServerSentEvent(data=sse_json(failed), event="error")
    finally:
        try:
            # Shielded: a client that left cancels this task, and the subscription's cleanup (its
            # doorbell, a database listener) must still run to the end.
            with anyio.CancelScope(shield=True):
                await subscription.aclose()
        finally:
            open_streams.dec()
