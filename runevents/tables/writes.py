"""Writing the read tables: the rows of events, seq from the counter rows, deletes and put_if_absent.

The sql backend and the bus projector write the same tables the same way, inside transactions they
own: each function here works on a connection whose transaction the caller opened and commits.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Final

import asyncpg
import orjson
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    MetaData,
    String,
    Table,
    bindparam,
    column,
    delete,
    func,
    insert,
    literal,
    select,
    true,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from runevents.events import (
    MAX_INDEXED_MESSAGE_ID,
    MESSAGE_CATEGORY,
    PreparedEvent,
    Record,
    make_record,
    message_id_of,
)
from runevents.tables.notify import DELETED, WRITTEN, notify, notify_asyncpg
from runevents.tables.query import RECORD_COLUMNS, row_to_record
from runevents.tables.schema import (
    DICT,
    JSON_STR,
    LIST,
    STR,
    deleted_events,
    retention_policies,
    run_events,
    thread_counters,
)

_c = thread_counters.c
_e = run_events.c
_PG: Final = postgresql.dialect()  # type: ignore[no-untyped-call]


def libpq_dsn(url: str | URL) -> str:
    """A SQLAlchemy PostgreSQL URL as the plain DSN asyncpg connects with."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@functools.cache
def projected_seqs_sql(schema: str | None) -> str:
    """PostgreSQL text giving (event_id, seq) of events ($1 thread ids, $2 event ids) stored or
    deleted since (tombstones are kept a while): what the projector dedupes on and writers read back."""
    return " UNION ALL ".join(
        f"SELECT event_id::text, seq FROM {qualified(table, schema)} "
        "WHERE (thread_id, event_id) IN (SELECT * FROM unnest($1::text[], $2::uuid[]))"
        for table in (run_events, deleted_events)
    )


def schema_of(connection: AsyncConnection) -> str | None:
    """The schema a connection's statements go to (engine_for maps the tables' schema there)."""
    sync = connection.sync_connection
    translated = (sync.get_execution_options() if sync is not None else {}).get("schema_translate_map") or {}
    schema: str | None = translated.get(None)
    return schema


def qualified(table: Table, schema: str | None) -> str:
    """The table's name for hand-written PostgreSQL text, in `schema` if one is given, quoted as needed."""
    in_schema = table if schema is None else table.to_metadata(MetaData(), schema=schema)
    return _PG.identifier_preparer.format_table(in_schema)


def _content_column(event: PreparedEvent) -> tuple[str, str]:
    content = event.content
    if isinstance(content, str):
        if "\x00" in content:  # PostgreSQL text cannot hold NUL; its JSON text can
            return event.content_json.decode(), JSON_STR
        return content, STR
    return event.content_json.decode(), DICT if isinstance(content, dict) else LIST


def event_row(event: PreparedEvent, seq: int) -> tuple[Any, ...]:
    """The `run_events` row of a prepared event at `seq`, its values in `ROW_COLUMNS` order."""
    content, kind = _content_column(event)
    message_id = message_id_of(event.category, event.content)
    if message_id is not None and len(message_id) > MAX_INDEXED_MESSAGE_ID:
        message_id = None
    metadata = event.metadata
    task_id = metadata.get("task_id")
    caller = metadata.get("caller")
    # A tuple, not a dict: the write path builds one for every event, and COPY takes tuples.
    return (
        event.thread_id,
        seq,
        event.run_id,
        event.event_id,
        event.event_type,
        event.category,
        content,
        kind,
        event.metadata_json.decode(),
        # Validation refused NUL in these (events.input.column_problem): text columns cannot hold it.
        task_id if isinstance(task_id, str) else None,
        None if caller is None else str(caller),
        event.created,
        event.user_id,
        message_id,
    )


ROW_COLUMNS: Final = tuple(column.name for column in run_events.columns)

# On PostgreSQL the counters of any number of threads advance in one statement of fixed text
# (arrays, not a VALUES row per thread), so SQLAlchemy compiles it once, not at every flush.
_counts = (
    func.unnest(
        bindparam("thread_ids", type_=postgresql.ARRAY(String)),
        bindparam("sizes", type_=postgresql.ARRAY(BigInteger)),
        bindparam("messages", type_=postgresql.ARRAY(BigInteger)),
    )
    .table_valued(column("thread_id", String), column("size", BigInteger), column("messages", BigInteger))
    .render_derived()
)


def _advance_counters(statement: Any, table: Table) -> Any:
    return statement.on_conflict_do_update(
        index_elements=[table.c.thread_id],
        set_={
            "last_seq": table.c.last_seq + statement.excluded.last_seq,
            "event_count": table.c.event_count + statement.excluded.event_count,
            "message_count": table.c.message_count + statement.excluded.message_count,
        },
    ).returning(table.c.thread_id, table.c.last_seq)


_COUNTER_COLUMNS: Final = ["thread_id", "last_seq", "event_count", "message_count"]


@functools.cache
def advance_counters_sql(schema: str | None) -> str:
    """The PostgreSQL text advancing threads' counters: arrays $1 of ids, $2 of sizes, $3 of messages."""
    # The write path runs it on a raw asyncpg connection, so the schema is rendered in, not mapped.
    table = thread_counters if schema is None else thread_counters.to_metadata(MetaData(), schema=schema)
    statement = _advance_counters(
        postgresql.insert(table).from_select(
            _COUNTER_COLUMNS,
            # WHERE true: without it PostgreSQL may read ON CONFLICT as the ON of a join.
            select(_counts.c.thread_id, _counts.c.size, _counts.c.size, _counts.c.messages).where(true()),
        ),
        table,
    )
    return str(statement.compile(dialect=postgresql.asyncpg.dialect()))  # type: ignore[no-untyped-call]


def thread_counts(events: Sequence[PreparedEvent]) -> tuple[list[str], Counter[str], Counter[str]]:
    """The events' thread ids in lock order, and per thread its number of events and of messages."""
    sizes = Counter(event.thread_id for event in events)
    messages = Counter(event.thread_id for event in events if event.category == MESSAGE_CATEGORY)
    # One lock order for every writer (sorted thread ids), so two batches cannot deadlock.
    return sorted(sizes), sizes, messages


def number_events(
    events: Sequence[PreparedEvent], next_seq: dict[str, int], *, records: bool = True
) -> tuple[list[Record], list[tuple[Any, ...]]]:
    """The records (unless not wanted) and rows of `events`, numbered on from each thread's first seq."""
    made = []
    rows = []
    for prepared in events:
        seq = next_seq[prepared.thread_id]
        next_seq[prepared.thread_id] = seq + 1
        if records:
            made.append(make_record(prepared, seq))
        rows.append(event_row(prepared, seq))
    return made, rows


async def copy_rows(connection: asyncpg.Connection, rows: list[tuple[Any, ...]], schema: str | None) -> None:
    """COPY rows into run_events inside the connection's transaction (asyncpg's binary COPY)."""
    await connection.copy_records_to_table(
        run_events.name, records=rows, columns=ROW_COLUMNS, schema_name=schema
    )


async def insert_events_postgresql(
    connection: asyncpg.Connection,
    events: Sequence[PreparedEvent],
    schema: str | None,
    *,
    records: bool = True,
    notices: Callable[[list[tuple[Any, ...]]], Sequence[tuple[str, str]]] | None = None,
) -> list[Record]:
    """Reserve seqs for `events` from their threads' counters and COPY their rows; return the records.

    `records=False` returns none: the projector has no caller to hand them to, and building them is a
    measurable share of its work per event. `notices`: (channel, payload) pairs to notify on commit as
    well, made from the rows written (the projector tells waiting writers their seqs).
    """
    if not connection.is_in_transaction():
        # Outside a transaction the counters would commit apart from the rows: a crash between them
        # would leave a gap in seq. Whoever calls this owns the transaction.
        raise RuntimeError("insert_events_postgresql must run inside the caller's transaction")
    thread_ids, sizes, messages = thread_counts(events)
    reserved = await connection.fetch(
        advance_counters_sql(schema),
        thread_ids,
        [sizes[t] for t in thread_ids],
        [messages[t] for t in thread_ids],
    )
    made, rows = number_events(
        events,
        {thread_id: last_seq - sizes[thread_id] + 1 for thread_id, last_seq in reserved},
        records=records,
    )
    await copy_rows(connection, rows, schema)
    also = () if notices is None else notices(rows)
    await notify_asyncpg(connection, schema, WRITTEN, thread_ids, also=also)
    return made


async def insert_events(
    connection: AsyncConnection, events: Sequence[PreparedEvent], schema: str | None
) -> list[Record]:
    """Reserve seqs for `events` and insert their rows in the connection's transaction."""
    if connection.dialect.name == "postgresql":
        raw = await connection.get_raw_connection()
        return await insert_events_postgresql(raw.driver_connection, events, schema)
    thread_ids, sizes, messages = thread_counts(events)
    counters = [
        {"thread_id": t, "last_seq": sizes[t], "event_count": sizes[t], "message_count": messages[t]}
        for t in thread_ids
    ]
    reserved = await connection.execute(
        _advance_counters(sqlite.insert(thread_counters).values(counters), thread_counters)
    )
    records, rows = number_events(
        events, {thread_id: last_seq - sizes[thread_id] + 1 for thread_id, last_seq in reserved}
    )
    await connection.execute(insert(run_events), [dict(zip(ROW_COLUMNS, row, strict=True)) for row in rows])
    return records


def _upsert(connection: AsyncConnection) -> Any:
    return postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert


async def lock_thread(connection: AsyncConnection, thread_id: str) -> int | None:
    """Take the thread's counter row for this transaction; None if the thread has none."""
    statement = select(_c.last_seq).where(_c.thread_id == thread_id).with_for_update()
    return (await connection.execute(statement)).scalar()


async def put_if_absent(
    connection: AsyncConnection, event: PreparedEvent, schema: str | None
) -> tuple[Record, bool]:
    """Insert `event` unless its run has an event of its type; return (the earliest such record, created)."""
    # Creating the counter row if need be and locking it serializes this check with every
    # writer of the thread; a plain SELECT could let two receipts in.
    lock = _upsert(connection)(thread_counters).values(
        thread_id=event.thread_id, last_seq=0, event_count=0, message_count=0
    )
    await connection.execute(
        lock.on_conflict_do_update(index_elements=[_c.thread_id], set_={"last_seq": _c.last_seq})
    )
    existing = (
        await connection.execute(
            select(*RECORD_COLUMNS)
            .where(
                _e.thread_id == event.thread_id,
                _e.run_id == event.run_id,
                _e.event_type == event.event_type,
            )
            .order_by(_e.seq)
            .limit(1)
        )
    ).first()
    if existing is not None:
        return row_to_record(existing), False
    (record,) = await insert_events(connection, [event], schema)
    return record, True


async def _delete_rows(
    connection: AsyncConnection, thread_id: str, where: ColumnElement[bool], *, tombstones: bool
) -> list[str]:
    """Delete the rows `where` picks; return their categories. Tombstones keep (event_id, seq)."""
    # The caller spells out its whole condition: no argument left out can widen a delete to the thread.
    if not tombstones:
        removed = await connection.execute(delete(run_events).where(where).returning(_e.category))
        return [category for (category,) in removed]
    # One statement: the rows go, their tombstones come, and the categories come back for the counts.
    gone = delete(run_events).where(where).returning(_e.event_id, _e.seq, _e.category).cte("gone")
    kept = (
        postgresql.insert(deleted_events)
        .from_select(
            ["thread_id", "event_id", "seq", "deleted_at"],
            select(literal(thread_id), gone.c.event_id, gone.c.seq, func.now()),
        )
        .on_conflict_do_nothing()
        .cte("kept")
    )
    removed = await connection.execute(select(gone.c.category).add_cte(kept))
    return [category for (category,) in removed]


async def delete_thread(connection: AsyncConnection, thread_id: str, *, tombstones: bool = False) -> int:
    """Delete a thread's rows and its counter row (its seq starts again at 1); return how many rows went."""
    if await lock_thread(connection, thread_id) is None:
        return 0
    categories = await _delete_rows(connection, thread_id, _e.thread_id == thread_id, tombstones=tombstones)
    await connection.execute(delete(thread_counters).where(_c.thread_id == thread_id))
    await notify(connection, schema_of(connection), DELETED, (thread_id,))
    return len(categories)


async def delete_run(
    connection: AsyncConnection, thread_id: str, run_id: str, *, tombstones: bool = False
) -> int:
    """Delete a run's rows (the thread's seq goes on) and count them off; return how many went."""
    in_run = (_e.thread_id == thread_id) & (_e.run_id == run_id)
    return await _delete_counted(connection, thread_id, in_run, tombstones=tombstones)


async def delete_seqs(connection: AsyncConnection, thread_id: str, seqs: Sequence[int]) -> int:
    """Delete the thread's rows at `seqs` (retention; the seq goes on) and count them off; return how many."""
    at_seqs = (_e.thread_id == thread_id) & _e.seq.in_(seqs)
    # No tombstones: they serve writers racing a delete and retries of a fresh record, not old ones.
    return await _delete_counted(connection, thread_id, at_seqs, tombstones=False)


async def _delete_counted(
    connection: AsyncConnection, thread_id: str, where: ColumnElement[bool], *, tombstones: bool
) -> int:
    """Delete the thread's rows `where` picks, under its counter row's lock, and count them off."""
    if await lock_thread(connection, thread_id) is None:
        return 0
    categories = await _delete_rows(connection, thread_id, where, tombstones=tombstones)
    if categories:
        messages = sum(1 for category in categories if category == MESSAGE_CATEGORY)
        await connection.execute(
            thread_counters.update()
            .where(_c.thread_id == thread_id)
            .values(
                event_count=_c.event_count - len(categories),
                message_count=_c.message_count - messages,
            )
        )
    return len(categories)


async def set_retention(connection: AsyncConnection, thread_id: str, policy: dict[str, Any] | None) -> None:
    """Keep `policy` (a policy's JSON document) as the thread's own retention policy; None drops it."""
    table = retention_policies
    if policy is None:
        await connection.execute(delete(table).where(table.c.thread_id == thread_id))
        return
    values = {"thread_id": thread_id, "policy": orjson.dumps(policy).decode(), "updated_at": func.now()}
    statement = _upsert(connection)(table).values(values)
    await connection.execute(
        statement.on_conflict_do_update(
            index_elements=[table.c.thread_id],
            set_={"policy": statement.excluded.policy, "updated_at": statement.excluded.updated_at},
        )
    )
