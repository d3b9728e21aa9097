"""The HTTP side's metrics: requests by route and status, time to the response's start, open streams."""

from __future__ import annotations

import time
from typing import Final

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The label of a request that matched no route: one label, not one per path a scanner tries.
UNMATCHED: Final = "unmatched"


class HttpMetrics:
    """One app's metrics, in a registry of its own (two apps in one process, as in tests, never clash)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "runevents_http_requests",
            "HTTP requests answered, by route template and status",
            ("method", "route", "status"),
            registry=self.registry,
        )
        self.response_start_seconds = Histogram(
            "runevents_http_response_start_seconds",
            "Seconds from a request to the start of its response (a stream's: to its headers)",
            ("route",),
            registry=self.registry,
        )
        self.open_streams = Gauge(
            "runevents_http_open_streams", "Live SSE streams open now", registry=self.registry
        )

    def exposition(self) -> bytes:
        """The Prometheus text of this app's metrics and of the process's default registry.

        The default registry holds what the store itself counts (a bus store's read-your-writes waits).
        """
        return generate_latest(self.registry) + generate_latest(REGISTRY)


def route_of(scope: Scope) -> str:
    """The template of the route a request matched (`/api/threads/{thread_id}/stream`), or `unmatched`."""
    route = scope.get("route")
    return route.path if isinstance(route, BaseRoute) and hasattr(route, "path") else UNMATCHED


class RequestMetrics:
    """ASGI middleware counting every HTTP request by its route template and status."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, noting when its response starts and with which status."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: int | None = None

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                # Counted at the start, not the end: a stream is seen while it is open.
                self._count(scope, status, started)
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            if status is None:  # an error before any response: the server answers 500
                self._count(scope, 500, started)

    def _count(self, scope: Scope, status: int, started: float) -> None:
        route = route_of(scope)
        self.metrics.requests.labels(scope["method"], route, str(status)).inc()
        self.metrics.response_start_seconds.labels(route).observe(time.perf_counter() - started)
