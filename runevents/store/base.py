"""The contract: `RunEventStore`, the one interface every backend implements.

Over 400 lines: each public method checks its arguments and hands a backend's hook checked values,
and the pairs are kept together in the one class a backend subclasses, so that the whole contract
(reads, writes, deletes, retention, blobs, erasure) reads in one place.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import uuid
from collections.abc import AsyncGenerator, Collection, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

from runevents.errors import EventNotFoundError, InvalidEventError, InvalidQueryError
from runevents.events import MAX_INDEXED_MESSAGE_ID, Content, Record
from runevents.lifecycle.blobs import BlobStore
from runevents.lifecycle.offload import BlobOpener, full_content
from runevents.lifecycle.retention import RetentionPolicy, Summary, policy_from_document
from runevents.store.arguments import check_id, check_names, check_page, check_seqs, check_text, check_user
from runevents.store.subscriptions import Doorbell, Doorbells, follow, watching


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

    # The reads and deletes check their arguments here, once for every backend (store/arguments.py),
    # then hand them to the backend's `_` method, which may take them as they are.

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
        check_id("thread_id", thread_id)
        check_page(limit, before_seq, after_seq)
        check_user(user_id)
        return await self._list_messages(thread_id, limit, before_seq, after_seq, user_id)

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
        check_id("thread_id", thread_id)
        check_id("run_id", run_id)
        if event_types is not None:
            check_names("event_types", event_types)
        if task_id is not None:
            check_text("task_id", task_id)
        check_page(limit, None, after_seq)
        check_user(user_id)
        return await self._list_events(thread_id, run_id, event_types, task_id, after_seq, limit, user_id)

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
        check_id("thread_id", thread_id)
        check_id("run_id", run_id)
        check_page(limit, before_seq, after_seq)
        check_user(user_id)
        return await self._list_messages_by_run(thread_id, run_id, limit, before_seq, after_seq, user_id)

    async def get_last_visible_ai_seq_by_run(
        self, thread_id: str, run_ids: Collection[str], *, user_id: str | None = None
    ) -> dict[str, int]:
        """Return the seq of each run's last AI response not written by middleware."""
        check_id("thread_id", thread_id)
        check_names("run_ids", run_ids, ids=True)
        check_user(user_id)
        return await self._last_visible_ai_seqs(thread_id, run_ids, user_id)

    async def get_message_seqs(
        self, thread_id: str, identities: Collection[str], *, user_id: str | None = None
    ) -> dict[str, int]:
        """Return the seq of the earliest message record whose content `id` is each wanted id."""
        check_id("thread_id", thread_id)
        check_names("identities", identities, longest=MAX_INDEXED_MESSAGE_ID)
        check_user(user_id)
        return await self._message_seqs(thread_id, identities, user_id)

    async def count_messages(self, thread_id: str, *, user_id: str | None = None) -> int:
        """Return how many message records a thread holds."""
        check_id("thread_id", thread_id)
        check_user(user_id)
        return await self._count_messages(thread_id, user_id)

    def subscribe(
        self,
        thread_id: str,
        *,
        after_seq: int = 0,
        run_id: str | None = None,
        categories: Collection[str] | None = None,
        user_id: str | None = None,
    ) -> AsyncGenerator[Record, None]:
        """Follow a thread: its records after `after_seq` in seq order, then each new one, without end.

        Iteration ends when the caller stops it, or with `ThreadDeletedError` once the thread is deleted.
        """
        check_id("thread_id", thread_id)
        check_page(0, None, after_seq)
        if run_id is not None:
            check_id("run_id", run_id)
        if categories is not None:
            check_names("categories", categories)
        check_user(user_id)
        kept = None if categories is None else frozenset(categories)
        return follow(
            self._watch(thread_id),
            self._records_after,
            thread_id,
            after_seq,
            run_id,
            kept,
            user_id,
            last_seq=self._thread_last_seq,
            poll_s=self._subscription_poll_s(),
        )

    async def delete_by_thread(self, thread_id: str, *, erase: bool = False) -> int:
        """Delete a thread's records and reset its seq; return how many were removed.

        `erase`: first make every copy of its events this store keeps elsewhere unreadable: on the bus,
        destroy the thread's data keys, so that its records on the topic (sealed with them) can never
        be opened again, by a replay or by anyone reading the topic; then delete. A bus store that does
        not seal refuses it before deleting anything (`ErasureUnavailableError`); the local backends
        keep no other copy (their blobs go with the next retention run). See the README's "Deleting and
        erasing data" for what remains where.
        """
        check_id("thread_id", thread_id)
        if erase:
            self._check_erasable()
            # The keys first: a writer's put of the thread that reaches the log meanwhile is sealed with
            # a destroyed key (projected as erased) or a new one, and the delete, after it, removes it.
            await self._erase([thread_id])
        return await self._delete_thread(thread_id)

    async def user_thread_ids(self, user_id: str) -> list[str]:
        """The ids of the threads holding an event of `user_id` (to erase a user's data), ascending."""
        check_id("user_id", user_id)
        return sorted(await self._user_threads(user_id))

    def _blob_opener(self) -> BlobOpener | None:
        """What opens the sealed blobs this store wrote (None: it seals none)."""
        return None

    def _check_erasable(self) -> None:
        """Raise `ErasureUnavailableError` if `erase` cannot reach every copy this store keeps."""
        return None  # the local backends and the sql one keep no copy beyond their rows and blobs

    async def _erase(self, thread_ids: list[str]) -> None:
        """Make the copies of deleted threads' events kept beyond the rows unreadable."""
        return None

    async def _user_threads(self, user_id: str) -> Collection[str]:
        """`user_thread_ids` of a checked id: every thread's events looked at, unless overridden."""
        found: list[str] = []
        after: str | None = None
        while page := await self._thread_ids(after, 1000):
            found += [
                thread for thread in page if await self._records_after(thread, 0, 1, None, None, user_id)
            ]
            after = page[-1]
        return found

    async def expire_events(self, thread_id: str, seqs: Collection[int]) -> int:
        """Remove the thread's events at `seqs`, as retention does; return how many were removed.

        The thread's seq goes on (no seq is ever given again) and its counts stay exact; seqs it does
        not hold are skipped. At most 10,000 seqs a call: retention expires in bounded steps.
        """
        check_id("thread_id", thread_id)
        checked = check_seqs("seqs", seqs)
        return await self._expire(thread_id, checked) if checked else 0

    async def get_full_content(self, thread_id: str, event_id: str) -> Content:
        """An event's whole content, also when what is stored is a preview kept whole in a blob store.

        Raises `EventNotFoundError` for an event the thread does not hold, `BlobMissingError` when its
        blob is not there (this store has no blob store, or the blob was collected).
        """
        check_id("thread_id", thread_id)
        try:
            event_id = str(uuid.UUID(event_id))
        except (ValueError, TypeError, AttributeError):
            raise InvalidQueryError("event_id", f"must be a UUID, got {event_id!r}") from None
        record = await self._event_by_id(thread_id, event_id)
        if record is None:
            raise EventNotFoundError(f"thread {thread_id!r} holds no event {event_id}")
        return await full_content(record, self._blob_store(), self._blob_opener())

    def _blob_store(self) -> BlobStore | None:
        """Where this store keeps cut contents whole (None: nowhere; a cut content's rest is lost)."""
        return None

    async def set_retention(self, thread_id: str, policy: RetentionPolicy | None) -> None:
        """Give the thread a retention policy of its own; None takes it back to the default policy."""
        check_id("thread_id", thread_id)
        if policy is not None and not isinstance(policy, RetentionPolicy):
            raise InvalidQueryError(
                "policy", f"must be a RetentionPolicy or None, got {type(policy).__name__}"
            )
        await self._set_retention(thread_id, None if policy is None else policy.document())

    async def get_retention(self, thread_id: str) -> RetentionPolicy | None:
        """The thread's own retention policy, or None when the default policy applies to it."""
        check_id("thread_id", thread_id)
        document = await self._get_retention(thread_id)
        return None if document is None else policy_from_document(document)

    async def list_thread_ids(self, *, after: str | None = None, limit: int = 1000) -> list[str]:
        """The ids of the threads held (events, or a seq kept after deletes), ascending, after `after`."""
        if after is not None:
            check_id("after", after)
        check_page(limit)
        return await self._thread_ids(after, limit)

    async def retention_summaries(self, thread_id: str) -> list[Summary]:
        """What retention looks at of each of the thread's events (seq, run, category, time), in seq order."""
        check_id("thread_id", thread_id)
        return await self._summaries(thread_id)

    async def caught_up(self) -> None:
        """Return once every write acknowledged before the call can be read (at once, but on the bus)."""
        return None  # a write is readable once it returns, but where a projector applies it later

    @property
    def blobs(self) -> BlobStore | None:
        """The blob store that keeps the store's cut contents whole (None: it keeps only previews)."""
        return self._blob_store()

    async def blob_references(self, thread_id: str) -> set[str]:
        """The addresses of the blobs the thread's events keep their whole contents in."""
        check_id("thread_id", thread_id)
        return await self._blob_references(thread_id)

    async def delete_by_run(self, thread_id: str, run_id: str) -> int:
        """Delete a run's records (the thread's seq goes on); return how many were removed."""
        # A missing run id is an error, never "every run": the check comes before any backend.
        check_id("thread_id", thread_id)
        check_id("run_id", run_id)
        return await self._delete_run(thread_id, run_id)

    @abc.abstractmethod
    async def _list_messages(
        self, thread_id: str, limit: int, before_seq: int | None, after_seq: int | None, user_id: str | None
    ) -> list[Record]:
        """`list_messages` of checked arguments."""

    @abc.abstractmethod
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
        """`list_events` of checked arguments."""

    @abc.abstractmethod
    async def _list_messages_by_run(
        self,
        thread_id: str,
        run_id: str,
        limit: int,
        before_seq: int | None,
        after_seq: int | None,
        user_id: str | None,
    ) -> list[Record]:
        """`list_messages_by_run` of checked arguments."""

    @abc.abstractmethod
    async def _last_visible_ai_seqs(
        self, thread_id: str, run_ids: Collection[str], user_id: str | None
    ) -> dict[str, int]:
        """`get_last_visible_ai_seq_by_run` of checked arguments."""

    @abc.abstractmethod
    async def _message_seqs(
        self, thread_id: str, identities: Collection[str], user_id: str | None
    ) -> dict[str, int]:
        """`get_message_seqs` of checked arguments."""

    @abc.abstractmethod
    async def _count_messages(self, thread_id: str, user_id: str | None) -> int:
        """`count_messages` of checked arguments."""

    @functools.cached_property
    def _doorbells(self) -> Doorbells:
        """The doorbells this store's own writes ring: its subscriptions in this process."""
        return Doorbells()

    def _watch(self, thread_id: str) -> contextlib.AbstractAsyncContextManager[Doorbell]:
        """A doorbell rung when `thread_id` may have new records readable here (by this store's writes)."""
        return watching(self._doorbells, thread_id)

    def _subscription_poll_s(self) -> float | None:
        """How often a subscription looks by itself, for writes no doorbell tells of (None: never)."""
        return None

    async def _thread_last_seq(self, thread_id: str) -> int | None:
        """The thread's seq counter, if the backend can tell it (to notice a delete it was not told of)."""
        return None

    @abc.abstractmethod
    async def _records_after(
        self,
        thread_id: str,
        after_seq: int,
        limit: int,
        run_id: str | None,
        categories: Collection[str] | None,
        user_id: str | None,
    ) -> list[Record]:
        """The first `limit` records of a thread after `after_seq` that pass the filters (for subscribe)."""

    @abc.abstractmethod
    async def _delete_thread(self, thread_id: str) -> int:
        """`delete_by_thread` of a checked id."""

    @abc.abstractmethod
    async def _delete_run(self, thread_id: str, run_id: str) -> int:
        """`delete_by_run` of checked ids."""

    @abc.abstractmethod
    async def _expire(self, thread_id: str, seqs: list[int]) -> int:
        """`expire_events` of a checked id and checked seqs (sorted, distinct, at least one)."""

    @abc.abstractmethod
    async def _summaries(self, thread_id: str) -> list[Summary]:
        """`retention_summaries` of a checked id."""

    @abc.abstractmethod
    async def _blob_references(self, thread_id: str) -> set[str]:
        """`blob_references` of a checked id."""

    @abc.abstractmethod
    async def _thread_ids(self, after: str | None, limit: int) -> list[str]:
        """`list_thread_ids` of checked arguments."""

    @abc.abstractmethod
    async def _event_by_id(self, thread_id: str, event_id: str) -> Record | None:
        """The thread's record of `event_id` (a UUID in its canonical form), if it holds one."""

    @abc.abstractmethod
    async def _set_retention(self, thread_id: str, policy: dict[str, Any] | None) -> None:
        """`set_retention` of a checked id and the policy's JSON document (None: none of its own)."""

    @abc.abstractmethod
    async def _get_retention(self, thread_id: str) -> dict[str, Any] | None:
        """The JSON document of the thread's own retention policy, if it has one."""

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
