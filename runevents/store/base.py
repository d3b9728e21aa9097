"""The contract: `RunEventStore`, the one interface every backend implements."""

from __future__ import annotations

import abc
from collections.abc import Collection, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

from runevents.errors import InvalidEventError, InvalidQueryError
from runevents.events import Content, Record


class RunEventStore(abc.ABC):
    """Storage for the event streams of agent runs: writes assign a per-thread seq, reads page by it."""

    async def put(
        self,
        *,
        thread_id: str,
        run_id: str,
        event_type: str,
        category: str,
        content: Content = "",
        metadata: dict[str, Any] | None = None,
        created_at: str | None = None,
        user_id: str | None = None,
    ) -> Record:
        """Write one event, assign its seq and return the complete record."""
        event = _event(thread_id, run_id, event_type, category, content, metadata, created_at, user_id)
        try:
            (record,) = await self.put_batch([event])
        except InvalidEventError as exc:
            # A single put has no batch position to report.
            raise InvalidEventError(exc.field, exc.problem) from None
        return record

    @abc.abstractmethod
    async def put_batch(self, events: Sequence[Mapping[str, Any]]) -> list[Record]:
        """Write many events (of any threads) all or none; return their records in input order."""

    async def put_if_absent(
        self,
        *,
        thread_id: str,
        run_id: str,
        event_type: str,
        category: str,
        content: Content = "",
        metadata: dict[str, Any] | None = None,
        created_at: str | None = None,
        user_id: str | None = None,
    ) -> tuple[Record, bool]:
        """Write an event unless the run already has one of this type; return (record, created)."""
        event = _event(thread_id, run_id, event_type, category, content, metadata, created_at, user_id)
        return await self._put_if_absent(event)

    @abc.abstractmethod
    async def _put_if_absent(self, event: Mapping[str, Any]) -> tuple[Record, bool]:
        """`put_if_absent` of one event given as `put` keywords, serialized with the thread's writers."""

    @abc.abstractmethod
    async def list_messages(
        self,
        thread_id: str,
        *,
        limit: int = 50,
        before_seq: int | None = None,
        after_seq: int | None = None,
        user_id: str | None = None,
    ) -> list[Record]:
        """Return one page of a thread's message records, ascending by seq."""

    @abc.abstractmethod
    async def list_events(
        self,
        thread_id: str,
        run_id: str,
        *,
        event_types: Collection[str] | None = None,
        task_id: str | None = None,
        after_seq: int | None = None,
        limit: int = 500,
        user_id: str | None = None,
    ) -> list[Record]:
        """Return a run's records of every category, filtered, then the first `limit` after `after_seq`."""

    @abc.abstractmethod
    async def list_messages_by_run(
        self,
        thread_id: str,
        run_id: str,
        *,
        limit: int = 50,
        before_seq: int | None = None,
        after_seq: int | None = None,
        user_id: str | None = None,
    ) -> list[Record]:
        """Return one page of a run's message records, ascending by seq."""

    @abc.abstractmethod
    async def get_last_visible_ai_seq_by_run(
        self, thread_id: str, run_ids: Collection[str], *, user_id: str | None = None
    ) -> dict[str, int]:
        """Return the seq of each run's last AI response not written by middleware."""

    @abc.abstractmethod
    async def get_message_seqs(
        self, thread_id: str, identities: Collection[str], *, user_id: str | None = None
    ) -> dict[str, int]:
        """Return the seq of the earliest message record whose content `id` is each wanted id."""

    @abc.abstractmethod
    async def count_messages(self, thread_id: str, *, user_id: str | None = None) -> int:
        """Return how many message records a thread holds."""

    @abc.abstractmethod
    async def delete_by_thread(self, thread_id: str) -> int:
        """Delete a thread's records and reset its seq; return how many were removed."""

    @abc.abstractmethod
    async def delete_by_run(self, thread_id: str, run_id: str) -> int:
        """Delete a run's records (the thread's seq goes on); return how many were removed."""

    async def close(self) -> None:
        """Release what the store holds (files, locks, connections); idempotent."""
        return None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def _event(
    thread_id: str,
    run_id: str,
    event_type: str,
    category: str,
    content: Content,
    metadata: dict[str, Any] | None,
    created_at: str | None,
    user_id: str | None,
) -> dict[str, Any]:
    return {
        "thread_id": thread_id,
        "run_id": run_id,
        "event_type": event_type,
        "category": category,
        "content": content,
        "metadata": metadata,
        "created_at": created_at,
        "user_id": user_id,
    }


def check_page(limit: int, before_seq: int | None = None, after_seq: int | None = None) -> None:
    """Reject page arguments no backend can answer the same way (negative or non-integer)."""
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise InvalidQueryError("limit", f"must be an int, got {type(limit).__name__}")
    if limit < 0:
        raise InvalidQueryError("limit", f"must be >= 0, got {limit}")
    for name, value in (("before_seq", before_seq), ("after_seq", after_seq)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidQueryError(name, f"must be an int or None, got {type(value).__name__}")


def check_names(argument: str, values: Collection[str]) -> None:
    """Reject a collection argument that is a bare string (a common slip: `run_ids="r1"`)."""
    if isinstance(values, str | bytes):
        raise InvalidQueryError(argument, "must be a collection of strings, not a single string")
