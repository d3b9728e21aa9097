"""`runevents show` and `runevents tail` as an operator runs them: real processes on real stores (a JSONL
directory, a SQLite file), the records written beforehand, or by the test while `tail` follows them."""

from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from runevents.devstack.postgres import free_port
from runevents.events import Record
from runevents.store import open_store
from runevents.tables.migrate import upgrade
from tests.cli.test_cli_errors import PLANTED, TRACEBACK, failed_cleanly, kafka_url, runevents

TIMEOUT_S: Final = 30
INTERRUPTED: Final = 130


@pytest.fixture(params=["jsonl", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty store of each local kind: a JSONL directory, a migrated SQLite file."""
    if request.param == "jsonl":
        (tmp_path / "jsonl").mkdir()
        return f"jsonl://{tmp_path}/jsonl"
    return sqlite_store(tmp_path)


def sqlite_store(tmp_path: Path) -> str:
    """A migrated SQLite file's store URL."""
    url = f"sqlite:///{tmp_path}/runs.db"
    upgrade(url)
    return url


def message(run: str, text: str, user: str = "u1") -> dict[str, Any]:
    """A human message of thread t1, shaped as deer-flow writes it."""
    content = {"type": "human", "content": text, "id": f"msg-{text}"}
    return event(run, "llm.human.input", "message", content, {"caller": "lead_agent"}, user)


def event(
    run: str, event_type: str, category: str, content: Any, metadata: dict[str, Any], user: str = "u1"
) -> dict[str, Any]:
    """An event of thread t1, as `put_batch` takes it."""
    return {
        "thread_id": "t1",
        "run_id": run,
        "event_type": event_type,
        "category": category,
        "content": content,
        "metadata": metadata,
        "user_id": user,
    }


def write(url: str, *events: dict[str, Any]) -> list[Record]:
    """Store `events` through the store API, in a store opened and closed for them."""

    async def put() -> list[Record]:
        async with open_store(url) as store:
            return await store.put_batch(events)

    return asyncio.run(put())


def delete_thread(url: str, thread: str) -> None:
    """`delete_by_thread` through the store API."""

    async def delete() -> None:
        async with open_store(url) as store:
            await store.delete_by_thread(thread)

    asyncio.run(delete())


def seqs(output: str) -> list[int]:
    """The seqs of the rows or lines `output` shows (each starts with its seq)."""
    return [int(found) for found in re.findall(r"^\s*(\d+)\s", output, flags=re.MULTILINE)]


def test_show_pages_back_through_a_threads_messages(store_url: str) -> None:
    write(store_url, *(message("r1", f"question-{n}") for n in range(1, 6)))
    write(store_url, event("r1", "run.end", "outputs", {"turns": 5}, {}))
    write(store_url, message("r2", "someone-else", user="u2"), message("r2", "question-6"))
    code, output = runevents("show", "t1", "--store", store_url, "--limit", "3")
    assert code == 0, output
    assert seqs(output) == [5, 7, 8], output
    assert "question-6" in output, output
    assert "llm.human.input  " in output, output
    assert "run.end" not in output  # not a message
    assert output.strip().splitlines()[-1] == "older messages: run again with --before-seq 5"
    code, output = runevents("show", "t1", "--store", store_url, "--limit", "3", "--before-seq", "5")
    assert code == 0, output
    assert seqs(output) == [2, 3, 4], output
    assert output.strip().splitlines()[-1] == "older messages: run again with --before-seq 2"
    code, output = runevents("show", "t1", "--store", store_url, "--limit", "3", "--before-seq", "2")
    assert code == 0, output
    assert seqs(output) == [1], output
    assert "--before-seq" not in output  # the first page: nothing older
    code, output = runevents("show", "t1", "--store", store_url, "--user", "u2")
    assert code == 0, output
    assert seqs(output) == [7], output
    assert "someone-else" in output


def test_show_with_run_pages_back_through_every_category_of_the_run(store_url: str) -> None:
    write(
        store_url,
        message("r1", "question"),
        event("r1", "subagent.start", "trace", {"subagent_type": "research"}, {"task_id": "call_7"}),
        event("r1", "run.end", "outputs", {"turns": 1}, {}),
        message("r2", "other-run"),
    )
    code, output = runevents("show", "t1", "--run", "r1", "--store", store_url, "--limit", "2")
    assert code == 0, output
    assert seqs(output) == [2, 3], output
    for shown in ("call_7", '{"subagent_type":"research"}', "outputs", "run.end"):
        assert shown in output, output
    assert output.strip().splitlines()[-1] == "older events: run again with --before-seq 2"
    code, output = runevents("show", "t1", "--run", "r1", "--store", store_url, "--before-seq", "2")
    assert code == 0, output
    assert seqs(output) == [1], output
    assert "question" in output, output
    assert "other-run" not in output, output
    code, output = runevents("show", "t1", "--run", "r9", "--store", store_url)
    assert (code, output.strip()) == (0, "no events of run 'r9' in thread 't1'")


def test_show_reads_the_database_of_the_settings_when_no_store_is_given(tmp_path: Path) -> None:
    url = sqlite_store(tmp_path)
    write(url, message("r1", "from-the-settings"))
    code, output = runevents("show", "t1", env={"RUNEVENTS_DATABASE_URL": url})
    assert code == 0, output
    assert "from-the-settings" in output


class Tail:
    """A `runevents tail` process, and the lines of its stdout as they come."""

    def __init__(self, *args: str) -> None:
        environment = {name: value for name, value in os.environ.items() if not name.startswith("RUNEVENTS_")}
        environment.update(COLUMNS="200", PYTHONWARNINGS="default")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "runevents.cli", "tail", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=environment,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert self.process.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True)
        self._reader.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, found: Callable[[list[str]], bool]) -> list[str]:
        """Every line so far, once `found` holds for them (else fail after TIMEOUT_S)."""
        while not found(self.seen):
            try:
                self.seen.append(self.lines.get(timeout=TIMEOUT_S))
            except queue.Empty:
                self.process.kill()
                self.process.wait()
                pytest.fail(f"tail printed {self.seen} and then nothing for {TIMEOUT_S} s: {self.stderr()}")
        return self.seen

    def stop(self, signum: int | None = None) -> tuple[int, str]:
        """Its exit status (after `signum`, if given) and stderr; killed if it does not exit in time."""
        if signum is not None:
            self.process.send_signal(signum)
        try:
            code = self.process.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise
        self._reader.join(timeout=TIMEOUT_S)
        return code, self.stderr()

    def stderr(self) -> str:
        assert self.process.stderr is not None
        return self.process.stderr.read() if self.process.poll() is not None else ""

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def tails() -> Iterator[Callable[..., Tail]]:
    """Start `runevents tail` processes, each killed (if still running) after the test."""
    started: list[Tail] = []

    def start(*args: str) -> Tail:
        started.append(Tail(*args))
        return started[-1]

    yield start
    for tail in started:
        tail.close()


def test_tail_prints_each_record_another_process_writes_until_ctrl_c(
    tmp_path: Path, tails: Callable[..., Tail]
) -> None:
    url = sqlite_store(tmp_path)
    write(url, message("r1", "before"), message("r1", "start-here"))
    tail = tails("t1", "--store", url, "--after-seq", "1", "--category", "message", "--category", "outputs")
    assert seqs("\n".join(tail.wait_for(lambda lines: len(lines) >= 1))) == [2]
    write(url, event("r1", "subagent.start", "trace", {"subagent_type": "research"}, {}))
    write(url, message("r2", "live-question"))
    write(url, event("r2", "run.end", "outputs", {"turns": 1}, {}))
    lines = tail.wait_for(lambda lines: len(lines) >= 3)
    assert seqs("\n".join(lines)) == [2, 4, 5], lines  # seq 3 is a trace
    assert re.search(r"  r2  message +llm.human.input +live-question$", lines[1]), lines
    assert re.search(r"  r2  outputs +run.end +\{\"turns\":1\}$", lines[2]), lines
    code, stderr = tail.stop(signal.SIGINT)
    assert code == INTERRUPTED, stderr
    assert TRACEBACK not in stderr, stderr
    assert "error:" not in stderr, stderr
    assert tail.lines.empty()


def test_tail_ends_when_the_thread_is_deleted(tmp_path: Path, tails: Callable[..., Tail]) -> None:
    url = sqlite_store(tmp_path)
    write(url, message("r1", "doomed"))
    tail = tails("t1", "--store", url)
    tail.wait_for(lambda lines: len(lines) >= 1)
    delete_thread(url, "t1")
    code, stderr = tail.stop()
    assert code == 0, stderr
    assert stderr.strip().splitlines()[-1] == "thread 't1' was deleted: nothing more to follow"


def test_tail_of_a_jsonl_directory_shows_what_is_stored_and_frees_it_on_ctrl_c(
    tmp_path: Path, tails: Callable[..., Tail]
) -> None:
    (tmp_path / "jsonl").mkdir()
    url = f"jsonl://{tmp_path}/jsonl"
    write(url, message("r1", "stored"), message("r1", "also-stored"))
    tail = tails("t1", "--store", url)
    lines = tail.wait_for(lambda lines: len(lines) >= 2)
    assert "also-stored" in lines[1]
    code, stderr = tail.stop(signal.SIGINT)
    assert code == INTERRUPTED, stderr
    write(url, message("r1", "after"))  # the directory's lock was released


@pytest.mark.parametrize("command", ["show", "tail"])
def test_a_bad_url_or_thread_id_is_one_line_and_exit_1(command: str, tmp_path: Path) -> None:
    url = sqlite_store(tmp_path)
    for args, problem in (
        (["t1", "--store", "nosuch://x/y"], "unknown backend 'nosuch'"),
        (["t1", "--store", f"jsonl://{tmp_path}/missing"], "no such directory"),
        (["t1", "--store", f"sqlite:///{tmp_path}/missing.db"], "no such file"),
        (["t1", "--store", f"{url}?nosuch=1"], "unknown option(s) nosuch"),
        (["t" * 65, "--store", url], "thread_id: must be at most 64 characters"),
        (["t1", "--store", url, "--user", "u\x01"], "user_id"),
        (["t1"], "no store to read"),
    ):
        failed_cleanly(*runevents(command, *args), problem)
    assert not (tmp_path / "missing").exists()  # a read never creates a store
    assert not (tmp_path / "missing.db").exists()


@pytest.mark.parametrize("command", ["show", "tail"])
def test_a_password_in_the_store_url_is_never_shown(command: str) -> None:
    database = f"postgresql://carol:{PLANTED}@127.0.0.1:{free_port()}/runs"
    for url, env in (
        (database, {}),
        (f"postgresql://carol@127.0.0.1:{free_port()}/runs?sslmode=disable&sslpassword={PLANTED}", {}),
        (kafka_url(database), {}),
        (None, {"RUNEVENTS_DATABASE_URL": database}),
        (
            None,
            {
                "RUNEVENTS_DATABASE_URL": database.replace(PLANTED, "x"),
                "RUNEVENTS_DATABASE_PASSWORD": PLANTED,
            },
        ),
    ):
        store = [] if url is None else ["--store", url]
        code, output = runevents(command, "t1", *store, env=env)
        line = failed_cleanly(code, output, "Connect call failed")
        assert "127.0.0.1:" in line, line  # it names the store it could not read
