"""Projector processes under test: started, killed, paused, and watched for a batch in flight."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg

from tests.bus.conftest import projector_process

# Backends of this database inside a transaction that has written (or locked) rows: a batch in flight.
# The projector's first statement of a batch locks its offset rows, which assigns the transaction id.
_WRITING_BACKENDS = (
    "SELECT client_port FROM pg_stat_activity "
    "WHERE datname = current_database() AND backend_xid IS NOT NULL AND pid <> pg_backend_pid()"
)

PORTS_TTL_S = 0.5
# What a projector of projection main logs once it has its partitions (runevents.bus.projector.offsets).
ASSIGNED = "projection 'main' of"
# How long a stuck projector gets to print its stacks when asked.
STACKS_WAIT_S = 3.0


def catches_sigterm(pid: int) -> bool:
    """Whether process `pid` has a SIGTERM handler of its own yet (SigCgt in /proc/<pid>/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    (caught,) = [line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")]
    return bool(int(caught, 16) >> (signal.SIGTERM - 1) & 1)


def local_tcp_ports(pid: int) -> set[int]:
    """The local TCP ports of process `pid`'s sockets (what pg_stat_activity calls client_port)."""
    inodes: set[str] = set()
    try:
        descriptors = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return set()
    for descriptor in descriptors:
        try:
            target = os.readlink(descriptor)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports: set[int] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


class ProjectorProcess:
    """One `runevents project` process, its output collected as it comes (so a full pipe never blocks it)."""

    def __init__(self, name: str, process: subprocess.Popen[bytes]) -> None:
        self.name = name
        self.process = process
        self._lines: list[bytes] = []
        self._reader = threading.Thread(target=self._drain, name=f"output of {name}", daemon=True)
        self._reader.start()
        # Its sockets' local ports, looked up again at most every PORTS_TTL_S (a lookup reads /proc).
        self._ports: set[int] = set()
        self._ports_read = 0.0

    def _drain(self) -> None:
        assert self.process.stdout is not None
        with self.process.stdout:
            for line in iter(self.process.stdout.readline, b""):
                self._lines.append(line)

    @property
    def pid(self) -> int:
        return self.process.pid

    def ports(self) -> set[int]:
        """The local ports of the process's TCP connections (recent, not necessarily current)."""
        if time.monotonic() - self._ports_read > PORTS_TTL_S:
            self._ports, self._ports_read = local_tcp_ports(self.pid), time.monotonic()
        return self._ports

    def output(self) -> str:
        """Everything the process printed so far (its log goes to stderr, merged into stdout)."""
        return b"".join(self._lines).decode(errors="replace")

    def ended(self, how: signal.Signals, *, within_s: float = 60) -> int:
        """Send `how`, wait for the process to end and its output to be read; its exit code."""
        self.process.send_signal(how)
        try:
            code = self.process.wait(timeout=within_s)
        except subprocess.TimeoutExpired:
            # What it was doing when it did not stop is the only clue there will be: its stacks, then
            # everything it printed.
            self.dump_stacks_and_kill()
            raise AssertionError(
                f"{self.name} did not end within {within_s} s of {how.name}; all it printed, its stacks "
                f"last:\n{self.output()}"
            ) from None
        self._reader.join(timeout=10)
        return code

    def dump_stacks_and_kill(self) -> None:
        """Have the process print where it is stuck, then kill it and read its output to the end.

        SIGUSR1: `runevents project` prints what each asyncio task awaits and each thread's stack. If
        its event loop is stuck, nothing answers that: SIGABRT, on which faulthandler prints the threads.
        """
        for how in (signal.SIGUSR1, signal.SIGABRT):
            if self.process.poll() is not None:
                break
            printed = len(self._lines)
            self.process.send_signal(how)
            deadline = time.monotonic() + STACKS_WAIT_S
            while len(self._lines) == printed and self.process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)  # the rest of the stacks
            if len(self._lines) > printed:
                break
        self.wait_killed()

    def wait_killed(self) -> None:
        """Kill the process if it still runs, and collect it."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        self._reader.join(timeout=10)


class ProjectorFleet:
    """The projector processes of one projection; fails loudly when one dies on its own."""

    def __init__(self, kafka: str, url: str, topic: str, *options: str, name: str = "projector") -> None:
        self._command = (kafka, url, topic, *options)
        self._name = name
        self.live: list[ProjectorProcess] = []
        self.ended: list[tuple[ProjectorProcess, int]] = []
        self.started = 0

    def __enter__(self) -> ProjectorFleet:
        return self

    def __exit__(self, failure: type[BaseException] | None, *_: object) -> None:
        if failure is not None:
            # What the projectors said, and where the live ones are, is most of what there is to go on
            # when a test fails inside.
            for projector in self.live:
                projector.dump_stacks_and_kill()
            print("\n".join(self.outputs(last_chars=20_000)))
        for projector in self.live:
            projector.wait_killed()

    def start(self) -> ProjectorProcess:
        self.started += 1
        projector = ProjectorProcess(f"{self._name}-{self.started}", projector_process(*self._command))
        self.live.append(projector)
        return projector

    def stop(self, projector: ProjectorProcess, how: signal.Signals) -> int:
        """End one projector with `how`; its exit code."""
        self.live.remove(projector)
        code = projector.ended(how)
        self.ended.append((projector, code))
        return code

    def stop_all(self, *, start_within_s: float = 60) -> None:
        """SIGTERM every live projector once it has started; each must finish its batch and exit 0."""
        for projector in list(self.live):
            # One restarted a moment ago may still be importing: a SIGTERM then ends it as any Python
            # process (-15), which says nothing of how it stops.
            deadline = time.monotonic() + start_within_s
            while not catches_sigterm(projector.pid) and projector.process.poll() is None:
                assert time.monotonic() < deadline, f"{projector.name} did not start:\n{projector.output()}"
                time.sleep(0.05)
            code = self.stop(projector, signal.SIGTERM)
            assert code == 0, f"{projector.name} exited {code} on SIGTERM:\n{projector.output()}"

    def check_alive(self) -> None:
        """Fail, with its output, if a live projector has exited without being told to."""
        for projector in self.live:
            code = projector.process.poll()
            if code is not None:
                raise AssertionError(f"{projector.name} exited on its own ({code}):\n{projector.output()}")

    def outputs(self, *, last_chars: int = 3000) -> Iterator[str]:
        for projector in [*self.live, *(p for p, _ in self.ended)]:
            yield f"--- {projector.name}:\n{projector.output()[-last_chars:]}"

    async def in_batch(self, probe: asyncpg.Connection) -> list[ProjectorProcess]:
        """The live projectors with a batch's transaction open in the database right now."""
        busy = {row[0] for row in await probe.fetch(_WRITING_BACKENDS)}
        if not busy:
            return []
        return [projector for projector in self.live if projector.ports() & busy]
