"""Every read of the query module is an index range scan on PostgreSQL, at a thread depth of 100k events.

The test fills one thread with 100,000 events through the store's own `put_batch` (plus 20 other
threads), VACUUM ANALYZEs, captures the SQL each read sends and asks PostgreSQL for its plan with the same
parameters: no read may scan `run_events` sequentially. With RUNEVENTS_WRITE_QUERY_PLANS=1 set it also
rewrites docs/query-plans.md with the `EXPLAIN (ANALYZE, BUFFERS)` output of each read.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import asyncpg
from sqlalchemy import event
from sqlalchemy.engine import make_url

from runevents.tables.migrate import upgrade_async
from runevents.tables.sql import SqlRunEventStore

BIG: Final = "thread-big"
BIG_EVENTS: Final = 100_000
RUNS: Final = 10  # runs of 10,000 consecutive events each
OTHER_THREADS: Final = 20
OTHER_EVENTS: Final = 1_000
BATCH: Final = 2_000
WRITE_ENV: Final = "RUNEVENTS_WRITE_QUERY_PLANS"
DOC: Final = Path(__file__).resolve().parent.parent / "docs" / "query-plans.md"
INDEX_SCANS: Final = frozenset({"Index Scan", "Index Only Scan", "Bitmap Index Scan"})
T0: Final = datetime(2026, 1, 1, tzinfo=UTC)


def run_of(seq: int, events: int) -> str:
    """The run a seq belongs to: RUNS runs of consecutive events."""
    return f"run-{(seq - 1) * RUNS // events:02d}"


def history(thread_id: str, events: int) -> Iterator[dict[str, Any]]:
    """A thread's events in seq order: ~50% messages (with message ids), traces, tool calls, task events."""
    for seq in range(1, events + 1):
        run_id = run_of(seq, events)
        user_id = "u2" if run_id >= "run-08" else "u1"
        created_at = (T0 + timedelta(milliseconds=seq)).isoformat()
        base = {"thread_id": thread_id, "run_id": run_id, "created_at": created_at, "user_id": user_id}
        if seq % 2:
            human = seq % 4 == 1
            yield {
                **base,
                "event_type": "llm.human.input" if human else "llm.ai.response",
                "category": "message",
                "content": {
                    "id": f"msg-{seq}",
                    "type": "human" if human else "ai",
                    "content": f"message {seq} " + "lorem ipsum " * 12,
                },
                "metadata": {} if human else {"caller": "middleware:title" if seq % 40 == 39 else "agent"},
            }
        else:
            kind = (seq // 2) % 4
            event_type = ("llm.start", "tool.call", "llm.end", "task.progress")[kind]
            yield {
                **base,
                "event_type": event_type,
                "category": "lifecycle" if kind == 3 else "trace",
                "content": f"{event_type} {seq} " + "x" * 150,
                "metadata": {"task_id": f"task-{seq % 5}"} if kind == 3 else {"model": "m1"},
            }


@dataclass
class Read:
    """One read of the contract, as the doc shows it and as the store is called."""

    title: str
    call: Callable[[SqlRunEventStore], Awaitable[Any]]
    # What the read must return, so a plan of an empty answer cannot pass.
    check: Callable[[Any], bool]


READS: Final = [
    Read(
        "list_messages(thread, limit=50) — the latest page",
        lambda s: s.list_messages(BIG),
        lambda r: [x["seq"] for x in r] == list(range(BIG_EVENTS - 99, BIG_EVENTS + 1, 2)),
    ),
    Read(
        "list_messages(thread, limit=50, before_seq=50_001)",
        lambda s: s.list_messages(BIG, before_seq=50_001),
        lambda r: [x["seq"] for x in r] == list(range(49_901, 50_001, 2)),
    ),
    Read(
        "list_messages(thread, limit=50, after_seq=50_000)",
        lambda s: s.list_messages(BIG, after_seq=50_000),
        lambda r: [x["seq"] for x in r] == list(range(50_001, 50_101, 2)),
    ),
    Read(
        "list_messages(thread, limit=50, before_seq=60_000, after_seq=50_000)",
        lambda s: s.list_messages(BIG, before_seq=60_000, after_seq=50_000),
        lambda r: [x["seq"] for x in r] == list(range(50_001, 50_101, 2)),
    ),
    Read(
        "list_messages(thread, limit=50, user_id='u1') — the latest page of one user",
        lambda s: s.list_messages(BIG, user_id="u1"),
        lambda r: [x["seq"] for x in r] == list(range(79_901, 80_001, 2)),
    ),
    Read(
        "list_messages_by_run(thread, 'run-05', limit=50) — the latest page of a run",
        lambda s: s.list_messages_by_run(BIG, "run-05"),
        lambda r: [x["seq"] for x in r] == list(range(59_901, 60_001, 2)),
    ),
    Read(
        "list_messages_by_run(thread, 'run-05', limit=50, before_seq=55_001)",
        lambda s: s.list_messages_by_run(BIG, "run-05", before_seq=55_001),
        lambda r: [x["seq"] for x in r] == list(range(54_901, 55_001, 2)),
    ),
    Read(
        "list_messages_by_run(thread, 'run-05', limit=50, after_seq=55_000)",
        lambda s: s.list_messages_by_run(BIG, "run-05", after_seq=55_000),
        lambda r: [x["seq"] for x in r] == list(range(55_001, 55_101, 2)),
    ),
    Read(
        "list_events(thread, 'run-05', limit=500)",
        lambda s: s.list_events(BIG, "run-05"),
        lambda r: [x["seq"] for x in r] == list(range(50_001, 50_501)),
    ),
    Read(
        "list_events(thread, 'run-05', after_seq=55_000, limit=500)",
        lambda s: s.list_events(BIG, "run-05", after_seq=55_000),
        lambda r: [x["seq"] for x in r] == list(range(55_001, 55_501)),
    ),
    Read(
        "list_events(thread, 'run-05', event_types=['tool.call', 'llm.end'], limit=500)",
        lambda s: s.list_events(BIG, "run-05", event_types=["tool.call", "llm.end"]),
        lambda r: len(r) == 500 and {x["event_type"] for x in r} == {"tool.call", "llm.end"},
    ),
    Read(
        "list_events(thread, 'run-05', task_id='task-2', limit=500)",
        lambda s: s.list_events(BIG, "run-05", task_id="task-2"),
        lambda r: len(r) == 250 and {x["metadata"]["task_id"] for x in r} == {"task-2"},
    ),
    Read(
        "list_events(thread, 'run-05', event_types=['task.progress'], task_id='task-2', after_seq=55_000)",
        lambda s: s.list_events(
            BIG, "run-05", event_types=["task.progress"], task_id="task-2", after_seq=55_000
        ),
        lambda r: [x["seq"] for x in r] == list(range(55_022, 60_001, 40)),
    ),
    Read(
        "get_last_visible_ai_seq_by_run(thread, ['run-03', 'run-07'])",
        lambda s: s.get_last_visible_ai_seq_by_run(BIG, ["run-03", "run-07"]),
        lambda r: r == {"run-03": 39_995, "run-07": 79_995},  # 39,999 and 79,999 are middleware's
    ),
    Read(
        "get_message_seqs(thread, ['msg-1', 'msg-77777', 'msg-99999', 'unknown'])",
        lambda s: s.get_message_seqs(BIG, ["msg-1", "msg-77777", "msg-99999", "unknown"]),
        lambda r: r == {"msg-1": 1, "msg-77777": 77_777, "msg-99999": 99_999},
    ),
    Read(
        "count_messages(thread)",
        lambda s: s.count_messages(BIG),
        lambda r: r == BIG_EVENTS // 2,
    ),
    Read(
        "count_messages(thread, user_id='u1')",
        lambda s: s.count_messages(BIG, user_id="u1"),
        lambda r: r == 40_000,
    ),
]


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of a JSON plan tree."""
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def scans(tree: list[dict[str, Any]]) -> list[str]:
    """The plan's scan nodes, e.g. "Index Scan (Backward) on ix_run_events_messages"."""
    shown = []
    for node in tree:
        kind = node["Node Type"]
        if "Index Name" in node:
            direction = node.get("Scan Direction")
            if direction in ("Backward",):
                kind += f" ({direction.lower()})"
            shown.append(f"{kind} on {node['Index Name']}")
        elif "Relation Name" in node and kind != "Bitmap Heap Scan":
            shown.append(f"{kind} on {node['Relation Name']}")
    return shown


def libpq_dsn(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL as the plain DSN asyncpg.connect takes."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def fill(store: SqlRunEventStore) -> None:
    """The big thread, then the others, through put_batch in batches of BATCH events."""
    batch: list[dict[str, Any]] = []
    others = (history(f"thread-{i:02d}", OTHER_EVENTS) for i in range(OTHER_THREADS))
    for events in (history(BIG, BIG_EVENTS), *others):
        for item in events:
            batch.append(item)
            if len(batch) == BATCH:
                await store.put_batch(batch)
                batch = []
    if batch:
        await store.put_batch(batch)


async def test_every_read_is_an_index_range_scan_at_100k_events(pg_database):
    started = time.monotonic()
    write = os.environ.get(WRITE_ENV) == "1"
    await upgrade_async(pg_database)
    store = SqlRunEventStore(pg_database)
    connection = await asyncpg.connect(libpq_dsn(pg_database))
    captured: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        captured.append((statement, parameters))

    summary: list[tuple[str, str]] = []
    sections: list[str] = []
    problems: list[str] = []
    try:
        await fill(store)
        # VACUUM as autovacuum would have by now: index-only scans need the visibility map.
        await connection.execute("VACUUM ANALYZE run_events, thread_counters")
        # One thread is most of this small table, so for a read that touches a third of it a Seq Scan
        # can cost the same as the index and the planner flips between them from run to run. With
        # sequential scans priced out, a Seq Scan still appears wherever no index can serve a read:
        # the test asks what the indexes can do, the planner at production sizes picks them itself.
        await connection.execute("SET enable_seqscan = off")
        filled = time.monotonic() - started
        indexes = {
            row["indexname"]
            for row in await connection.fetch(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'run_events'"
            )
        }
        event.listen(store.engine.sync_engine, "before_cursor_execute", capture)
        for read in READS:
            captured.clear()
            result = await read.call(store)
            assert read.check(result), (read.title, result)
            assert len(captured) == 1, (read.title, captured)
            statement, raw_parameters = captured[0]
            parameters = tuple(raw_parameters or ())

            plan = json.loads(await connection.fetchval(f"EXPLAIN (FORMAT JSON) {statement}", *parameters))
            tree = list(nodes(plan[0]["Plan"]))
            used = scans(tree)
            summary.append((read.title, ", ".join(used)))
            seq_scans = [
                n for n in tree if n["Node Type"] == "Seq Scan" and n.get("Relation Name") == "run_events"
            ]
            index_scans = [
                n for n in tree if n["Node Type"] in INDEX_SCANS and n.get("Index Name") in indexes
            ]
            if seq_scans:
                problems.append(f"{read.title}: a Seq Scan on run_events")
            elif "run_events" in statement and not index_scans:
                problems.append(f"{read.title}: no index scan on run_events ({', '.join(used)})")

            if write:
                rows = await connection.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {statement}", *parameters)
                text_plan = "\n".join(row[0] for row in rows)
                shown = ", ".join(f"${i} = {value!r}" for i, value in enumerate(parameters, start=1))
                sections.append(
                    f"## {read.title}\n\nScans: {', '.join(used)}\n\n```sql\n{statement.strip()}\n```\n\n"
                    f"Parameters: {shown or 'none'}\n\n```\n{text_plan}\n```\n"
                )
        if write:
            write_doc(await connection.fetchval("SHOW server_version"), filled, summary, problems, sections)
    finally:
        event.remove(store.engine.sync_engine, "before_cursor_execute", capture)
        await connection.close()
        await store.close()
    took = time.monotonic() - started
    print(f"\nfilled in {filled:.1f}s, {took:.1f}s in all")
    for title, scanned in summary:
        print(f"  {title}: {scanned}")
    assert took < 40
    assert not problems, "\n".join(problems)


def write_doc(
    server_version: str,
    filled: float,
    summary: list[tuple[str, str]],
    problems: list[str],
    sections: list[str],
) -> None:
    """Rewrite docs/query-plans.md from this run."""
    table = "\n".join(f"| `{title}` | {used} |" for title, used in summary)
    failing = "".join(f"- {problem}\n" for problem in problems) or "- none\n"
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(
        f"""# Query plans of the read side

Every read of `runevents/tables/query.py` as the sql backend sends it to PostgreSQL, and the plan
PostgreSQL {server_version} chose for it. Produced by `tests/tables/test_query_plans.py`:

- one thread (`{BIG}`) of {BIG_EVENTS:,} events, written through `SqlRunEventStore.put_batch` in
  batches of {BATCH:,}: {RUNS} runs of {BIG_EVENTS // RUNS:,} consecutive events, every other event a
  message (dict content with a message id; AI responses carry a `caller`), the rest traces, tool
  calls and task events (a `task_id` on one event in eight), two users (`u1` owns runs 0-7, `u2`
  runs 8-9); plus {OTHER_THREADS} threads of {OTHER_EVENTS:,} events each;
- `VACUUM ANALYZE run_events, thread_counters` and `SET enable_seqscan = off` on the EXPLAIN
  session (one thread is most of this small table, so the planner could flip between an index and
  a sequential scan of the same cost; with sequential scans priced out, one still shows wherever
  no index can serve a read); then each read is called through the store while a
  SQLAlchemy `before_cursor_execute` listener captures the SQL and parameters it sends;
- that SQL is run again through asyncpg with the same parameters as `EXPLAIN (FORMAT JSON)`: the
  test fails on a `Seq Scan` of `run_events`, or on a read of `run_events` without an index scan on
  one of its indexes; for this page it is also run as `EXPLAIN (ANALYZE, BUFFERS)`, shown below.

The test asserts on every run and rewrites this page only when asked to:

```
{WRITE_ENV}=1 .venv/bin/pytest tests/tables/test_query_plans.py
```

Filling the database took {filled:.1f} s. Timings are from the throwaway test cluster (fsync off)
on the machine that wrote this page. `thread_counters` holds {OTHER_THREADS + 1} rows here, so
PostgreSQL reads it whole rather than through its primary key.

| read | scans in the plan |
| --- | --- |
{table}

Reads whose plan failed the test's check when this page was written:

{failing}
"""
        + "\n".join(sections)
    )
