"""A real uvicorn server for the tests, and a client's view of its Server-Sent Events."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import uvicorn
from fastapi import FastAPI

from runevents.store import RunEventStore

T = TypeVar("T")
START_S = 30.0


class LiveServer:
    """`app` served by uvicorn on a loopback port of its own, on a thread with its own event loop.

    The app's store lives in that loop; a test reaches it through `run`, which runs a coroutine there.
    """

    def __init__(self, app: FastAPI, store: RunEventStore) -> None:
        self.app = app
        self.store = store
        # Bound here, to port 0: the port is ours before the server starts, with no race for it.
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, log_config=None, ws="none", lifespan="on", timeout_graceful_shutdown=3, http="h11"
        )
        self._server = uvicorn.Server(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failure: list[BaseException] = []
        self._thread = threading.Thread(target=self._main, name=f"uvicorn-{self.port}", daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as error:
            self._failure.append(error)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._server.serve(sockets=[self._socket])

    def start(self) -> LiveServer:
        """Start serving; return once the server accepts connections."""
        self._thread.start()
        deadline = time.monotonic() + START_S
        while not self._server.started:
            if self._failure or not self._thread.is_alive():
                raise RuntimeError(f"the server did not start: {self._failure}")
            if time.monotonic() > deadline:
                raise TimeoutError("the server did not start in time")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop the server (its lifespan closes the store) and wait for its thread."""
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self._socket.close()
        if self._thread.is_alive():
            raise TimeoutError("the server did not stop")
        if self._failure:
            raise self._failure[0]

    async def run(self, work: Coroutine[Any, Any, T]) -> T:
        """Run `work` in the server's event loop (where its store lives) and return its result."""
        assert self._loop is not None
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, self._loop))

    def client(self, token: str | None = None) -> httpx.AsyncClient:
        """An HTTP client of this server, sending `token` as its bearer token."""
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=30)


@dataclass
class SseEvent:
    """One Server-Sent Event as a client sees it."""

    event: str
    data: str
    id: str | None


@dataclass
class SseReader:
    """Reads a text/event-stream response event by event, keeping the comments (pings) it passes."""

    lines: AsyncIterator[str]
    comments: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, response: httpx.Response) -> SseReader:
        """A reader of `response`'s body."""
        return cls(response.aiter_lines())

    async def next(self, within: float = 15.0) -> SseEvent | None:
        """The next event, or None when the stream ends; fails the test after `within` seconds."""
        fields: dict[str, list[str]] = {}
        async with asyncio.timeout(within):
            async for line in self.lines:
                if not line:
                    if fields:
                        return SseEvent(
                            event=fields.get("event", ["message"])[-1],
                            data="\n".join(fields.get("data", [])),
                            id=fields.get("id", [None])[-1],
                        )
                    continue
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                    continue
                name, _, value = line.partition(":")
                fields.setdefault(name, []).append(value.removeprefix(" "))
        return None

    async def take(self, count: int, within: float = 15.0) -> list[SseEvent]:
        """The next `count` events (failing the test if the stream ends first)."""
        taken: list[SseEvent] = []
        for _ in range(count):
            event = await self.next(within)
            assert event is not None, f"the stream ended after {len(taken)} of {count} events"
            taken.append(event)
        return taken
