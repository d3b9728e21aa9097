"""Prometheus metrics, and the projector's HTTP port: /metrics, /healthz (ready) and /livez (alive).

The projector counts what it applies as each batch commits; its lag is read at scrape time from
where it stands, so it is never stale. Writers (the bus store) time their read-your-writes waits
into the same default registry: a process that serves its own /metrics shows them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Final, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)


class Projector(Protocol):
    """What the metrics and health endpoints read of a projector: metrics never import the projector."""

    @property
    def topic(self) -> str:
        """The topic it projects."""
        ...

    @property
    def projection(self) -> str:
        """The projection it writes."""
        ...

    @property
    def assignment(self) -> object:
        """The partitions it owns now (empty when it owns none)."""
        ...

    def progress(self) -> dict[int, tuple[int, int | None]]:
        """Per owned partition: the stored next offset and the log's end as last fetched."""
        ...

    async def check_database(self) -> None:
        """Raise unless its database answers."""
        ...


HEALTH_TIMEOUT_S: Final = 2.0
_LABELS: Final = ("topic", "projection")

PROJECTED = Counter("runevents_projector_events", "Events applied to the read tables", _LABELS)
DEAD_LETTERS = Counter("runevents_dead_letters", "Records sent to the dead letters", _LABELS)
BATCH_RECORDS = Histogram(
    "runevents_projector_batch_records",
    "Records in each committed batch",
    _LABELS,
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
)
BATCH_SECONDS = Histogram(
    "runevents_projector_batch_seconds",
    "Seconds to apply and commit each batch",
    _LABELS,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
READ_YOUR_WRITES_WAIT = Histogram(
    "runevents_read_your_writes_wait_seconds",
    "Seconds a bus-store write waited for the projection to apply it",
    ("topic",),
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

READ_YOUR_WRITES_SEQS = Counter(
    "runevents_read_your_writes_seqs",
    "Seqs of bus-store writes, by how the writer learned them: told by the projector, or read back",
    ("topic", "how"),
)

RETENTION_EXPIRED = Counter("runevents_retention_expired_events", "Events removed by retention")
RETENTION_BLOBS_COLLECTED = Counter(
    "runevents_retention_collected_blobs", "Blobs no event points at any more, removed by retention"
)
RETENTION_OLDEST_AGE = Gauge(
    "runevents_retention_oldest_event_age_seconds",
    "Age of the oldest event the last retention run left in a thread whose policy expires events",
)


def observe_batch(
    topic: str, projection: str, records: int, seconds: float, projected: int, dead: int
) -> None:
    """Count one committed batch."""
    BATCH_RECORDS.labels(topic, projection).observe(records)
    BATCH_SECONDS.labels(topic, projection).observe(seconds)
    if projected:
        PROJECTED.labels(topic, projection).inc(projected)
    if dead:
        DEAD_LETTERS.labels(topic, projection).inc(dead)


class LagCollector(Collector):
    """A projector's lag per partition, as it stands when scraped."""

    def __init__(self, projector: Projector) -> None:
        self._projector = projector

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """`runevents_projector_lag_records` for each partition the projector owns."""
        family = GaugeMetricFamily(
            "runevents_projector_lag_records",
            "Records of the partition not yet applied: the log's end as last fetched minus the stored offset",
            labels=["topic", "projection", "partition"],
        )
        projector = self._projector
        for partition, (done, end) in sorted(projector.progress().items()):
            if end is not None:
                family.add_metric([projector.topic, projector.projection, str(partition)], max(0, end - done))
        yield family


async def _respond(writer: asyncio.StreamWriter, status: str, body: bytes, content_type: str) -> None:
    head = f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
    writer.write(head.encode() + b"Connection: close\r\n\r\n" + body)
    await writer.drain()


async def readiness(projector: Projector) -> str | None:
    """Why the projector is not ready (no partitions, database silent), or None if it is."""
    if not projector.assignment:
        return "no partitions assigned"
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_S):
            await projector.check_database()
    except Exception as error:  # any failure to answer is the answer
        return f"database did not answer: {type(error).__name__}"
    return None


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _handler(projector: Projector) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            method, _, rest = request.decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                await _respond(writer, "405 Method Not Allowed", b"GET only\n", "text/plain")
            elif path == "/metrics":
                await _respond(writer, "200 OK", generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
            elif path == "/livez":
                await _respond(writer, "200 OK", b"alive\n", "text/plain")
            elif path == "/healthz":
                problem = await readiness(projector)
                if problem is None:
                    await _respond(writer, "200 OK", b"ready\n", "text/plain")
                else:
                    await _respond(writer, "503 Service Unavailable", f"{problem}\n".encode(), "text/plain")
            else:
                await _respond(writer, "404 Not Found", b"/metrics, /healthz or /livez\n", "text/plain")
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass  # a client that went away or never finished asking
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    return handle


@contextlib.asynccontextmanager
async def serve_metrics(projector: Projector, host: str, port: int) -> AsyncIterator[int | None]:
    """Serve /metrics, /healthz and /livez for `projector` while the block runs (port 0: nothing).

    Yields the port listened on, or None.
    """
    if port == 0:
        yield None
        return
    collector = LagCollector(projector)
    REGISTRY.register(collector)
    server = await asyncio.start_server(_handler(projector), host, port)
    log.info("metrics and health on http://%s:%d (/metrics, /healthz, /livez)", host, port)
    try:
        yield port
    finally:
        server.close()
        await server.wait_closed()
        REGISTRY.unregister(collector)
