"""The JSONL backend: append-only files, one per run, for one node that wants files.

One process owns a directory at a time (an exclusive lock file says so), since seq is assigned
in memory. Each thread is read from its files the first time it is used and then served from a
`ThreadLog`; the least recently used threads are dropped from memory past `max_cached_threads`.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import IO, Any, Literal, TypeVar

from runevents.errors import InvalidEventError, InvalidQueryError, StoreLockedError
from runevents.events import PreparedEvent, Record, make_record, prepare_event, prepare_events, to_json
from runevents.lifecycle.blobs import BlobStore
from runevents.lifecycle.offload import offload, offload_sizes
from runevents.store import jsonl_files
from runevents.store.critical import run_to_completion
from runevents.store.jsonl_files import ThreadFiles
from runevents.store.log_store import ThreadLogStore
from runevents.store.thread_log import LoggedEvent, ThreadLog

Durability = Literal["flush", "fsync"]
T = TypeVar("T")

_LOCK_FILE = ".runevents.lock"


class JsonlRunEventStore(ThreadLogStore):
    """A `RunEventStore` in JSONL files under `base_dir` (deer-flow's `.deer-flow` layout).

    `durability="flush"` hands every append to the OS before `put` returns (it survives the
    process, not the machine); `"fsync"` also forces it to disk.
    """

    def __init__(
        self,
        base_dir: str | os.PathLike[str] = ".deer-flow",
        *,
        durability: Durability = "flush",
        max_trace_content: int | None = None,
        max_cached_threads: int = 1024,
        blobs: BlobStore | None = None,
        offload_over: Mapping[str, int] | None = None,
    ) -> None:
        if durability not in ("flush", "fsync"):
            raise ValueError(f"durability: must be 'flush' or 'fsync', got {durability!r}")
        if max_cached_threads < 1:
            raise ValueError(f"max_cached_threads: must be >= 1, got {max_cached_threads}")
        self._base = Path(base_dir)
        # Where contents cut to their preview are kept whole (see `get_full_content`).
        self._blobs = blobs
        self._offload_over = offload_sizes(offload_over, blobs)
        if self._base.resolve() == Path("/"):
            # Its threads/ would sit at /threads, and a delete would remove under it.
            raise ValueError(
                f"base_dir: the file system's root {str(base_dir)!r} cannot be a store's directory"
            )
        self._fsync = durability == "fsync"
        self._max_trace_content = max_trace_content
        self._max_cached = max_cached_threads
        self._logs: OrderedDict[str, ThreadLog] = OrderedDict()
        self._strays: dict[str, dict[str, set[Path]]] = {}
        # A lock lives while someone holds or awaits it; idle threads cost nothing.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._lock_file: IO[bytes] | None = None

    @property
    def base_dir(self) -> Path:
        """The directory the store reads and writes."""
        return self._base

    def _claim_directory(self) -> None:
        if self._lock_file is not None:
            return
        self._base.mkdir(parents=True, exist_ok=True)
        lock_file = open(self._base / _LOCK_FILE, "ab")  # noqa: SIM115 (held until close())
        try:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.close()
            raise StoreLockedError(
                f"{self._base}: another store has this directory open; the JSONL backend allows one "
                "process (and one store object) per directory, use the sql or bus backend for more"
            ) from None
        self._lock_file = lock_file

    async def close(self) -> None:
        """Release the directory and forget the cached threads."""
        self._logs.clear()
        self._strays.clear()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _thread_lock(self, thread_id: str) -> asyncio.Lock:
        lock = self._locks.get(thread_id)
        if lock is None:
            lock = self._locks[thread_id] = asyncio.Lock()
        return lock

    async def _blocking(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(None, function, *args)

    async def _load(self, thread_id: str) -> ThreadLog:
        # Callers hold the thread's lock: a load racing a write could cache a view without it.
        log = self._logs.get(thread_id)
        if log is not None:
            self._logs.move_to_end(thread_id)
            return log
        files = ThreadFiles(self._base, thread_id)
        loaded = await self._blocking(jsonl_files.load_thread, files)
        log = ThreadLog(last_seq=loaded.counter)
        for record in loaded.records:
            log.append(LoggedEvent.of(record))
        self._logs[thread_id] = log
        self._strays[thread_id] = loaded.strays
        while len(self._logs) > self._max_cached:
            evicted, _ = self._logs.popitem(last=False)
            self._strays.pop(evicted, None)
        return log

    async def _read_log(self, thread_id: str) -> ThreadLog:
        self._check_id_argument("thread_id", thread_id)
        self._claim_directory()
        log = self._logs.get(thread_id)
        if log is not None:
            self._logs.move_to_end(thread_id)
            return log
        async with self._thread_lock(thread_id):
            return await run_to_completion(self._load(thread_id))

    def _check_paths(self, events: Sequence[PreparedEvent], single: bool = False) -> None:
        for index, event in enumerate(events):
            for field, value in (("thread_id", event.thread_id), ("run_id", event.run_id)):
                problem = jsonl_files.unsafe_id_problem(value)
                if problem is not None:
                    raise InvalidEventError(field, problem, index=None if single else index)

    async def put_batch(self, events: Sequence[Mapping[str, Any]]) -> list[Record]:
        """Write many events all or none; return their records in input order."""
        prepared = prepare_events(events, max_trace_content=self._max_trace_content)
        self._check_paths(prepared)
        if not prepared:
            return []
        prepared = await offload(prepared, self._blobs, over=self._offload_over)
        self._claim_directory()
        async with AsyncExitStack() as held:
            # One order for every writer, so batches spanning threads cannot deadlock.
            for thread_id in sorted({event.thread_id for event in prepared}):
                await held.enter_async_context(self._thread_lock(thread_id))
            records = await run_to_completion(self._append(prepared))
        self._doorbells.ring({event.thread_id for event in prepared})
        return records

    async def _append(self, prepared: Sequence[PreparedEvent]) -> list[Record]:
        logs = {event.thread_id: await self._load(event.thread_id) for event in prepared}
        next_seq = {thread_id: log.last_seq for thread_id, log in logs.items()}
        entries: list[tuple[ThreadLog, LoggedEvent]] = []
        lines: dict[tuple[str, str], list[bytes]] = {}
        records = []
        for event in prepared:
            next_seq[event.thread_id] += 1
            record = make_record(event, next_seq[event.thread_id])
            line = to_json(record)
            lines.setdefault((event.thread_id, event.run_id), []).append(line)
            entries.append((logs[event.thread_id], LoggedEvent.of(record, line)))
            records.append(record)
        appends = {
            ThreadFiles(self._base, thread_id).run_file(run_id): run_lines
            for (thread_id, run_id), run_lines in lines.items()
        }
        await self._blocking(jsonl_files.append_lines, appends, self._fsync)
        # The logs change only after the files have the lines, so a failed append leaves both as they were.
        for log, entry in entries:
            log.append(entry)
        return records

    async def _put_if_absent(self, event: Mapping[str, Any]) -> tuple[Record, bool]:
        prepared = prepare_event(event, max_trace_content=self._max_trace_content)
        self._check_paths([prepared], single=True)
        (prepared,) = await offload([prepared], self._blobs, over=self._offload_over)
        self._claim_directory()
        async with self._thread_lock(prepared.thread_id):
            record, created = await run_to_completion(self._append_if_absent(prepared))
        if created:
            self._doorbells.ring((prepared.thread_id,))
        return record, created

    async def _append_if_absent(self, prepared: PreparedEvent) -> tuple[Record, bool]:
        log = await self._load(prepared.thread_id)
        existing = log.first_of_type(prepared.run_id, prepared.event_type)
        if existing is not None:
            return existing.record(), False
        (record,) = await self._append([prepared])
        return record, True

    async def _delete_thread(self, thread_id: str) -> int:
        self._check_id_argument("thread_id", thread_id)
        self._claim_directory()
        async with self._thread_lock(thread_id):
            removed = await run_to_completion(self._remove_thread(thread_id))
        self._doorbells.ring((thread_id,), deleted=True)
        return removed

    async def _remove_thread(self, thread_id: str) -> int:
        log = await self._load(thread_id)
        await self._blocking(jsonl_files.remove_thread, ThreadFiles(self._base, thread_id))
        del self._logs[thread_id]
        self._strays.pop(thread_id, None)
        return len(log.events)

    async def _delete_run(self, thread_id: str, run_id: str) -> int:
        self._check_id_argument("thread_id", thread_id)
        self._check_id_argument("run_id", run_id)
        self._claim_directory()
        async with self._thread_lock(thread_id):
            return await run_to_completion(self._remove_run(thread_id, run_id))

    async def _remove_run(self, thread_id: str, run_id: str) -> int:
        log = await self._load(thread_id)
        files = ThreadFiles(self._base, thread_id)
        if run_id not in log.runs and not files.run_file(run_id).exists():
            return 0
        strays = self._strays.get(thread_id, {}).pop(run_id, set())
        # The counter goes to disk before the run's file goes away: its seqs must never be reused,
        # even if the deleted run held the newest ones and the store is reopened.
        await self._blocking(jsonl_files.write_counter, files, log.last_seq, self._fsync)
        await self._blocking(jsonl_files.remove_run, files, run_id, strays, self._fsync)
        return log.remove_run(run_id)

    async def _expire(self, thread_id: str, seqs: list[int]) -> int:
        self._check_id_argument("thread_id", thread_id)
        self._claim_directory()
        async with self._thread_lock(thread_id):
            return await run_to_completion(self._remove_seqs(thread_id, seqs))

    async def _remove_seqs(self, thread_id: str, seqs: list[int]) -> int:
        log = await self._load(thread_id)
        gone = set(seqs)
        runs = {event.run_id for event in log.events if event.seq in gone}
        if not runs:
            return 0
        files = ThreadFiles(self._base, thread_id)
        strays = self._strays.get(thread_id, {})
        paths = {files.run_file(run_id) for run_id in runs} | {
            path for run_id in runs for path in strays.get(run_id, ())
        }
        # As for a run's delete: the counter is on disk before any record goes, so no seq is reused.
        await self._blocking(jsonl_files.write_counter, files, log.last_seq, self._fsync)
        await self._blocking(jsonl_files.remove_seqs, files, sorted(paths), gone, self._fsync)
        return log.remove_seqs(gone)

    async def _set_retention(self, thread_id: str, policy: dict[str, Any] | None) -> None:
        self._check_id_argument("thread_id", thread_id)
        self._claim_directory()
        files = ThreadFiles(self._base, thread_id)
        async with self._thread_lock(thread_id):
            await self._blocking(jsonl_files.write_retention, files, policy, self._fsync)

    async def _get_retention(self, thread_id: str) -> dict[str, Any] | None:
        self._check_id_argument("thread_id", thread_id)
        self._claim_directory()
        policy: dict[str, Any] | None = await self._blocking(
            jsonl_files.read_retention, ThreadFiles(self._base, thread_id)
        )
        return policy

    async def _thread_ids(self, after: str | None, limit: int) -> list[str]:
        self._claim_directory()
        found = await self._blocking(jsonl_files.thread_ids, self._base)
        return [thread for thread in found if after is None or thread > after][:limit]

    def _blob_store(self) -> BlobStore | None:
        return self._blobs

    @staticmethod
    def _check_id_argument(argument: str, value: str) -> None:
        problem = jsonl_files.unsafe_id_problem(value) if isinstance(value, str) else "must be a str"
        if problem is not None:
            raise InvalidQueryError(argument, problem)
