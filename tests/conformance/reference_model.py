"""A deliberately naive reference implementation of the RunEventStore contract (DESIGN.md).

Written from the contract, not from `runevents.store`: a list of record dicts and a seq counter
per thread, filters as list comprehensions, order by `sorted`. It is slow and obviously right,
which is the point: the stateful test compares every answer of a real store with this one's.

The model never invents event ids or timestamps. The test writes through the real store and
hands the returned record to `accept`, which first checks every field the model can predict.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Any

Record = dict[str, Any]

MESSAGE = "message"
AI_RESPONSE_TYPES = ("llm.ai.response", "ai_message")
MIDDLEWARE_PREFIX = "middleware:"


def canonical(value: Any) -> str:
    """JSON text that tells apart what `==` does not (`1`, `1.0` and `True`; key order aside)."""
    return json.dumps(value, sort_keys=True)


def same(actual: Any, expected: Any) -> None:
    """Assert a store's answer equals the model's, JSON types included."""
    assert actual == expected
    assert canonical(actual) == canonical(expected)


def _by_seq(record: Record) -> int:
    seq: int = record["seq"]
    return seq


def _visible_to(record: Record, user_id: str | None) -> bool:
    return user_id is None or record["user_id"] == user_id


def _page(records: list[Record], limit: int, before_seq: int | None, after_seq: int | None) -> list[Record]:
    ordered = sorted(records, key=_by_seq)
    if after_seq is not None:
        window = [
            r for r in ordered if r["seq"] > after_seq and (before_seq is None or r["seq"] < before_seq)
        ]
        return window[:limit]
    window = [r for r in ordered if before_seq is None or r["seq"] < before_seq]
    if limit <= 0:
        return []
    return window[max(0, len(window) - limit) :]


class ReferenceModel:
    """What a store should hold and answer, per the contract."""

    def __init__(self) -> None:
        self.threads: dict[str, list[Record]] = {}
        self.counters: dict[str, int] = {}

    # --- writes -------------------------------------------------------------------------------

    def expected_fields(self, event: Mapping[str, Any]) -> Record:
        """The fields of the record `event` should become if it were written now."""
        thread_id = event["thread_id"]
        metadata = event.get("metadata")
        return {
            "thread_id": thread_id,
            "run_id": event["run_id"],
            "seq": self.counters.get(thread_id, 0) + 1,
            "event_type": event["event_type"],
            "category": event["category"],
            "content": event.get("content", ""),
            "metadata": {} if metadata is None else metadata,
            "user_id": event.get("user_id"),
        }

    def accept(self, event: Mapping[str, Any], record: Record) -> None:
        """Check a record the store returned for a freshly written `event`, then hold it."""
        for field, value in self.expected_fields(event).items():
            assert field in record, f"record lacks {field!r}: {record!r}"
            assert record[field] == value, f"{field}: store returned {record[field]!r}, expected {value!r}"
            assert canonical(record[field]) == canonical(value), f"{field}: JSON types differ"
        event_id = record.get("event_id")
        assert isinstance(event_id, str), f"bad event_id {event_id!r}"
        assert event_id, "empty event_id"
        held = [r for records in self.threads.values() for r in records]
        assert all(r["event_id"] != event_id for r in held), f"event_id {event_id!r} reused"
        created_at = record.get("created_at")
        assert isinstance(created_at, str), f"bad created_at {created_at!r}"
        assert created_at.endswith("+00:00"), f"created_at not in UTC: {created_at!r}"
        given = event.get("created_at")
        if given is not None:
            moment = datetime.fromisoformat(given)
            assert datetime.fromisoformat(created_at) == moment, (
                f"{created_at!r} is not the instant {given!r}"
            )
            assert created_at == moment.astimezone(UTC).isoformat()
        self.threads.setdefault(event["thread_id"], []).append(copy.deepcopy(record))
        self.counters[event["thread_id"]] = record["seq"]

    def existing(self, thread_id: str, run_id: str, event_type: str) -> Record | None:
        """The record `put_if_absent` should return instead of writing (any user's), if any."""
        found = [
            r
            for r in self.threads.get(thread_id, [])
            if r["run_id"] == run_id and r["event_type"] == event_type
        ]
        if not found:
            return None
        return copy.deepcopy(sorted(found, key=_by_seq)[0])

    def delete_by_run(self, thread_id: str, run_id: str) -> int:
        """Drop a run's records; the thread's counter stays where it is."""
        held = self.threads.get(thread_id, [])
        kept = [r for r in held if r["run_id"] != run_id]
        if thread_id in self.threads:
            self.threads[thread_id] = kept
        return len(held) - len(kept)

    def delete_by_thread(self, thread_id: str) -> int:
        """Drop a thread's records and reset its counter to 0."""
        held = self.threads.pop(thread_id, [])
        self.counters.pop(thread_id, None)
        return len(held)

    # --- reads --------------------------------------------------------------------------------

    def _records(self, thread_id: str) -> list[Record]:
        return sorted(self.threads.get(thread_id, []), key=_by_seq)

    def list_messages(
        self,
        thread_id: str,
        *,
        limit: int,
        before_seq: int | None,
        after_seq: int | None,
        user_id: str | None,
    ) -> list[Record]:
        messages = [
            r for r in self._records(thread_id) if r["category"] == MESSAGE and _visible_to(r, user_id)
        ]
        return copy.deepcopy(_page(messages, limit, before_seq, after_seq))

    def list_messages_by_run(
        self,
        thread_id: str,
        run_id: str,
        *,
        limit: int,
        before_seq: int | None,
        after_seq: int | None,
        user_id: str | None,
    ) -> list[Record]:
        messages = [
            r
            for r in self._records(thread_id)
            if r["run_id"] == run_id and r["category"] == MESSAGE and _visible_to(r, user_id)
        ]
        return copy.deepcopy(_page(messages, limit, before_seq, after_seq))

    def list_events(
        self,
        thread_id: str,
        run_id: str,
        *,
        event_types: Collection[str] | None,
        task_id: str | None,
        after_seq: int | None,
        limit: int,
        user_id: str | None,
    ) -> list[Record]:
        found = [
            r
            for r in self._records(thread_id)
            if r["run_id"] == run_id
            and (event_types is None or r["event_type"] in event_types)
            and (task_id is None or r["metadata"].get("task_id") == task_id)
            and _visible_to(r, user_id)
            and (after_seq is None or r["seq"] > after_seq)
        ]
        return copy.deepcopy(found[: max(0, limit)])

    def get_last_visible_ai_seq_by_run(
        self, thread_id: str, run_ids: Collection[str], *, user_id: str | None
    ) -> dict[str, int]:
        answer: dict[str, int] = {}
        for run_id in run_ids:
            seqs = [
                r["seq"]
                for r in self._records(thread_id)
                if r["run_id"] == run_id
                and r["category"] == MESSAGE
                and r["event_type"] in AI_RESPONSE_TYPES
                and not str(r["metadata"].get("caller") or "").startswith(MIDDLEWARE_PREFIX)
                and _visible_to(r, user_id)
            ]
            if seqs:
                answer[run_id] = max(seqs)
        return answer

    def get_message_seqs(
        self, thread_id: str, identities: Collection[str], *, user_id: str | None
    ) -> dict[str, int]:
        answer: dict[str, int] = {}
        for identity in identities:
            seqs = [
                r["seq"]
                for r in self._records(thread_id)
                if r["category"] == MESSAGE
                and isinstance(r["content"], dict)
                and isinstance(r["content"].get("id"), str)
                and r["content"]["id"] == identity
                and _visible_to(r, user_id)
            ]
            if seqs:
                answer[identity] = min(seqs)
        return answer

    def count_messages(self, thread_id: str, *, user_id: str | None) -> int:
        return len(
            [r for r in self._records(thread_id) if r["category"] == MESSAGE and _visible_to(r, user_id)]
        )
