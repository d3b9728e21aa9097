"""The read half of the contract over in-process `ThreadLog`s, shared by the memory and JSONL backends."""

from __future__ import annotations

import abc
from collections.abc import Collection

from runevents.events import Record
from runevents.lifecycle.retention import Summary
from runevents.store.base import RunEventStore
from runevents.store.thread_log import ThreadLog


class ThreadLogStore(RunEventStore):
    """A store whose reads are answered from a `ThreadLog` per thread; subclasses say how to get one."""

    @abc.abstractmethod
    async def _read_log(self, thread_id: str) -> ThreadLog:
        """The thread's log for reading (an empty one for a thread that has no records)."""

    async def _list_messages(
        self, thread_id: str, limit: int, before_seq: int | None, after_seq: int | None, user_id: str | None
    ) -> list[Record]:
        log = await self._read_log(thread_id)
        return log.list_messages(limit, before_seq, after_seq, user_id)

    async def _list_events(
        self,
        thread_id: str,
        run_id: str,
        event_types: Collection[str] | None,
        task_id: str | None,
        after_seq: int | None,
        limit: int,
        user_id: str | None,
    ) -> list[Record]:
        log = await self._read_log(thread_id)
        return log.list_events(run_id, event_types, task_id, after_seq, limit, user_id)

    async def _list_messages_by_run(
        self,
        thread_id: str,
        run_id: str,
        limit: int,
        before_seq: int | None,
        after_seq: int | None,
        user_id: str | None,
    ) -> list[Record]:
        log = await self._read_log(thread_id)
        return log.list_messages_by_run(run_id, limit, before_seq, after_seq, user_id)

    async def _last_visible_ai_seqs(
        self, thread_id: str, run_ids: Collection[str], user_id: str | None
    ) -> dict[str, int]:
        log = await self._read_log(thread_id)
        return log.last_visible_ai_seqs(run_ids, user_id)

    async def _message_seqs(
        self, thread_id: str, identities: Collection[str], user_id: str | None
    ) -> dict[str, int]:
        log = await self._read_log(thread_id)
        return log.message_seqs(identities, user_id)

    async def _count_messages(self, thread_id: str, user_id: str | None) -> int:
        log = await self._read_log(thread_id)
        return log.count_messages(user_id)

    async def _records_after(
        self,
        thread_id: str,
        after_seq: int,
        limit: int,
        run_id: str | None,
        categories: Collection[str] | None,
        user_id: str | None,
    ) -> list[Record]:
        log = await self._read_log(thread_id)
        return log.records_after(after_seq, limit, run_id, categories, user_id)

    async def _summaries(self, thread_id: str) -> list[Summary]:
        log = await self._read_log(thread_id)
        return log.summaries()

    async def _blob_references(self, thread_id: str) -> set[str]:
        log = await self._read_log(thread_id)
        return log.blob_addresses()

    async def _event_by_id(self, thread_id: str, event_id: str) -> Record | None:
        log = await self._read_log(thread_id)
        return log.find(event_id)
