"""The read side of token usage: a thread's totals per model, caller and run, in deer-flow's shape.

`thread_usage` answers `GET /api/threads/{id}/token-usage` (deer-flow's `ThreadTokenUsageResponse`)
plus runevents' additions: `by_run`, the cache and reasoning totals, `calls` and `calls_without_usage`.
A sum counts only the calls that carried that count: a call of unknown usage adds to
`calls_without_usage`, never 0 to a total.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final

from sqlalchemy import Row, func, inspect, not_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from runevents.tables.schema import token_usage_calls
from runevents.tables.sql import engine_for
from runevents.usage.extraction import LEAD_AGENT, MIDDLEWARE, SUBAGENT, caller_kind

# by_model's key for calls whose record named no model.
UNKNOWN_MODEL: Final = "unknown"
_c = token_usage_calls.c
_SUMS: Final = (
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cache_read_tokens",
    "cache_creation_tokens",
    "reasoning_tokens",
)

_RUN_COUNTS: Final = ("total_tokens", "input_tokens", "output_tokens", "calls", "calls_without_usage")


class UsageReader:
    """Reads the usage tables of one database (and schema)."""

    def __init__(self, database_url: str, *, schema: str | None = None, pool_size: int = 2) -> None:
        self._engine: AsyncEngine = engine_for(database_url, schema=schema, pool_size=pool_size)
        self._schema = schema
        self._kept = False

    async def kept(self) -> bool:
        """Whether the database has the usage table (upgraded to revision 0004 or later)."""
        if not self._kept:
            async with self._engine.connect() as connection:
                self._kept = await connection.run_sync(
                    lambda sync: inspect(sync).has_table(token_usage_calls.name, schema=self._schema)
                )
        return self._kept

    async def thread_usage(self, thread_id: str, user_id: str | None = None) -> dict[str, Any] | None:
        """The thread's usage (of `user_id`'s calls only, if given); None if this database keeps none."""
        if not await self.kept():
            return None
        query = select(
            _c.run_id,
            _c.model,
            _c.caller,
            func.count().label("calls"),
            func.count().filter(not_(_c.usage_known)).label("without_usage"),
            *(func.sum(_c[name]).label(name) for name in _SUMS),
        ).where(_c.thread_id == thread_id)
        if user_id is not None:
            query = query.where(_c.user_id == user_id)
        query = query.group_by(_c.run_id, _c.model, _c.caller)
        async with self._engine.connect() as connection:
            groups = (await connection.execute(query)).all()
        return summarize(thread_id, groups)

    async def close(self) -> None:
        """Release the database pool."""
        await self._engine.dispose()


def summarize(thread_id: str, groups: Iterable[Row[Any] | Sequence[Any]]) -> dict[str, Any]:
    """Fold (run, model, caller, calls, without_usage, sums...) groups into the route's document."""
    totals = dict.fromkeys(_SUMS, 0)
    by_caller = {LEAD_AGENT: 0, SUBAGENT: 0, MIDDLEWARE: 0}
    by_model: dict[str, dict[str, Any]] = {}
    by_run: dict[str, dict[str, int]] = {}
    calls = without_usage = 0
    for group in groups:
        run_id, model, caller, group_calls, group_unknown, *sums = tuple(group)
        counts = {name: int(value or 0) for name, value in zip(_SUMS, sums, strict=True)}
        for name, value in counts.items():
            totals[name] += value
        calls += group_calls
        without_usage += group_unknown
        by_caller[caller_kind(caller)] += counts["total_tokens"]
        modelled = by_model.setdefault(model or UNKNOWN_MODEL, {"tokens": 0, "runs": set()})
        modelled["tokens"] += counts["total_tokens"]
        modelled["runs"].add(run_id)
        run = by_run.setdefault(run_id, dict.fromkeys(_RUN_COUNTS, 0))
        run["total_tokens"] += counts["total_tokens"]
        run["input_tokens"] += counts["input_tokens"]
        run["output_tokens"] += counts["output_tokens"]
        run["calls"] += group_calls
        run["calls_without_usage"] += group_unknown
    return {
        "thread_id": thread_id,
        "total_tokens": totals["total_tokens"],
        "total_input_tokens": totals["input_tokens"],
        "total_output_tokens": totals["output_tokens"],
        "total_runs": len(by_run),
        "by_model": {
            model: {"tokens": entry["tokens"], "runs": len(entry["runs"])}
            for model, entry in sorted(by_model.items())
        },
        "by_caller": by_caller,
        "context_usage": None,
        # runevents' additions to deer-flow's shape (docs/http.md).
        "by_run": dict(sorted(by_run.items())),
        "cache_read_tokens": totals["cache_read_tokens"],
        "cache_creation_tokens": totals["cache_creation_tokens"],
        "reasoning_tokens": totals["reasoning_tokens"],
        "calls": calls,
        "calls_without_usage": without_usage,
    }
