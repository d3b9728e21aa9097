"""The processes each role's CPU is read from, and the `<role> CPU/event: <µs> µs (...)` lines."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy.engine import URL

from bench import cpu
from bench.postgres import postmaster_pid


@dataclass(frozen=True)
class Servers:
    """The PostgreSQL and broker processes, where /proc shows them (else None)."""

    postmaster: int | None
    broker: int | None

    @classmethod
    async def find(cls, server: URL, kafka: str | None = None) -> Servers:
        """The postmaster of `server`, and the process listening on the broker's first address."""
        broker = None
        if kafka is not None:
            host, port = kafka.split(",")[0].rsplit(":", 1)
            broker = cpu.listening_pid(host, int(port))
        return cls(await postmaster_pid(server), broker)

    def roles(self) -> dict[str, cpu.Reading]:
        """'postgresql': the postmaster and every server process under it; 'broker': the broker."""
        roles = {}
        if self.postmaster is not None:
            roles["postgresql"] = cpu.tree(self.postmaster)
        if self.broker is not None:
            roles["broker"] = cpu.processes(self.broker)
        return roles


def median_us(runs: Sequence[Mapping[str, float]], key: str) -> float | None:
    """The median over the runs of the figure `key`; None when a run has none (not measured)."""
    if not all(key in run for run in runs):
        return None
    return statistics.median(run[key] for run in runs)


def cpu_line(
    role: str, us: float | None, what: str, *, target: float | None = None, floor: float | None = None
) -> str:
    """`<role> CPU/event: <µs> µs (target; times the PostgreSQL floor; what was read)`, for scripts."""
    if us is None:
        return f"{role} CPU/event: not measured (no process of it in /proc here, or no events: {what})"
    notes = []
    if target is not None:
        notes.append(f"target ≤ {target:g}: {'met' if us <= target else 'MISSED'}")
    if role == "postgresql":
        notes.append("the floor")
    elif floor:
        notes.append(f"{us / floor:.2f}x postgresql")
    return f"{role} CPU/event: {us:.1f} µs ({'; '.join([*notes, what])})"
