"""The memory backend: every thread's log in a dict, for tests, notebooks and one process.

No method awaits between reading and changing state, so coroutines of one event loop cannot
interleave inside a write: seq stays gap-free without locks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from runevents.events import PreparedEvent, Record, make_record, prepare_event, prepare_events
from runevents.lifecycle.blobs import BlobStore
from runevents.lifecycle.offload import offload, offload_sizes
from runevents.store.log_store import ThreadLogStore
from runevents.store.thread_log import LoggedEvent, ThreadLog


class MemoryRunEventStore(ThreadLogStore):
    """A `RunEventStore` held in process memory; gone when the process ends."""

    def __init__(
        self,
        *,
        max_trace_content: int | None = None,
        blobs: BlobStore | None = None,
        offload_over: Mapping[str, int] | None = None,
    ) -> None:
        """`blobs`: where contents cut to their preview are kept whole (see `get_full_content`);
        `offload_over`: category -> size in bytes past which its contents are cut and kept there."""
        self._max_trace_content = max_trace_content
        self._offload_over = offload_sizes(offload_over, blobs)
        self._blobs = blobs
        self._threads: dict[str, ThreadLog] = {}
        self._retention: dict[str, dict[str, Any]] = {}

    async def _read_log(self, thread_id: str) -> ThreadLog:
        return self._threads.get(thread_id) or ThreadLog()

    def _append(self, event: PreparedEvent) -> Record:
        log = self._threads.setdefault(event.thread_id, ThreadLog())
        record = make_record(event, log.last_seq + 1)
        log.append(LoggedEvent.of(record))
        return record

    async def put_batch(self, events: Sequence[Mapping[str, Any]]) -> list[Record]:
        """Write many events all or none; return their records in input order."""
        prepared = prepare_events(events, max_trace_content=self._max_trace_content)
        prepared = await offload(prepared, self._blobs, over=self._offload_over)
        records = [self._append(event) for event in prepared]
        self._doorbells.ring({event.thread_id for event in prepared})
        return records

    async def _put_if_absent(self, event: Mapping[str, Any]) -> tuple[Record, bool]:
        (prepared,) = await offload(
            [prepare_event(event, max_trace_content=self._max_trace_content)],
            self._blobs,
            over=self._offload_over,
        )
        log = self._threads.get(prepared.thread_id)
        existing = None if log is None else log.first_of_type(prepared.run_id, prepared.event_type)
        if existing is not None:
            return existing.record(), False
        record = self._append(prepared)
        self._doorbells.ring((prepared.thread_id,))
        return record, True

    async def _delete_thread(self, thread_id: str) -> int:
        log = self._threads.pop(thread_id, None)
        self._doorbells.ring((thread_id,), deleted=True)
        return 0 if log is None else len(log.events)

    async def _delete_run(self, thread_id: str, run_id: str) -> int:
        log = self._threads.get(thread_id)
        return 0 if log is None else log.remove_run(run_id)

    async def _expire(self, thread_id: str, seqs: list[int]) -> int:
        log = self._threads.get(thread_id)
        return 0 if log is None else log.remove_seqs(seqs)

    async def _thread_ids(self, after: str | None, limit: int) -> list[str]:
        return sorted(thread for thread in self._threads if after is None or thread > after)[:limit]

    async def _set_retention(self, thread_id: str, policy: dict[str, Any] | None) -> None:
        if policy is None:
            self._retention.pop(thread_id, None)
        else:
            self._retention[thread_id] = policy

    async def _get_retention(self, thread_id: str) -> dict[str, Any] | None:
        return self._retention.get(thread_id)

    def _blob_store(self) -> BlobStore | None:
        return self._blobs
