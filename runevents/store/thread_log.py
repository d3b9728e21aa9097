"""An in-memory, seq-ordered log of one thread with the indexes every read of the contract needs.

The memory and JSONL backends keep their records here; each record is held as its JSON bytes, so
what a caller does to a returned record never changes what the store holds.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from operator import attrgetter

import orjson

from runevents.events import MESSAGE_CATEGORY, Record, is_visible_ai_message, message_id_of, to_json
from runevents.lifecycle.offload import blob_address
from runevents.lifecycle.retention import Summary

_seq = attrgetter("seq")


@dataclass(slots=True, frozen=True)
class LoggedEvent:
    """One record with the fields the read methods filter on pulled out of it."""

    seq: int
    run_id: str
    event_type: str
    category: str
    user_id: str | None
    task_id: str | None
    visible_ai: bool
    message_id: str | None
    created_at: str
    line: bytes

    @classmethod
    def of(cls, record: Record, line: bytes | None = None) -> LoggedEvent:
        """Index a record; `line` is its JSON if the caller already has it."""
        metadata = record["metadata"]
        task_id = metadata.get("task_id")
        return cls(
            seq=record["seq"],
            run_id=record["run_id"],
            event_type=record["event_type"],
            category=record["category"],
            user_id=record["user_id"],
            task_id=task_id if isinstance(task_id, str) else None,
            visible_ai=is_visible_ai_message(record["event_type"], record["category"], metadata),
            message_id=message_id_of(record["category"], record["content"]),
            created_at=record["created_at"],
            line=to_json(record) if line is None else line,
        )

    def record(self) -> Record:
        """A fresh copy of the record."""
        result: Record = orjson.loads(self.line)
        return result


Keep = Callable[[LoggedEvent], bool] | None


def _user_filter(user_id: str | None) -> Keep:
    if user_id is None:
        return None
    return lambda event: event.user_id == user_id


def _matching(events: Iterator[LoggedEvent], keep: Keep, limit: int) -> list[LoggedEvent]:
    found: list[LoggedEvent] = []
    if limit <= 0:
        return found
    for event in events:
        if keep is None or keep(event):
            found.append(event)
            if len(found) == limit:
                break
    return found


def page(
    events: list[LoggedEvent], limit: int, before_seq: int | None, after_seq: int | None, keep: Keep = None
) -> list[LoggedEvent]:
    """The contract's paging rule over seq-ordered events.

    With `after_seq` the first `limit` after it (and before `before_seq`, if given); otherwise the
    last `limit` before `before_seq`, or the latest `limit`. Filters apply before the limit.
    """
    lo = 0 if after_seq is None else bisect_right(events, after_seq, key=_seq)
    hi = len(events) if before_seq is None else bisect_left(events, before_seq, key=_seq)
    if after_seq is not None:
        if keep is None:
            return events[lo : max(lo, min(hi, lo + limit))]
        return _matching((events[i] for i in range(lo, hi)), keep, limit)
    if keep is None:
        return events[max(lo, hi - limit) : hi] if limit > 0 else []
    newest_first = _matching((events[i] for i in range(hi - 1, lo - 1, -1)), keep, limit)
    newest_first.reverse()
    return newest_first


def records(events: list[LoggedEvent]) -> list[Record]:
    """Fresh records of indexed events."""
    return [event.record() for event in events]


@dataclass(slots=True)
class ThreadLog:
    """A thread's records in seq order, with per-run, message and message-id indexes."""

    last_seq: int = 0
    events: list[LoggedEvent] = field(default_factory=list)
    messages: list[LoggedEvent] = field(default_factory=list)
    runs: dict[str, list[LoggedEvent]] = field(default_factory=dict)
    run_messages: dict[str, list[LoggedEvent]] = field(default_factory=dict)
    by_message_id: dict[str, list[LoggedEvent]] = field(default_factory=dict)

    def append(self, event: LoggedEvent) -> None:
        """Add a record whose seq is not below any already held."""
        self.last_seq = max(self.last_seq, event.seq)
        self.events.append(event)
        self.runs.setdefault(event.run_id, []).append(event)
        if event.category == MESSAGE_CATEGORY:
            self.messages.append(event)
            self.run_messages.setdefault(event.run_id, []).append(event)
            if event.message_id is not None:
                self.by_message_id.setdefault(event.message_id, []).append(event)

    def remove_run(self, run_id: str) -> int:
        """Drop a run's records (the seq counter stays); return how many were dropped."""
        return self._remove(self.runs.get(run_id, []))

    def remove_seqs(self, seqs: Collection[int]) -> int:
        """Drop the records at `seqs` (the seq counter stays); return how many were dropped."""
        gone = set(seqs)
        return self._remove([event for event in self.events if event.seq in gone])

    def _remove(self, removed: list[LoggedEvent]) -> int:
        """Drop `removed`, records this log holds, from every index; return how many."""
        if not removed:
            return 0
        gone = {event.seq for event in removed}

        def kept(events: list[LoggedEvent]) -> list[LoggedEvent]:
            return [event for event in events if event.seq not in gone]

        def prune(index: dict[str, list[LoggedEvent]], keys: set[str]) -> None:
            for key in keys & index.keys():
                left = kept(index[key])
                if left:
                    index[key] = left
                else:
                    del index[key]

        self.events = kept(self.events)
        self.messages = kept(self.messages)
        runs = {event.run_id for event in removed}
        prune(self.runs, runs)
        prune(self.run_messages, runs)
        prune(self.by_message_id, {event.message_id for event in removed if event.message_id is not None})
        return len(removed)

    def find(self, event_id: str) -> Record | None:
        """The record of `event_id`, if this log holds it."""
        needle = event_id.encode()
        for event in self.events:
            if needle in event.line:  # most lines are ruled out without decoding them
                record = event.record()
                if record["event_id"] == event_id:
                    return record
        return None

    def summaries(self) -> list[Summary]:
        """What retention looks at of each record, in seq order."""
        return [
            Summary(event.seq, event.run_id, event.category, datetime.fromisoformat(event.created_at))
            for event in self.events
        ]

    def blob_addresses(self) -> set[str]:
        """The addresses of the blobs the records point at."""
        found = set()
        for event in self.events:
            if b'"content_blob"' in event.line:  # the few cut ones are the only ones decoded
                address = blob_address(orjson.loads(event.line)["metadata"])
                if address is not None:
                    found.add(address)
        return found

    def first_of_type(self, run_id: str, event_type: str) -> LoggedEvent | None:
        """The run's earliest record of an event type, if it has one."""
        return next((event for event in self.runs.get(run_id, ()) if event.event_type == event_type), None)

    def list_messages(
        self, limit: int, before_seq: int | None, after_seq: int | None, user_id: str | None
    ) -> list[Record]:
        """One page of the thread's messages."""
        return records(page(self.messages, limit, before_seq, after_seq, _user_filter(user_id)))

    def list_messages_by_run(
        self, run_id: str, limit: int, before_seq: int | None, after_seq: int | None, user_id: str | None
    ) -> list[Record]:
        """One page of a run's messages."""
        run = self.run_messages.get(run_id, [])
        return records(page(run, limit, before_seq, after_seq, _user_filter(user_id)))

    def list_events(
        self,
        run_id: str,
        event_types: Collection[str] | None,
        task_id: str | None,
        after_seq: int | None,
        limit: int,
        user_id: str | None,
    ) -> list[Record]:
        """A run's records after `after_seq` that pass every filter, the first `limit` of them."""
        wanted_types = None if event_types is None else frozenset(event_types)

        def keep(event: LoggedEvent) -> bool:
            return (
                (wanted_types is None or event.event_type in wanted_types)
                and (task_id is None or event.task_id == task_id)
                and (user_id is None or event.user_id == user_id)
            )

        run = self.runs.get(run_id, [])
        lo = 0 if after_seq is None else bisect_right(run, after_seq, key=_seq)
        return records(_matching(iter(run[lo:]), keep, limit))

    def records_after(
        self,
        after_seq: int,
        limit: int,
        run_id: str | None,
        categories: Collection[str] | None,
        user_id: str | None,
    ) -> list[Record]:
        """The first `limit` records after `after_seq` of the thread (or of one run) that pass the filters."""

        def keep(event: LoggedEvent) -> bool:
            return (categories is None or event.category in categories) and (
                user_id is None or event.user_id == user_id
            )

        held = self.events if run_id is None else self.runs.get(run_id, [])
        lo = bisect_right(held, after_seq, key=_seq)
        return records(_matching(iter(held[lo:]), keep, limit))

    def last_visible_ai_seqs(self, run_ids: Collection[str], user_id: str | None) -> dict[str, int]:
        """Each run's last AI response not written by middleware."""
        found: dict[str, int] = {}
        for run_id in run_ids:
            for event in reversed(self.run_messages.get(run_id, [])):
                if event.visible_ai and (user_id is None or event.user_id == user_id):
                    found[run_id] = event.seq
                    break
        return found

    def message_seqs(self, identities: Collection[str], user_id: str | None) -> dict[str, int]:
        """The earliest message seq of each wanted message id the thread holds."""
        found: dict[str, int] = {}
        for identity in identities:
            for event in self.by_message_id.get(identity, ()):
                if user_id is None or event.user_id == user_id:
                    found[identity] = event.seq
                    break
        return found

    def count_messages(self, user_id: str | None) -> int:
        """How many messages the thread holds (visible to `user_id`, when given)."""
        if user_id is None:
            return len(self.messages)
        return sum(1 for event in self.messages if event.user_id == user_id)
