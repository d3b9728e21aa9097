"""CPU time the benchmarks' processes use, read from /proc (Linux): user+sys, reaped children included."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

TICKS_PER_S: Final = os.sysconf("SC_CLK_TCK")
# Indexes into /proc/<pid>/stat after the command name, which starts at its field 3 (proc(5)).
_PPID, _UTIME, _STIME, _CUTIME, _CSTIME = 1, 11, 12, 13, 14
_REREADS: Final = 50

# The CPU seconds some processes have used so far.
Reading = Callable[[], float]


def _stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat from the state on (the command name may hold spaces)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def _ticks(fields: list[str]) -> int:
    """utime + stime + cutime + cstime: the process's own CPU and its reaped children's."""
    return sum(int(fields[index]) for index in (_UTIME, _STIME, _CUTIME, _CSTIME))


def parent(pid: int) -> int:
    """The pid of a process's parent."""
    return int(_stat(pid)[_PPID])


def processes(*pids: int) -> Reading:
    """The CPU seconds of `pids` (each with its reaped children); read while they run."""
    return lambda: sum(_ticks(_stat(pid)) for pid in pids) / TICKS_PER_S


def _descendants(root: int) -> list[int]:
    """Every live process below `root`."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                children.setdefault(parent(int(entry.name)), []).append(int(entry.name))
            except (FileNotFoundError, ProcessLookupError):
                continue  # gone since the listing
    found, below = [], children.get(root, [])
    while below:
        found += below
        below = [grandchild for child in below for grandchild in children.get(child, [])]
    return found


def tree(root: int) -> Reading:
    """The CPU seconds of `root` and every live descendant, each with its reaped children.

    A server's sessions come and go: one that exits and is reaped moves from the live sum into the root's
    cutime, so it is counted once whenever it ends. One reaped while the tree is read could be counted
    twice or missed, so the tree is read again until the root's reaped total held still throughout.
    """

    def read() -> float:
        for _ in range(_REREADS):
            reaped = _stat(root)[_CUTIME : _CSTIME + 1]
            total = _ticks(_stat(root))
            for pid in _descendants(root):
                try:
                    total += _ticks(_stat(pid))
                except (FileNotFoundError, ProcessLookupError):
                    continue  # reaped, so in the root's cutime: the check below sees it
            if _stat(root)[_CUTIME : _CSTIME + 1] == reaped:
                return total / TICKS_PER_S
        raise RuntimeError(f"the processes under {root} kept exiting while their CPU was read")

    return read


class Meter:
    """CPU seconds each role's processes used from the meter's start."""

    def __init__(self, roles: Mapping[str, Reading]) -> None:
        self._roles = dict(roles)
        self._start = {role: read() for role, read in self._roles.items()}

    def seconds(self) -> dict[str, float]:
        """CPU seconds by role since the start."""
        return {role: read() - self._start[role] for role, read in self._roles.items()}


def per_event_us(*windows: tuple[Mapping[str, float], int]) -> dict[str, float]:
    """µs of CPU per event by role: each window's seconds over its events, summed over the windows."""
    total: dict[str, float] = {}
    for seconds, events in windows:
        for role, used in seconds.items():
            total[role] = total.get(role, 0.0) + used / events * 1e6
    return total


def listening_pid(host: str, port: int) -> int | None:
    """The process listening on `host:port` when that is this machine and /proc shows it; else None."""
    local = host == "localhost" or (_is_ip(host) and ipaddress.ip_address(host).is_loopback)
    if not local:
        return None
    sockets = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            # 0A is LISTEN; the local address ends in the port, in hex.
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                sockets.add(f"socket:[{fields[9]}]")
    holders = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in sockets for fd in (entry / "fd").iterdir()):
                holders.add(int(entry.name))
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
    # A listening socket inherited by a child stays the parent's: take the holder whose parent is none.
    eldest = [pid for pid in holders if parent(pid) not in holders]
    return eldest[0] if len(eldest) == 1 else None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
