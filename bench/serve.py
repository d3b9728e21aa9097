"""Benchmark: `runevents serve` on PostgreSQL: SSE fan-out to many subscribers, and page reads over HTTP.

(1) Client processes hold `GET /api/threads/{t}/stream` streams, several per thread, while this process
puts at a steady rate over the threads: every subscriber must get every record; delivery latency, the
serve process's LISTEN sessions and resident set. (2) `GET .../messages/page?limit=50` on a deep thread
against `SqlRunEventStore.list_messages` called here, the samples taken in turn.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Final

import httpx
import orjson
from sqlalchemy import text
from sqlalchemy.engine import URL

from bench.events import make_event
from bench.machine import load
from bench.postgres import postgres_server, scratch_database
from runevents.tables.notify import THREADS_CHANNEL
from runevents.tables.sql import SqlRunEventStore
from runevents.tables.writes import libpq_dsn

HOST: Final = "127.0.0.1"
CLIENT_PROCESSES: Final = 2
CONNECTS_AT_ONCE: Final = 50  # per client process: a burst of 500 connects is not what is measured
MAX_PUTS_IN_FLIGHT: Final = 256  # past it the writer falls behind its rate rather than piling up puts
CLIENT_WAIT_S: Final = 120.0  # for every stream to have seq 1, then the last seqs
START_TIMEOUT_S: Final = 30.0
RUN: Final = "run-fanout"
PAGE_THREAD: Final = "page-reads"
PAGE_EVENTS: Final = 6_000  # half of them messages
PAGE_LIMIT: Final = 50
PAGE_WARM_UP: Final = 50
PAGE_TARGET: Final = 1.5  # HTTP page p50 over list_messages p50
# What pg_stat_activity shows for an idle LISTEN session: asyncpg's add_listener is its last query.
LISTEN_QUERY: Final = f'LISTEN "{THREADS_CHANNEL}"'
SESSIONS: Final = "SELECT client_port, query FROM pg_stat_activity WHERE datname = current_database()"
VERDICT: Final = {True: "MET", False: "MISSED"}

Puts = dict[tuple[str, int], tuple[float, float]]  # (thread, seq) -> put started, returned (monotonic)


@dataclass(frozen=True)
class Workload:
    """How big a run is: streams, the writer's rate (events/s) and length, page reads."""

    threads: int
    per_thread: int
    rate: int
    seconds: int
    page_requests: int


FULL: Final = Workload(threads=100, per_thread=10, rate=1_000, seconds=20, page_requests=1_000)
QUICK: Final = Workload(threads=20, per_thread=5, rate=200, seconds=5, page_requests=200)


@dataclass
class Subscriber:
    """One SSE stream: its thread, when each seq arrived (time.monotonic) and why it ended, if it did."""

    thread: str
    arrivals: dict[int, float] = field(default_factory=dict)
    ended: str | None = None


@dataclass
class FanOut:
    """What the fan-out measured."""

    subscribers: list[Subscriber]
    puts: Puts
    last: dict[str, int]  # each thread's last seq
    written_s: float
    ready: int  # streams that had their thread's first record before the writer started
    listen: tuple[int, int, int]  # serve's LISTEN sessions, all its sessions, LISTEN sessions of anyone
    rss_mib: float  # serve's VmRSS with the streams open, after the writing
    peak_mib: float  # serve's VmHWM at the end


async def follow_stream(port: int, subscriber: Subscriber, gate: asyncio.Semaphore) -> None:
    """Read one stream's chunks, noting each `id:` line's arrival, until cancelled or the stream ends."""
    request = f"GET /api/threads/{subscriber.thread}/stream HTTP/1.1\r\nHost: {HOST}\r\n\r\n"
    writer: asyncio.StreamWriter | None = None
    try:
        async with gate:
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(request.encode())
            head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200") or b"transfer-encoding: chunked" not in head.lower():
            subscriber.ended = head.split(b"\r\n", 1)[0].decode()
            return
        pending = b""
        while size := int((await reader.readline()).split(b";", 1)[0], 16):
            chunk = await reader.readexactly(size + 2)
            *lines, pending = (pending + chunk[:-2]).split(b"\n")
            for line in lines:
                if line.startswith(b"id:"):
                    subscriber.arrivals[int(line[3:])] = time.monotonic()
        subscriber.ended = "the server ended the stream"
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as error:
        subscriber.ended = f"{type(error).__name__}: {error}"
    finally:
        if writer is not None:
            writer.close()


async def until(condition: Callable[[], bool], timeout_s: float) -> None:
    """Poll `condition` every 50 ms until it holds or `timeout_s` has passed."""
    # Polled, not signalled: checking every stream at each of thousands of chunks a second costs more.
    for _ in range(int(timeout_s / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)


async def subscribe_all(port: int, threads: list[str], per_thread: int, pipe: Connection) -> None:
    """Hold the streams; tell when all have seq 1; read until the seqs sent back; send the arrivals."""
    subscribers = [Subscriber(thread) for thread in threads for _ in range(per_thread)]
    gate = asyncio.Semaphore(CONNECTS_AT_ONCE)
    tasks = [asyncio.create_task(follow_stream(port, one, gate)) for one in subscribers]
    await until(lambda: all(1 in one.arrivals or one.ended for one in subscribers), CLIENT_WAIT_S)
    pipe.send(sum(1 in one.arrivals for one in subscribers))
    last: dict[str, int] = await asyncio.to_thread(pipe.recv)
    done = lambda: all(last[one.thread] in one.arrivals or one.ended for one in subscribers)  # noqa: E731
    await until(done, CLIENT_WAIT_S)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    pipe.send(subscribers)


def client_main(port: int, threads: list[str], per_thread: int, pipe: Connection) -> None:
    """A client process's entry point: `per_thread` streams on each of `threads`."""
    asyncio.run(subscribe_all(port, threads, per_thread, pipe))


async def received(pipe: Connection, timeout_s: float) -> Any:
    """The next object from a client process, or an error after `timeout_s`."""
    if not await asyncio.to_thread(pipe.poll, timeout_s):
        raise RuntimeError(f"a client process said nothing for {timeout_s:.0f} s")
    return pipe.recv()


async def write(store: SqlRunEventStore, threads: list[str], work: Workload) -> Puts:
    """Put `rate` events a second for `seconds`, round the threads; each put's start and return by seq."""
    puts: Puts = {}
    gate = asyncio.Semaphore(MAX_PUTS_IN_FLIGHT)

    async def put(index: int) -> None:
        thread = threads[index % len(threads)]
        async with gate:
            started = time.monotonic()
            record = await store.put(**make_event(thread, RUN, index))
            puts[(thread, record["seq"])] = (started, time.monotonic())

    tasks = []
    begin = time.monotonic()
    for index in range(work.rate * work.seconds):
        await asyncio.sleep(max(0.0, begin + index / work.rate - time.monotonic()))
        tasks.append(asyncio.create_task(put(index + 1)))
    await asyncio.gather(*tasks)
    return puts


def local_ports(pid: int) -> set[int]:
    """The local TCP ports of a process's sockets (Linux /proc)."""
    inodes = set()
    for descriptor in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile; pipes and files never match an inode below
            inodes.add(os.readlink(descriptor).removeprefix("socket:[").removesuffix("]"))
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


async def listen_sessions(store: SqlRunEventStore, pid: int) -> tuple[int, int, int]:
    """The process's LISTEN sessions on the database, all its sessions there, and anyone's LISTEN sessions."""
    ports = local_ports(pid)
    async with store.engine.connect() as connection:
        rows = (await connection.execute(text(SESSIONS))).all()
    ours = [query for port, query in rows if port in ports]
    return ours.count(LISTEN_QUERY), len(ours), [query for _, query in rows].count(LISTEN_QUERY)


def status_mib(pid: int, key: str) -> float:
    """A process's `VmRSS` or `VmHWM` (its peak) from /proc/<pid>/status, in MiB."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in lines if line.startswith(f"{key}:")) / 1024


async def fan_out(dsn: str, port: int, pid: int, work: Workload) -> FanOut:
    """Client processes hold the streams while this process writes; their arrivals and the puts."""
    threads = [f"fanout-{number:03d}" for number in range(work.threads)]
    context = multiprocessing.get_context("spawn")
    pipes, processes = [], []
    for part in range(CLIENT_PROCESSES):
        ours, theirs = context.Pipe()
        arguments = (port, threads[part::CLIENT_PROCESSES], work.per_thread, theirs)
        processes.append(context.Process(target=client_main, args=arguments, daemon=True))
        processes[-1].start()
        pipes.append(ours)
    try:
        async with SqlRunEventStore(dsn) as store:
            for thread in threads:  # seq 1 of each thread: every stream has it once all are live
                await store.put(**make_event(thread, RUN, 0))
            ready = sum([await received(pipe, CLIENT_WAIT_S + 30) for pipe in pipes])
            begin = time.monotonic()
            puts = await write(store, threads, work)
            written_s = time.monotonic() - begin
            listen = await listen_sessions(store, pid)
        rss = status_mib(pid, "VmRSS")
        last = dict.fromkeys(threads, 1)
        for thread, seq in puts:
            last[thread] = max(last[thread], seq)
        for pipe in pipes:
            pipe.send(last)
        subscribers = [one for pipe in pipes for one in await received(pipe, CLIENT_WAIT_S + 30)]
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
    return FanOut(subscribers, puts, last, written_s, ready, listen, rss, status_mib(pid, "VmHWM"))


async def page_reads(dsn: str, port: int, work: Workload) -> tuple[dict[str, list[float]], int]:
    """Pages by `list_messages`, a bare HTTP/1.1 client and httpx, in turn: seconds each; the messages."""
    path = f"/api/threads/{PAGE_THREAD}/messages/page?limit={PAGE_LIMIT}"
    async with SqlRunEventStore(dsn) as store, httpx.AsyncClient(base_url=f"http://{HOST}:{port}") as http:
        for start in range(0, PAGE_EVENTS, 100):
            await store.put_batch(
                [make_event(PAGE_THREAD, f"run-{n // 100}", n) for n in range(start, start + 100)]
            )
        reader, writer = await asyncio.open_connection(HOST, port)

        async def bare() -> list[Any] | bytes:  # one kept-alive connection; reads the status and length
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
            head = (await reader.readuntil(b"\r\n\r\n")).lower()
            if not head.startswith(b"http/1.1 200"):
                raise RuntimeError(f"GET {path}: {head[:200]!r}")
            return await reader.readexactly(int(head.split(b"content-length:")[1].split(b"\r\n")[0]))

        async def with_httpx() -> list[Any] | bytes:
            return (await http.get(path)).raise_for_status().content

        async def direct() -> list[Any] | bytes:
            return await store.list_messages(PAGE_THREAD, limit=PAGE_LIMIT)

        readers: dict[str, Callable[[], Awaitable[list[Any] | bytes]]]
        readers = {"store": direct, "bare": bare, "httpx": with_httpx}
        samples: dict[str, list[float]] = {name: [] for name in readers}
        for number in range(PAGE_WARM_UP + work.page_requests):
            names = list(readers)
            for name in names[number % 3 :] + names[: number % 3]:  # each goes first in turn
                started = time.perf_counter()
                page = await readers[name]()
                taken = time.perf_counter() - started
                # Checked untimed: decoding the JSON is the client's work, not the server's latency.
                if len(orjson.loads(page)["data"] if isinstance(page, bytes) else page) != PAGE_LIMIT:
                    raise RuntimeError(f"{name}: a page of other than {PAGE_LIMIT} messages")
                if number >= PAGE_WARM_UP:
                    samples[name].append(taken)
        writer.close()
        return samples, await store.count_messages(PAGE_THREAD)


@contextlib.contextmanager
def serve_process(dsn: str, log: Path) -> Iterator[tuple[int, int]]:
    """`runevents serve` on a free port, once it answers /healthz: its pid and port; SIGTERM at the end."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = int(probe.getsockname()[1])
    command = [sys.executable, "-m", "runevents.cli", "serve", "--store", dsn, "--port", str(port)]
    with log.open("wb") as output:  # a file, not a pipe: nobody reads its log while it runs
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://{HOST}:{port}/healthz").status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"runevents serve did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield process.pid, port
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def row(label: str, values: list[float]) -> str:
    """A report line: label, then p50 and p99 of `values` (seconds) in ms."""
    p50, p99 = (statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000 for q in (50, 99))
    return f"  {label:44}{p50:>9.2f}{p99:>9.2f}"


def report_fan_out(fan: FanOut, work: Workload) -> list[str]:
    """Print the fan-out's lines; return the subscribers that missed records, described."""
    written, seconds = len(fan.puts), fan.written_s
    print(f"fan-out: {len(fan.subscribers):,} SSE subscribers ({work.threads} threads x {work.per_thread})")
    print(
        f"  written: {written:,} events in {seconds:.1f} s: {written / seconds:,.0f}/s, asked {work.rate:,}"
    )
    print(f"  streams with their thread's first record before the writing: {fan.ready:,}")
    failures, expected, delivered = [], 0, 0
    from_start: list[float] = []
    after: list[float] = []
    for one in fan.subscribers:
        wanted = set(range(1, fan.last[one.thread] + 1))
        expected += len(wanted)
        delivered += len(wanted & one.arrivals.keys())
        if missing := sorted(wanted - one.arrivals.keys()):
            failures.append(f"{one.thread}: {len(missing)} missing from seq {missing[0]}; ended: {one.ended}")
        for seq, at in one.arrivals.items():
            if (times := fan.puts.get((one.thread, seq))) is not None:
                from_start.append(at - times[0])
                after.append(max(0.0, at - times[1]))
    complete = len(fan.subscribers) - len(failures)
    print(f"  delivered: {delivered:,} of {expected:,} records; {complete:,} subscribers got all of theirs")
    print(f"  target: every subscriber gets every record: {VERDICT[not failures]}")
    print(f"  {'':44}{'p50 ms':>9}{'p99 ms':>9}")
    print(row("put started -> subscriber received", from_start))
    print(row("put returned -> subscriber received", after))
    ours, sessions, everyone = fan.listen
    print(f"  serve's LISTEN sessions: {ours}   target: one LISTEN connection: {VERDICT[ours == 1]}")
    print(f"  (serve's sessions: {sessions}; anyone's LISTEN sessions on the database: {everyone})")
    print(f"  serve RSS after the writing, streams open: {fan.rss_mib:.0f} MiB (peak {fan.peak_mib:.0f} MiB)")
    return failures


def report_pages(samples: dict[str, list[float]], messages: int) -> None:
    """Print the page reads' percentiles, ratios and target."""
    print(f"page reads: a thread of {messages:,} messages, limit={PAGE_LIMIT}, each reader in turn")
    print(f"  {'':44}{'p50 ms':>9}{'p99 ms':>9}")
    print(row("store.list_messages (baseline)", samples["store"]))
    print(row("GET .../messages/page, bare HTTP/1.1 client", samples["bare"]))
    print(row("GET .../messages/page, httpx", samples["httpx"]))
    p50 = {name: statistics.median(values) for name, values in samples.items()}
    ratio = p50["bare"] / p50["store"]
    print(f"  p50/p50 {ratio:.2f}x   target: <= {PAGE_TARGET:.1f}x: {VERDICT[ratio <= PAGE_TARGET]}", end="")
    print(f"   (with httpx: {p50['httpx'] / p50['store']:.2f}x)")


async def run(server: URL, description: str, work: Workload) -> list[str]:
    """Start serve on a scratch database, read pages, fan out, and print the report; the failures."""
    streams = work.threads * work.per_thread
    print(f"runevents bench serve: {streams:,} SSE streams in {CLIENT_PROCESSES} client processes, ", end="")
    print(f"{work.rate:,} events/s for {work.seconds} s; {work.page_requests:,} pages; {os.cpu_count()} CPUs")
    print(f"PostgreSQL: {description}")
    print(f"load average before: {load()}")
    async with scratch_database(server) as url:
        dsn = libpq_dsn(url)
        with (
            tempfile.TemporaryDirectory(prefix="runevents-bench-serve-") as scratch,
            serve_process(dsn, Path(scratch) / "serve.log") as (pid, port),
        ):
            pages, messages = await page_reads(dsn, port, work)
            fan = await fan_out(dsn, port, pid, work)
    print(f"load average after:  {load()}")
    failures = report_fan_out(fan, work)
    report_pages(pages, messages)
    return failures


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line, start or name the server, run the benchmark; exit 1 if a record was missed."""
    parser = argparse.ArgumentParser(prog="python -m bench serve", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 subscribers for 5 s: a smoke test")
    args = parser.parse_args(argv)
    with postgres_server() as (server, description):
        failures = asyncio.run(run(server, description, QUICK if args.quick else FULL))
    if failures:
        print(f"\n!!! FAILURE: {len(failures)} subscribers missed records !!!", file=sys.stderr)
        for line in failures[:20]:
            print(f"!!!   {line}", file=sys.stderr)
        raise SystemExit(1)
