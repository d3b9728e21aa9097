"""Dead letters: the records a projector could not apply, and what an operator does about them.

A dead letter stays in `dead_letters` for good; retrying or dropping one changes its status and
records when and how (re-published where, or dropped with the operator's note), so the table is
also the audit of every poison record and its fate. A retry re-publishes the record to its topic,
after the operator fixed the projector or, with a replacement value, the record itself; it is
refused while the record would only be dead-lettered again, unless forced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

import orjson
from aiokafka import AIOKafkaProducer
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from runevents.bus.clients import start_fully
from runevents.errors import RunEventsError
from runevents.events import UndecodableRecordError, decode_record
from runevents.tables.schema import dead_letters

OPEN: Final = "open"
RETRIED: Final = "retried"
DROPPED: Final = "dropped"
Status = Literal["open", "retried", "dropped"]
_d = dead_letters.c


class DeadLetterError(RunEventsError):
    """A dead-letter command that cannot be carried out; the message says why."""


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    """One dead letter as stored: where the record was, the record, why, and what became of it."""

    id: int
    projection: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, str]]
    reason: str
    status: str
    dead_at: datetime
    resolved_at: datetime | None
    resolution: str | None

    @property
    def source(self) -> str:
        """Where the record was on the topic: `topic/partition/offset`."""
        return f"{self.topic}/{self.partition}/{self.offset}"


def _record(row: object) -> DeadLetterRecord:
    mapping = row._mapping  # type: ignore[attr-defined]
    return DeadLetterRecord(
        id=mapping["id"],
        projection=mapping["projection"],
        topic=mapping["topic"],
        partition=mapping["partition"],
        offset=mapping["offset"],
        key=mapping["key"],
        value=mapping["value"],
        headers=[(name, value) for name, value in orjson.loads(mapping["headers"])],
        reason=mapping["reason"],
        status=mapping["status"],
        dead_at=mapping["dead_at"],
        resolved_at=mapping["resolved_at"],
        resolution=mapping["resolution"],
    )


async def list_dead_letters(
    engine: AsyncEngine,
    *,
    status: Status | None = OPEN,
    projection: str | None = None,
    topic: str | None = None,
    limit: int = 100,
) -> list[DeadLetterRecord]:
    """Dead letters, oldest first, of one status (None: all) and optionally one projection or topic."""
    query = select(dead_letters).order_by(_d.id).limit(limit)
    if status is not None:
        query = query.where(_d.status == status)
    if projection is not None:
        query = query.where(_d.projection == projection)
    if topic is not None:
        query = query.where(_d.topic == topic)
    async with engine.connect() as connection:
        return [_record(row) for row in await connection.execute(query)]


async def get_dead_letter(engine: AsyncEngine, letter_id: int) -> DeadLetterRecord:
    """One dead letter by id; `DeadLetterError` if there is none."""
    async with engine.connect() as connection:
        (letter,) = await _locked(connection, [letter_id], lock=False)
    return letter


async def _locked(
    connection: AsyncConnection, ids: Sequence[int], *, lock: bool = True
) -> list[DeadLetterRecord]:
    """The dead letters `ids`, in that order, row-locked for this transaction if `lock`."""
    query = select(dead_letters).where(_d.id.in_(ids)).order_by(_d.id)
    found = {
        letter.id: letter
        for letter in map(_record, await connection.execute(query.with_for_update() if lock else query))
    }
    missing = [letter_id for letter_id in ids if letter_id not in found]
    if missing:
        raise DeadLetterError(f"no dead letter with id {', '.join(map(str, missing))}")
    return [found[letter_id] for letter_id in ids]


def _require_open(letters: Sequence[DeadLetterRecord], doing: str) -> None:
    for letter in letters:
        if letter.status != OPEN:
            when = f" at {letter.resolved_at:%Y-%m-%d %H:%M:%S %Z}" if letter.resolved_at else ""
            raise DeadLetterError(
                f"dead letter {letter.id} was already {letter.status}{when} ({letter.resolution}); "
                f"only open ones can be {doing}"
            )


def still_undecodable(letter: DeadLetterRecord, value: bytes | None) -> str | None:
    """Why `value`, published under the letter's key, would be dead-lettered again; None if it would not."""
    try:
        decoded = decode_record(value)
    except UndecodableRecordError as exc:
        return exc.reason
    thread_id = (decoded[1] if isinstance(decoded, tuple) else decoded).thread_id
    if letter.key != thread_id.encode():
        return f"the record's key {letter.key!r} is not its thread id {thread_id!r}"
    return None


@dataclass(frozen=True, slots=True)
class Retried:
    """A dead letter re-published: where the record is now."""

    letter_id: int
    topic: str
    partition: int
    offset: int


async def retry_dead_letters(
    engine: AsyncEngine,
    bootstrap_servers: str,
    ids: Sequence[int],
    *,
    value: bytes | None = None,
    force: bool = False,
    client_options: dict[str, object] | None = None,
) -> list[Retried]:
    """Re-publish open dead letters to their topics (with `value` instead of theirs, if given)."""
    if value is not None and len(ids) != 1:
        raise DeadLetterError("a replacement value is for one dead letter at a time")
    async with engine.begin() as connection:
        # Locked until marked: two operators retrying the same letter do not both publish it.
        letters = await _locked(connection, ids)
        _require_open(letters, "retried")
        if not force:
            for letter in letters:
                why = still_undecodable(letter, letter.value if value is None else value)
                if why is not None:
                    raise DeadLetterError(
                        f"dead letter {letter.id} would be dead-lettered again ({why}); publish a fixed "
                        "value (--value-file), fix the projector first, or --force"
                    )
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", **(client_options or {}))
        retried = []
        try:
            await start_fully(producer.start)  # in the try: a start that fails (no broker) is stopped too
            for letter in letters:
                sent = await producer.send_and_wait(
                    letter.topic,
                    value=letter.value if value is None else value,
                    key=letter.key,
                    headers=[(name, text.encode()) for name, text in letter.headers],
                )
                retried.append(Retried(letter.id, letter.topic, sent.partition, sent.offset))
        finally:
            await producer.stop()
        # If this commit fails the records are on the topic and the letters still open: a second
        # retry publishes them again, and the projector skips a put it already has by event id.
        now = datetime.now(UTC)
        for done in retried:
            replaced = " with a replacement value" if value is not None else ""
            await connection.execute(
                update(dead_letters)
                .where(_d.id == done.letter_id)
                .values(
                    status=RETRIED,
                    resolved_at=now,
                    resolution=f"re-published{replaced} to {done.topic}/{done.partition}/{done.offset}",
                )
            )
    return retried


async def drop_dead_letters(engine: AsyncEngine, ids: Sequence[int], *, note: str) -> list[DeadLetterRecord]:
    """Mark open dead letters as dropped, with the operator's note; the records are kept."""
    if not note.strip():
        raise DeadLetterError("dropping a dead letter needs a note saying why (it is kept with the letter)")
    async with engine.begin() as connection:
        letters = await _locked(connection, ids)
        _require_open(letters, "dropped")
        now = datetime.now(UTC)
        await connection.execute(
            update(dead_letters)
            .where(_d.id.in_(ids))
            .values(status=DROPPED, resolved_at=now, resolution=f"dropped: {note.strip()}")
        )
    return letters
