"""`runevents serve` and `hash-token` as processes: serving, stopping, and one-line failures."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from runevents.devstack.postgres import free_port
from tests.serve.conftest import ALICE, event

PROGRAM = [sys.executable, "-m", "runevents.cli"]
STOP_S = 20.0


def command(*arguments: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run a command to its end."""
    return subprocess.run([*PROGRAM, *arguments], input=stdin, capture_output=True, text=True, timeout=60)


@contextmanager
def serving(*arguments: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`serve` running in a process until the block ends (then killed if it still runs): (process, URL)."""
    port = free_port()
    process = subprocess.Popen(
        [*PROGRAM, "serve", *arguments, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RUNEVENTS_LOG_LEVEL": "INFO"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.communicate()[1]
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "serve did not answer"
            time.sleep(0.1)
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def test_serve_reads_with_tokens_and_stops_on_sigterm_with_exit_0(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{hashlib.sha256(ALICE.encode()).hexdigest()} alice\n")
    directory = tmp_path / "events"
    seed = "import asyncio, sys\nfrom runevents.store import JsonlRunEventStore\n"
    seed += "async def main():\n    async with JsonlRunEventStore(sys.argv[1]) as store:\n"
    seed += f"        await store.put(**{event(user_id='alice')!r})\nasyncio.run(main())\n"
    subprocess.run([sys.executable, "-c", seed, str(directory)], check=True, timeout=60)
    with serving("--store", f"jsonl://{directory}", "--token-file", str(tokens), "--heartbeat", "0.2") as (
        process,
        url,
    ):
        assert httpx.get(f"{url}/api/threads/t1/messages/count").status_code == 401
        headers = {"Authorization": f"Bearer {ALICE}"}
        assert httpx.get(f"{url}/api/threads/t1/messages/count", headers=headers).json() == {"count": 1}
        with httpx.stream("GET", f"{url}/api/threads/t1/stream", headers=headers, timeout=30) as response:
            lines = response.iter_lines()
            assert next(lines) == "id: 1"
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            # A stop ends the open stream at once rather than waiting for the client to leave.
            remaining = list(lines)
        assert process.wait(STOP_S) == 0
        assert time.monotonic() - started < STOP_S
        stderr = process.communicate()[1]
    assert "event: record" in remaining
    assert f"serving jsonl://{directory} on http://127.0.0.1:" in stderr
    assert "(auth on, 1 token(s))" in stderr
    assert "warning" not in stderr
    assert ALICE not in stderr


def test_serve_without_tokens_warns_unless_on_the_loopback_and_ctrl_c_exits_130() -> None:
    with serving("--store", "memory://", "--host", "0.0.0.0") as (process, _url):
        process.send_signal(signal.SIGINT)
        assert process.wait(STOP_S) == 130
        stderr = process.communicate()[1]
    assert "warning: auth is off (no --token-file): anyone who reaches 0.0.0.0:" in stderr
    with serving("--store", "memory://") as (process, _url):
        process.send_signal(signal.SIGINT)
        assert process.wait(STOP_S) == 130
        assert "warning" not in process.communicate()[1]


def test_serve_fails_in_one_line_that_shows_no_secret(tmp_path: Path) -> None:
    bad_tokens = tmp_path / "tokens"
    bad_tokens.write_text("# tokens\nnot-a-hash alice\n")
    closed = f"postgresql://carol:planted-s3cret@127.0.0.1:{free_port()}/events"
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        cases = [
            (
                ["--store", "memory://", "--token-file", str(bad_tokens)],
                f"error: token file {bad_tokens}, line 2: ",
            ),
            (["--store", "memory://", "--token-file", str(tmp_path / "absent")], "error: token file"),
            (["--store", "mysql://carol:planted-s3cret@db/x"], "error: cannot open the store: "),
            (["--store", closed], "error: cannot serve postgresql://carol:***@127.0.0.1:"),
            (
                ["--store", "memory://", "--port", str(taken.getsockname()[1])],
                "error: cannot listen on 127.0.0.1:",
            ),
        ]
        for arguments, line in cases:
            done = command("serve", *arguments)
            assert done.returncode == 1, (arguments, done.stderr)
            assert done.stderr.startswith(line), (arguments, done.stderr)
            assert len(done.stderr.strip().splitlines()) == 1, done.stderr
            if arguments == ["--store", closed]:
                assert "did not answer" in done.stderr
            assert "planted-s3cret" not in done.stderr + done.stdout
    finally:
        taken.close()


def test_hash_token_prints_the_token_file_line() -> None:
    done = command("hash-token", "alice", stdin=ALICE + "\n")
    assert (done.returncode, done.stdout) == (0, f"{hashlib.sha256(ALICE.encode()).hexdigest()} alice\n")
    assert ALICE not in done.stdout + done.stderr
    generated = command("hash-token", "admin", "--generate")
    assert generated.returncode == 0
    token = generated.stderr.strip().rsplit(" ", 1)[-1]
    assert generated.stdout == f"{hashlib.sha256(token.encode()).hexdigest()} admin\n"
    short = command("hash-token", "alice", stdin="short")
    assert (short.returncode, short.stderr) == (
        1,
        "error: a token needs at least 16 characters: shorter ones are guessable\n",
    )
    assert command("hash-token", "bad\x01user", stdin=ALICE).stderr.startswith("error: user: ")


def test_a_stop_closes_the_store(tmp_path: Path) -> None:
    directory = tmp_path / "events"
    directory.mkdir()
    with serving("--store", f"jsonl://{directory}") as (process, _url):
        process.send_signal(signal.SIGTERM)
        assert process.wait(STOP_S) == 0
    # The directory's lock was released: another process takes it at once.
    check = "import asyncio, sys\nfrom runevents.store import JsonlRunEventStore\n"
    check += "async def main():\n    async with JsonlRunEventStore(sys.argv[1]) as store:\n"
    check += "        print(await store.count_messages('t1'))\nasyncio.run(main())\n"
    done = subprocess.run(
        [sys.executable, "-c", check, str(directory)], capture_output=True, text=True, timeout=60
    )
    assert done.stdout == "0\n", done.stderr
