"""`create_app`: a store's read side as an ASGI app (FastAPI), with its lifespan, probes and metrics.

Routes (docs/http.md has the details and every difference from deer-flow's):

- `GET /api/threads/{thread_id}/messages/page?limit&before_seq` -> `{data, has_more, next_before_seq}`
- `GET /api/threads/{thread_id}/runs/{run_id}/messages?limit&before_seq&after_seq` -> `{data, has_more}`
- `GET /api/threads/{thread_id}/runs/{run_id}/events?event_types=a,b&task_id&limit&after_seq` -> `[...]`
- `GET /api/threads/{thread_id}/messages/count` -> `{count}`
- `GET /api/threads/{thread_id}/messages/seqs?ids=a,b` -> `{seqs: {id: seq}}`
- `GET /api/threads/{thread_id}/stream?after_seq` -> Server-Sent Events (runevents/serve/stream.py)
- `GET /api/threads/{thread_id}/token-usage` -> deer-flow's usage document (runevents/serve/usage.py)
- `GET /healthz`, `GET /metrics`, `GET /openapi.json` (these three need no token)
- `GET /`: the run viewer, a static page that reads the routes above (runevents/serve/viewer.py)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version
from typing import Final

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from runevents.errors import InvalidQueryError
from runevents.masking import error_line
from runevents.serve import reads, stream
from runevents.serve.access import Served, served_of
from runevents.serve.metrics import HttpMetrics, RequestMetrics
from runevents.serve.models import Health
from runevents.serve.problems import invalid_query
from runevents.serve.tokens import Tokens
from runevents.serve.usage import TokenUsageReader
from runevents.serve.usage import router as usage_router
from runevents.serve.viewer import mount_viewer
from runevents.store import RunEventStore

log = logging.getLogger(__name__)

# How long /healthz waits for the store before calling it unavailable.
HEALTH_TIMEOUT_S: Final = 2.0
# The thread /healthz reads: any id the backends accept; it need not exist.
_PROBE_THREAD: Final = "runevents-healthz"


def create_app(
    store: RunEventStore,
    *,
    tokens: Tokens | None = None,
    heartbeat_s: float = 15.0,
    usage: TokenUsageReader | None = None,
) -> FastAPI:
    """The HTTP app serving `store`'s reads; it closes the store (and `usage`) when it shuts down.

    `tokens` turns auth on (None: everyone reads everything); `heartbeat_s` is the interval of the
    live streams' ping comments (0: none); `usage` serves the token-usage route (None: it answers 404).
    """
    if heartbeat_s < 0:
        raise ValueError(f"heartbeat_s must be >= 0, got {heartbeat_s}")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            try:
                await store.close()
            finally:
                if usage is not None:
                    await usage.close()

    app = FastAPI(
        title="runevents",
        version=version("runevents"),
        summary="The read side of a runevents store: chat history pages, run views and live streams.",
        lifespan=lifespan,
        # The interactive pages load their scripts from a CDN; the document itself is /openapi.json.
        docs_url=None,
        redoc_url=None,
    )
    metrics = HttpMetrics()
    app.state.served = Served(
        store=store, tokens=tokens, metrics=metrics, heartbeat_s=heartbeat_s, usage=usage
    )
    app.add_middleware(RequestMetrics, metrics=metrics)
    app.add_exception_handler(InvalidQueryError, invalid_query)
    app.add_exception_handler(Exception, _internal_error)
    app.include_router(reads.router)
    app.include_router(stream.router)
    app.include_router(usage_router)
    app.add_api_route(
        "/healthz",
        healthz,
        methods=["GET"],
        response_model=Health,
        tags=["operations"],
        responses={503: {"model": Health, "description": "The store did not answer"}},
    )
    app.add_api_route(
        "/metrics",
        metrics_text,
        methods=["GET"],
        tags=["operations"],
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
    )
    mount_viewer(app)
    return app


async def healthz(request: Request) -> Response:
    """200 `ok` while the store answers a read within 2 s, else 503 with the reason."""
    try:
        await asyncio.wait_for(served_of(request).store.count_messages(_PROBE_THREAD), HEALTH_TIMEOUT_S)
    except TimeoutError:
        reason = f"the store did not answer within {HEALTH_TIMEOUT_S:g} s"
    except Exception as error:  # any failure of the store is the answer, not a crash of the probe
        reason = f"the store failed: {error_line(error)}"
    else:
        return JSONResponse(Health(status="ok").model_dump())
    return JSONResponse(Health(status="unavailable", reason=reason).model_dump(), status_code=503)


async def metrics_text(request: Request) -> Response:
    """The Prometheus metrics: requests by route and status, open streams, the store's own."""
    return Response(served_of(request).metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


async def _internal_error(request: Request, error: Exception) -> Response:
    """A 500 that says nothing of the failure to the client; the log has one masked line of it."""
    log.error("%s %s failed: %s", request.method, request.url.path, error_line(error))
    return JSONResponse({"detail": "internal error"}, status_code=500)
