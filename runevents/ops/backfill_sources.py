"""Where a backfill reads history: a JSONL directory, a runevents database, deer-flow's `run_events`.

Each source yields its events one thread at a time, in the thread's original order (seq), with an
event id derived from the source's identity of the event, so that the same history read twice
gives the same ids: a runevents record keeps its own; a deer-flow record, which has none, gets
`derived_event_id(thread_id, run_id, seq)`, the id the JSONL backend gives it on load.
What cannot be read (not JSON, not an object) comes out as a `SourceEvent` with a problem and its
place (`file:line`, or the row), so the backfill can report it and go on.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

import orjson
from sqlalchemy import Column, DateTime, Integer, MetaData, Table, Text, func, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from runevents.errors import RunEventsError
from runevents.events import derived_event_id
from runevents.tables.query import RECORD_COLUMNS, row_to_record
from runevents.tables.schema import run_events
from runevents.tables.sql import engine_for

# The fields of an event as `put` takes them; a source's other keys (seq, event_id) are not input.
INPUT_FIELDS: Final = (
    "thread_id",
    "run_id",
    "event_type",
    "category",
    "content",
    "metadata",
    "created_at",
    "user_id",
)
# deer-flow's markers in event_metadata: its content column is text, these say how to read it back.
_DEERFLOW_MARKERS: Final = ("content_is_json", "content_is_dict")
_STREAM_ROWS: Final = 2000


class SourceError(RunEventsError):
    """A backfill source that cannot be read at all; the message says which and why."""


@dataclass(frozen=True, slots=True)
class SourceEvent:
    """One event of the source, ready to validate, or the reason it could not be read."""

    where: str
    thread_id: str
    event_id: str
    event: Mapping[str, Any] | None
    problem: str | None = None


@dataclass(slots=True)
class SourceNotes:
    """What a source noticed while reading that is not an error: repeated seqs, for one."""

    notes: list[str] = field(default_factory=list)


class Source(Protocol):
    """History to import, thread by thread in original order."""

    description: str
    noticed: SourceNotes

    async def count(self) -> int:
        """How many records the source holds (lines or rows, read or not)."""
        ...

    def threads(self) -> AsyncIterator[list[SourceEvent]]:
        """Each thread's events in original order, one thread at a time."""
        ...

    async def close(self) -> None:
        """Release what the source holds open."""
        ...


def _is_uuid(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _input_of(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {key: raw[key] for key in INPUT_FIELDS if key in raw}


class JsonlSource:
    """A runevents or deer-flow JSONL directory: `threads/{thread_id}/runs/{run_id}.jsonl`."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.description = f"JSONL directory {base}"
        self.noticed = SourceNotes()
        if not (base / "threads").is_dir():
            raise SourceError(
                f"{base} has no threads/ directory: not a runevents or deer-flow JSONL directory"
            )

    def _thread_dirs(self) -> list[Path]:
        return sorted(path for path in (self.base / "threads").iterdir() if (path / "runs").is_dir())

    def _run_files(self, thread: Path) -> list[Path]:
        return sorted((thread / "runs").glob("*.jsonl"))

    async def count(self) -> int:
        """How many non-blank lines the run files hold."""
        return await asyncio.to_thread(self._count)

    def _count(self) -> int:
        lines = 0
        for thread in self._thread_dirs():
            for path in self._run_files(thread):
                with path.open("rb") as file:
                    lines += sum(1 for line in file if line.strip())
        return lines

    async def threads(self) -> AsyncIterator[list[SourceEvent]]:
        """Each thread's records ordered by seq (file and line order among equal seqs)."""
        for thread in await asyncio.to_thread(self._thread_dirs):
            yield await asyncio.to_thread(self._read_thread, thread)

    def _read_thread(self, thread: Path) -> list[SourceEvent]:
        thread_id = thread.name
        keyed: list[tuple[float, int, SourceEvent]] = []
        seen: dict[tuple[str, Any], str] = {}
        ids: Counter[str] = Counter()
        for path in self._run_files(thread):
            where_file, run_id = path.relative_to(self.base), path.stem
            with path.open("rb") as file:
                for number, line in enumerate(file, start=1):
                    if not line.strip():
                        continue
                    where = f"{where_file}:{number}"
                    position = len(keyed)
                    try:
                        raw = orjson.loads(line)
                    except orjson.JSONDecodeError as error:
                        keyed.append(
                            (-math.inf, position, _unreadable(where, thread_id, f"not JSON ({error})"))
                        )
                        continue
                    if not isinstance(raw, dict):
                        problem = f"not a JSON object but {type(raw).__name__}"
                        keyed.append((-math.inf, position, _unreadable(where, thread_id, problem)))
                        continue
                    event = self._event(raw, thread_id, run_id, where, seen, ids)
                    seq = raw.get("seq")
                    order = float(seq) if isinstance(seq, int) and not isinstance(seq, bool) else math.inf
                    keyed.append((order, position, event))
        keyed.sort(key=lambda item: (item[0], item[1]))
        return [event for _, _, event in keyed]

    def _event(
        self,
        raw: dict[str, Any],
        thread_id: str,
        run_id: str,
        where: str,
        seen: dict[tuple[str, Any], str],
        ids: Counter[str],
    ) -> SourceEvent:
        if raw.get("thread_id", thread_id) != thread_id:
            return _unreadable(
                where, thread_id, f"thread_id {raw.get('thread_id')!r} in the directory of {thread_id!r}"
            )
        seq = raw.get("seq")
        earlier = seen.get((thread_id, seq))
        if earlier is not None:
            self.noticed.notes.append(f"{where}: seq {seq} repeats {earlier} (both kept, in file order)")
        seen.setdefault((thread_id, seq), where)
        event_id = raw.get("event_id")
        if not _is_uuid(event_id):
            derived = derived_event_id(thread_id, raw.get("run_id", run_id), seq if seq is not None else 0)
            # A repeated (run, seq) is another event: it gets an id of its own, the same every read.
            ids[derived] += 1
            event_id = derived if ids[derived] == 1 else derived_event_id(derived, ids[derived])
        return SourceEvent(where, thread_id, str(event_id), _input_of(raw))

    async def close(self) -> None:
        """Nothing is held open between threads."""


def _unreadable(where: str, thread_id: str, problem: str) -> SourceEvent:
    return SourceEvent(where, thread_id, "", None, problem)


def _deerflow_table(schema: str | None) -> Table:
    """deer-flow's `run_events`, as its baseline migration creates it (the columns read here)."""
    return Table(
        "run_events",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("thread_id", Text),
        Column("run_id", Text),
        Column("user_id", Text),
        Column("event_type", Text),
        Column("category", Text),
        Column("content", Text),
        Column("event_metadata", Text),  # json: read as its text, decoded here
        Column("seq", Integer),
        Column("created_at", DateTime(timezone=True)),
        schema=schema,
    )


class DatabaseSource:
    """The `run_events` table of a runevents database or of deer-flow's database store."""

    def __init__(self, engine: AsyncEngine, url: str, schema: str | None, deerflow: bool) -> None:
        self._engine = engine
        self._deerflow = deerflow
        self._schema = schema
        shown = make_url(url).render_as_string(hide_password=True)
        kind = "deer-flow database" if deerflow else "runevents database"
        self.description = f"{kind} {shown}" + (f" (schema {schema})" if schema else "")
        self.noticed = SourceNotes()
        if deerflow:
            self._table = _deerflow_table(schema)
        else:
            self._table = run_events if schema is None else run_events.to_metadata(MetaData(), schema=schema)

    @classmethod
    async def open(cls, url: str, schema: str | None = None) -> DatabaseSource:
        """The source at `url`, told apart by its columns: `event_id` (runevents) or `event_metadata`."""
        engine = engine_for(url)
        try:
            async with engine.connect() as connection:
                columns = await connection.run_sync(
                    lambda sync: (
                        {c["name"] for c in inspect(sync).get_columns("run_events", schema=schema)}
                        if inspect(sync).has_table("run_events", schema=schema)
                        else set()
                    )
                )
        except BaseException:
            await engine.dispose()
            raise
        if "event_id" in columns:
            return cls(engine, url, schema, deerflow=False)
        if "event_metadata" in columns:
            return cls(engine, url, schema, deerflow=True)
        await engine.dispose()
        where = make_url(url).render_as_string(hide_password=True) + (f" schema {schema}" if schema else "")
        found = "no run_events table" if not columns else "a run_events table of neither kind"
        raise SourceError(f"{where} has {found}: expected runevents' or deer-flow's run_events")

    async def count(self) -> int:
        """How many rows the table holds."""
        async with self._engine.connect() as connection:
            return int(await connection.scalar(select(func.count()).select_from(self._table)) or 0)

    async def threads(self) -> AsyncIterator[list[SourceEvent]]:
        """Each thread's rows in seq order, streamed."""
        c = self._table.c
        if self._deerflow:
            statement = select(self._table)
        else:
            statement = select(*(self._table.c[column.name] for column in RECORD_COLUMNS))
        statement = statement.order_by(c.thread_id, c.seq)
        thread: list[SourceEvent] = []
        async with self._engine.connect() as connection:
            rows = await connection.stream(statement.execution_options(yield_per=_STREAM_ROWS))
            async for row in rows:
                event = self._deerflow_event(row) if self._deerflow else self._runevents_event(row)
                if thread and thread[-1].thread_id != event.thread_id:
                    yield thread
                    thread = []
                thread.append(event)
        if thread:
            yield thread

    def _runevents_event(self, row: Any) -> SourceEvent:
        where = f"thread {row.thread_id!r} seq {row.seq}"
        try:
            record = row_to_record(row)
        except orjson.JSONDecodeError as error:
            return _unreadable(where, row.thread_id, f"stored content or metadata is not JSON ({error})")
        return SourceEvent(where, row.thread_id, str(record["event_id"]), _input_of(record))

    def _deerflow_event(self, row: Any) -> SourceEvent:
        where = f"row id {row.id} (thread {row.thread_id!r} seq {row.seq})"
        try:
            metadata = row.event_metadata
            if isinstance(metadata, str | bytes):
                metadata = orjson.loads(metadata)
            metadata = {} if metadata is None else metadata
        except orjson.JSONDecodeError as error:
            return _unreadable(where, row.thread_id, f"event_metadata is not JSON ({error})")
        if not isinstance(metadata, dict):
            return _unreadable(where, row.thread_id, "event_metadata is not a JSON object")
        content: Any = row.content
        if metadata.get("content_is_json"):
            try:
                content = orjson.loads(content)
            except orjson.JSONDecodeError as error:
                return _unreadable(
                    where, row.thread_id, f"content_is_json, but content is not JSON ({error})"
                )
        for marker in _DEERFLOW_MARKERS:
            metadata.pop(marker, None)
        created_at = row.created_at
        if isinstance(created_at, datetime) and created_at.tzinfo is None:
            created_at = created_at.replace(tzinfo=UTC)  # deer-flow on SQLite loses the offset; it was UTC
        event = {
            "thread_id": row.thread_id,
            "run_id": row.run_id,
            "event_type": row.event_type,
            "category": row.category,
            "content": content,
            "metadata": metadata,
            "created_at": created_at,
            "user_id": row.user_id,
        }
        return SourceEvent(where, row.thread_id, derived_event_id(row.thread_id, row.run_id, row.seq), event)

    async def close(self) -> None:
        """Close the connection pool."""
        await self._engine.dispose()


async def open_source(location: str, schema: str | None = None) -> Source:
    """The source at `location`: a database URL (`scheme://...`) or a JSONL directory's path."""
    if "://" in location:
        return await DatabaseSource.open(location, schema)
    if schema is not None:
        raise SourceError("--source-schema is for a database source, not a JSONL directory")
    path = Path(location)
    if not await asyncio.to_thread(path.is_dir):
        raise SourceError(f"{location} is neither a directory nor a database URL")
    return await asyncio.to_thread(JsonlSource, path)
