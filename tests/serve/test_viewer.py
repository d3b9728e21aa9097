"""The run viewer in a real Chromium (driven by Playwright) against a real server of a real store.

Each test writes records through the store, opens the page and checks its DOM against what the store
holds: the chat, a run's timeline, records that arrive live, a dropped stream resumed, auth.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import BrowserContext, ConsoleMessage, Dialog, Page, async_playwright, expect

from runevents.events import Record
from runevents.serve import Tokens, create_app
from runevents.store import open_store
from runevents.tables.migrate import upgrade_async
from tests.serve.conftest import ALICE, BOB, HEARTBEAT_S, TOKENS, event, serve
from tests.serve.live import LiveServer
from tests.services import missing_tool

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# How long a DOM assertion waits for the page to catch up.
TIMEOUT_MS = 15_000
THREAD = "viewer-t1"
# Trace content past this many bytes is cut by the store (and marked), so the big trace below is.
MAX_TRACE_BYTES = 256
# The page shows the latest 50 messages first; r2 alone fills that page, r1 is on the older one.
R2_MESSAGES = 50

_ids = itertools.count(1)


def message(kind: str, text: str, **fields: Any) -> dict[str, Any]:
    """A LangChain message as deer-flow's journal stores it (its model_dump(), trimmed)."""
    return {"type": kind, "id": f"m-{next(_ids)}", "content": text, **fields}


def thread_events() -> list[dict[str, Any]]:
    """Run r1 (a tool call to a subagent, a trace cut by the store), then run r2's 50 messages."""
    task = {"caller": "subagent:analyst", "task_id": "call_1"}
    call = {"name": "task", "args": {"description": "sum bytes"}, "id": "call_1", "type": "tool_call"}
    r1 = [
        event(THREAD, "r1", category="trace", event_type="run.start", content={"chain": "lead_agent"}),
        # Markup in a record is text to the page, never markup.
        event(
            THREAD,
            "r1",
            content=message("human", "What is in <b>usage.csv</b>? <img src=x onerror=alert(1)>"),
        ),
        event(THREAD, "r1", content=message("ai", "", tool_calls=[call])),
        event(
            THREAD, "r1", category="trace", event_type="subagent.start", content=call["args"], metadata=task
        ),
        event(THREAD, "r1", category="trace", event_type="subagent.step", content="read", metadata=task),
        event(THREAD, "r1", category="trace", event_type="subagent.step", content="summed", metadata=task),
        event(THREAD, "r1", category="trace", event_type="subagent.end", content={"ok": True}, metadata=task),
        event(THREAD, "r1", content=message("tool", "acme: 12 GB\nglobex: 3 GB", name="task")),
        event(THREAD, "r1", category="trace", event_type="llm.end", content="x" * (4 * MAX_TRACE_BYTES)),
        event(THREAD, "r1", content=message("ai", "Most bytes went to acme.")),
        event(THREAD, "r1", category="outputs", event_type="run.end", content={"status": "success"}),
    ]
    r2 = [
        event(THREAD, "r2", content=message("human" if i % 2 == 0 else "ai", f"turn {i}\n  indented"))
        for i in range(R2_MESSAGES)
    ]
    return r1 + r2


class CuttableProxy:
    """A TCP proxy in front of the server that a test can cut, as a network or a proxy drops connections."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.blocked = False
        self.url = ""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> CuttableProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def cut(self, *, block: bool = True) -> None:
        """Drop every open connection; while `block`, drop new ones at once too."""
        self.blocked = block
        for writer in self._writers:
            writer.transport.abort()

    async def _accept(self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(client)
        try:
            if self.blocked:
                return
            server_reader, server = await asyncio.open_connection("127.0.0.1", self.target_port)
            self._writers.add(server)
            try:
                await asyncio.gather(_pipe(client_reader, server), _pipe(server_reader, client))
            finally:
                await _close(server)
                self._writers.discard(server)
        finally:
            await _close(client)
            self._writers.discard(client)
            self._tasks.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy bytes until either side ends, then end the other."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.transport.abort()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.transport.abort()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


class Viewer:
    """A browser tab on the run viewer, keeping the script errors and CSP violations it reports."""

    def __init__(self, page: Page, server: LiveServer, base_url: str | None = None) -> None:
        self.page = page
        self.server = server
        self.base_url = server.url if base_url is None else base_url
        self.problems: list[str] = []
        page.on("pageerror", lambda error: self.problems.append(f"script error: {error}"))
        page.on("console", self._console)
        page.on("dialog", self._dialog)

    async def _dialog(self, dialog: Dialog) -> None:
        # A record's markup run as a script would show itself here first (an alert).
        self.problems.append(f"a dialog opened: {dialog.message}")
        await dialog.dismiss()

    def _console(self, message: ConsoleMessage) -> None:
        # Refused requests (a 401) are logged as errors too, and are expected; these are not.
        if "Content Security Policy" in message.text or "Uncaught" in message.text:
            self.problems.append(message.text)

    async def open(self, hash_: str) -> None:
        """Load the page at `hash_`, checking the headers it is served with."""
        response = await self.page.goto(f"{self.base_url}/{hash_}")
        assert response is not None
        assert response.status == 200
        assert response.headers["content-type"] == "text/html; charset=utf-8"
        assert "script-src 'self'" in response.headers["content-security-policy"]

    async def chat(self) -> list[tuple[int, str, str]]:
        """The chat's bubbles, top to bottom: (seq, kind, text)."""
        rows: list[list[Any]] = await self.page.locator("#chat .bubble").evaluate_all(
            "ns => ns.map(n => [Number(n.dataset.seq), n.dataset.kind, n.querySelector('.text').textContent])"
        )
        return [(seq, kind, text) for seq, kind, text in rows]

    async def timeline(self) -> list[dict[str, Any]]:
        """The open run's records, top to bottom, as the page shows them."""
        rows: list[dict[str, Any]] = await self.page.locator("#timeline details.event").evaluate_all(
            """nodes => nodes.map(n => ({
                seq: Number(n.querySelector('.seq').textContent),
                category: n.querySelector('.category').textContent,
                event_type: n.querySelector('.type').textContent,
                created_at: n.querySelector('time').dateTime,
                cut: n.querySelector('.cut')?.textContent ?? null,
                task_id: n.closest('.task')?.dataset.taskId ?? null,
                open: n.open,
            }))"""
        )
        return rows

    async def live(self, state: str) -> None:
        """Wait until the live indicator shows `state`."""
        await expect(self.page.locator("#live")).to_have_attribute("data-state", state)

    async def shows_store(self, thread_id: str = THREAD, user_id: str | None = None) -> None:
        """Wait until the chat holds exactly the thread's messages in the store, in seq order."""
        stored = await self.server.run(self.server.store.list_messages(thread_id, limit=200, user_id=user_id))
        await expect(self.page.locator("#chat .bubble")).to_have_count(len(stored))
        assert await self.chat() == [bubble_of(record) for record in stored]


def bubble_of(record: Record) -> tuple[int, str, str]:
    """The (seq, kind, text) the chat should show for a message record."""
    content = record["content"]
    return record["seq"], content["type"], content["content"]


def grouped(records: list[Record]) -> list[Record]:
    """Records in the timeline's order: a subagent's records together, where its first one is."""
    first: dict[str, int] = {}
    for record in records:
        task_id = record["metadata"].get("task_id")
        if task_id is not None:
            first.setdefault(task_id, record["seq"])

    def place(record: Record) -> tuple[int, int]:
        task_id = record["metadata"].get("task_id")
        return (record["seq"] if task_id is None else first[task_id], record["seq"])

    return sorted(records, key=place)


def timeline_of(record: Record) -> dict[str, Any]:
    """The row the timeline should show for a record, folded."""
    metadata = record["metadata"]
    cut = metadata.get("content_truncated")
    return {
        "seq": record["seq"],
        "category": record["category"],
        "event_type": record["event_type"],
        "created_at": record["created_at"],
        "cut": f"truncated (was {metadata['original_byte_length']} bytes)" if cut else None,
        "task_id": metadata.get("task_id"),
        "open": False,
    }


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[BrowserContext]:
    """Debian's Chromium, headless, with a fresh profile (Playwright cannot download a browser here)."""
    if not CHROMIUM.exists():
        missing_tool(
            f"no Chromium at {CHROMIUM} for the run viewer's test", "apt-get install chromium (.ci/run)"
        )
    expect.set_options(timeout=TIMEOUT_MS)
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            tmp_path / "chromium-profile", executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        context.set_default_timeout(TIMEOUT_MS)
        try:
            yield context
        finally:
            await context.close()


@pytest.fixture(params=["jsonl", "sql"])
def viewer_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL of an empty store: JSONL, or sql on the session's PostgreSQL."""
    if request.param == "jsonl":
        return f"jsonl://{tmp_path / 'events'}"
    url: str = request.getfixturevalue("pg_database")
    return url


@pytest.fixture
async def server(viewer_store_url: str) -> AsyncIterator[LiveServer]:
    """A server of that store (auth off) which cuts trace content past MAX_TRACE_BYTES."""
    if viewer_store_url.startswith("postgresql"):
        await upgrade_async(viewer_store_url)
    separator = "&" if "?" in viewer_store_url else "?"
    store = open_store(f"{viewer_store_url}{separator}max_trace_content={MAX_TRACE_BYTES}")
    live = LiveServer(create_app(store, heartbeat_s=HEARTBEAT_S), store).start()
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture
async def auth_server() -> AsyncIterator[LiveServer]:
    """A server of a memory store with auth on: alice's, bob's and an admin's tokens."""
    live = await serve("memory://", tokens=Tokens.from_plain(TOKENS))
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture
async def proxy(server: LiveServer) -> AsyncIterator[CuttableProxy]:
    """A proxy in front of that server."""
    async with CuttableProxy(server.port) as running:
        yield running


async def test_the_viewer_shows_a_thread_its_runs_and_new_records_live(
    server: LiveServer, proxy: CuttableProxy, browser: BrowserContext
) -> None:
    store = server.store
    await server.run(store.put_batch(thread_events()))
    viewer = Viewer(await browser.new_page(), server, proxy.url)
    page = viewer.page
    streams: list[str] = []
    page.on("request", lambda request: streams.append(request.url) if "/stream" in request.url else None)
    await viewer.open(f"#thread={THREAD}")
    await viewer.live("live")

    # The newest page first: r2's 50 messages, then the older page (r1's) on demand.
    latest = await server.run(store.list_messages(THREAD, limit=R2_MESSAGES))
    await expect(page.locator("#chat .bubble")).to_have_count(R2_MESSAGES)
    assert await viewer.chat() == [bubble_of(record) for record in latest]
    assert await page.locator("#runs .run").all_text_contents() == ["r2"]
    await page.locator("#older").click()
    await viewer.shows_store()
    await expect(page.locator("#older")).to_be_hidden()
    assert await page.locator("#chat b, #chat img").count() == 0
    await expect(page.locator("#chat .bubble.ai .call")).to_have_text(
        'calls task({"description":"sum bytes"})'
    )
    assert await page.locator("#runs .run").all_text_contents() == ["r1", "r2"]

    # Run r1's timeline: every record of the run, folded, its subagent's in one group.
    await page.locator("#runs .run[data-run='r1']").click()
    assert page.url.endswith(f"#thread={THREAD}&run=r1")
    events = await server.run(store.list_events(THREAD, "r1"))
    await expect(page.locator("#timeline details.event")).to_have_count(len(events))
    assert await viewer.timeline() == [timeline_of(record) for record in grouped(events)]
    group = page.locator("#timeline > details.task")
    await expect(group).to_have_count(1)
    await expect(group).to_have_attribute("data-task-id", "call_1")
    await expect(group.locator(".count")).to_have_text("4 records")
    (cut,) = [record for record in events if record["metadata"].get("content_truncated")]
    assert cut["event_type"] == "llm.end"
    assert cut["metadata"]["original_byte_length"] == 4 * MAX_TRACE_BYTES
    row = page.locator(f"#timeline details.event[data-seq='{cut['seq']}']")
    await expect(row).to_have_class("event truncated")
    await row.locator("summary").click()
    await expect(row.locator("pre.content")).to_be_visible()
    assert await row.locator("pre.content").text_content() == cut["content"]

    # New records appear without a reload: a message, a step of the open run's subagent, a new run.
    await server.run(store.put(**event(THREAD, "r2", content=message("ai", "a live answer"))))
    step = event(THREAD, "r1", category="trace", event_type="subagent.step", metadata={"task_id": "call_1"})
    await server.run(store.put(**step))
    await server.run(store.put(**event(THREAD, "r3", content=message("human", "and one more run"))))
    await viewer.shows_store()
    await expect(group.locator(".count")).to_have_text("5 records")
    await expect(page.locator("#runs .run")).to_have_text(["r1", "r2", "r3"])
    events = await server.run(store.list_events(THREAD, "r1"))
    assert await viewer.timeline() == [
        {**timeline_of(record), "open": record["seq"] == cut["seq"]} for record in grouped(events)
    ]

    # A dropped connection: the page resumes from the last seq it has, missing nothing, repeating nothing.
    (last,) = await server.run(store.list_messages(THREAD, limit=1))  # the thread's last record too
    proxy.cut()
    await viewer.live("reconnecting")
    await server.run(
        store.put_batch([event(THREAD, "r3", content=message("ai", f"missed {i}")) for i in range(2)])
    )
    proxy.cut(block=False)
    await viewer.live("live")
    await viewer.shows_store()
    assert streams[0] == f"{proxy.url}/api/threads/{THREAD}/stream?after_seq={latest[-1]['seq']}"
    assert streams[-1] == f"{proxy.url}/api/threads/{THREAD}/stream?after_seq={last['seq']}"

    await server.run(store.delete_by_thread(THREAD))
    await viewer.live("deleted")
    assert viewer.problems == []


async def test_with_auth_on_the_page_needs_a_token_and_sends_it_as_a_header(
    auth_server: LiveServer, browser: BrowserContext
) -> None:
    store = auth_server.store
    alice = [event("t-alice", user_id="alice", content=message("human", f"alice {i}")) for i in range(2)]
    await auth_server.run(store.put_batch(alice))
    viewer = Viewer(await browser.new_page(), auth_server)
    page = viewer.page
    await viewer.open("#thread=t-alice")

    await expect(page.locator("#problem")).to_contain_text("401 Unauthorized")
    await viewer.live("off")
    assert await page.locator("#chat .bubble").count() == 0

    # Another user's token: the thread is not found, exactly as one that does not exist.
    await page.locator("#token").fill(BOB)
    await page.locator("#auth button", has_text="Use").click()
    await expect(page.locator("#problem")).to_contain_text("404")

    await page.locator("#token").fill(ALICE)
    await page.locator("#auth button", has_text="Use").click()
    await expect(page.locator("#problem")).to_be_hidden()
    await viewer.live("live")
    await viewer.shows_store("t-alice", user_id="alice")
    # The token rides in a header, kept in the tab's session storage, never in the URL.
    assert ALICE not in page.url
    assert await page.evaluate("sessionStorage.getItem('runevents.token')") == ALICE

    # The stream, read with fetch and the token's header, brings new records.
    await auth_server.run(
        store.put(**event("t-alice", user_id="alice", content=message("ai", "live for alice")))
    )
    await viewer.shows_store("t-alice", user_id="alice")

    # Forgetting the token closes the thread to this tab again.
    await page.locator("#forget").click()
    await expect(page.locator("#problem")).to_contain_text("401 Unauthorized")
    assert await page.locator("#chat .bubble").count() == 0
    assert viewer.problems == []


async def test_the_page_loads_nothing_from_elsewhere(
    open_server: LiveServer, browser: BrowserContext
) -> None:
    viewer = Viewer(await browser.new_page(), open_server)
    requested: list[str] = []
    viewer.page.on("request", lambda request: requested.append(request.url))
    await viewer.open("")
    await expect(viewer.page.locator("#live")).to_have_text("not live")
    assert requested
    assert all(url.startswith(f"{open_server.url}/") for url in requested), requested
    # An empty thread (auth off): no messages yet, and live, waiting for its first record.
    await viewer.page.locator("#thread-id").fill("t-empty")
    await viewer.page.locator("#pick button").click()
    await viewer.live("live")
    await expect(viewer.page.locator("#chat-empty")).to_be_visible()
    assert viewer.page.url.endswith("#thread=t-empty")
    assert viewer.problems == []


async def test_a_long_run_is_read_page_by_page(open_server: LiveServer, browser: BrowserContext) -> None:
    store = open_server.store
    steps = [
        event("t-long", "long", category="trace", event_type="llm.step", content=f"step {i}")
        for i in range(1203)
    ]
    await open_server.run(store.put_batch([event("t-long", "long"), *steps]))
    viewer = Viewer(await browser.new_page(), open_server)
    pages: list[str] = []
    viewer.page.on("request", lambda request: pages.append(request.url) if "/events" in request.url else None)
    await viewer.open("#thread=t-long&run=long")
    await expect(viewer.page.locator("#timeline details.event")).to_have_count(1204)
    assert [row["seq"] for row in await viewer.timeline()] == list(range(1, 1205))
    events = f"{open_server.url}/api/threads/t-long/runs/long/events"
    assert pages == [f"{events}?limit=500&after_seq={after}" for after in (0, 500, 1000)]
    assert viewer.problems == []
