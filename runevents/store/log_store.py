"""The read half of the contract over in-process `ThreadLog`s, shared by the memory and JSONL backends."""

from __future__ import annotations

import abc
from collections.abc import Collection

from runevents.events import Record
from runevents.store.base import RunEventStore, check_names, check_page
from runevents.store.thread_log import ThreadLog


class ThreadLogStore(RunEventStore):
    """A store whose reads are answered from a `ThreadLog` per thread; subclasses say how to get one."""

    @abc.abstractmethod
    async def _read_log(self, thread_id: str) -> ThreadLog:
        """The thread's log for reading (an empty one for a thread that has no records)."""

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
        check_page(limit, before_seq, after_seq)
        log = await self._read_log(thread_id)
        return log.list_messages(limit, before_seq, after_seq, user_id)

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
        check_page(limit, None, after_seq)
        if event_types is not None:
            check_names("event_types", event_types)
        log = await self._read_log(thread_id)
        return log.list_events(run_id, event_types, task_id, after_seq, limit, user_id)

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
        check_page(limit, before_seq, after_seq)
        log = await self._read_log(thread_id)
        return log.list_messages_by_run(run_id, limit, before_seq, after_seq, user_id)

    async def get_last_visible_ai_seq_by_run(
        self, thread_id: str, run_ids: Collection[str], *, user_id: str | None = None
    ) -> dict[str, int]:
        """Return the seq of each run's last AI response not written by middleware."""
        check_names("run_ids", run_ids)
        log = await self._read_log(thread_id)
        return log.last_visible_ai_seqs(run_ids, user_id)

    async def get_message_seqs(
        self, thread_id: str, identities: Collection[str], *, user_id: str | None = None
    ) -> dict[str, int]:
        """Return the seq of the earliest message record whose content `id` is each wanted id."""
        check_names("identities", identities)
        log = await self._read_log(thread_id)
        return log.message_seqs(identities, user_id)

    async def count_messages(self, thread_id: str, *, user_id: str | None = None) -> int:
        """Return how many message records a thread holds."""
        log = await self._read_log(thread_id)
        return log.count_messages(user_id)
