"""A runevents store as deer-flow's callers use it: scoped to deer-flow's current user, and with its
DB store's content markers when asked."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any

from runevents.deerflow.users import AUTO, UserArgument, Users
from runevents.events import Content, Record
from runevents.lifecycle.blobs import BlobStore
from runevents.lifecycle.offload import BlobOpener
from runevents.lifecycle.retention import Summary
from runevents.store import RunEventStore
from runevents.store.subscriptions import Doorbell

Prepare = Callable[[], Awaitable[None]]


def with_markers(record: Record) -> Record:
    """`record` with deer-flow's DB markers: `content_is_json` for content that is not a str, and
    `content_is_dict` (its older marker) for a dict."""
    content = record["content"]
    if isinstance(content, str):
        return record
    markers = {"content_is_json": True, **({"content_is_dict": True} if isinstance(content, dict) else {})}
    return {**record, "metadata": {**record["metadata"], **markers}}


class DeerFlowRunEventStore(RunEventStore):
    """A store in front of another: reads default to deer-flow's current user, writes record it.

    With `content_markers`, records come back with deer-flow's DB store's markers in `metadata`; they
    are added on the way out, never stored, so other readers (the topic, `runevents serve`) see the
    plain record. Everything else is the wrapped store's, subscriptions included.
    """

    def __init__(
        self,
        store: RunEventStore,
        *,
        users: Users | None = None,
        content_markers: bool = False,
        prepare: Prepare | None = None,
    ) -> None:
        self.store = store
        self._users = Users.find() if users is None else users
        self._mark: Callable[[Record], Record] = with_markers if content_markers else _unmarked
        self._prepare = prepare
        self._prepared: asyncio.Lock | None = None

    async def _ready(self) -> None:
        """Run `prepare` (a migration, a check) once, before the first read or write."""
        if self._prepare is None:
            return
        if self._prepared is None:
            self._prepared = asyncio.Lock()
        async with self._prepared:
            if self._prepare is not None:
                await self._prepare()
                self._prepare = None

    # Writes: the current user is recorded unless the event names one.

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
        user_id: UserArgument = AUTO,
    ) -> Record:
        """Write one event (recording the current user), assign its seq and return the complete record."""
        return await super().put(
            thread_id=thread_id,
            run_id=run_id,
            event_type=event_type,
            category=category,
            content=content,
            metadata=metadata,
            created_at=created_at,
            user_id=self._writer(user_id),
        )

    async def put_batch(self, events: Sequence[Mapping[str, Any]]) -> list[Record]:
        """Write many events all or none (each recording the current user unless it names one)."""
        current = self._users.current()
        stamped = [
            event if not isinstance(event, Mapping) or "user_id" in event else {**event, "user_id": current}
            for event in events
        ]
        await self._ready()
        return [self._mark(record) for record in await self.store.put_batch(stamped)]

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
        user_id: UserArgument = AUTO,
    ) -> tuple[Record, bool]:
        """Write an event unless the run already has one of this type; return (record, created)."""
        return await super().put_if_absent(
            thread_id=thread_id,
            run_id=run_id,
            event_type=event_type,
            category=category,
            content=content,
            metadata=metadata,
            created_at=created_at,
            user_id=self._writer(user_id),
        )

    def _writer(self, user_id: UserArgument) -> str | None:
        if user_id is AUTO:
            return self._users.current()
        return self._users.resolve(user_id, "put")

    async def _put_if_absent(self, event: Mapping[str, Any]) -> tuple[Record, bool]:
        await self._ready()
        record, created = await self.store.put_if_absent(**event)
        return self._mark(record), created

    # Reads: AUTO is the current user (refused when none is set, as deer-flow's DB store does).

    async def list_messages(
        self,
        thread_id: str,
        *,
        limit: int = 50,
        before_seq: int | None = None,
        after_seq: int | None = None,
        user_id: UserArgument = AUTO,
    ) -> list[Record]:
        """Return one page of a thread's message records, ascending by seq."""
        user = self._users.resolve(user_id, "list_messages")
        return await super().list_messages(
            thread_id, limit=limit, before_seq=before_seq, after_seq=after_seq, user_id=user
        )

    async def list_events(
        self,
        thread_id: str,
        run_id: str,
        *,
        event_types: Collection[str] | None = None,
        task_id: str | None = None,
        after_seq: int | None = None,
        limit: int = 500,
        user_id: UserArgument = AUTO,
    ) -> list[Record]:
        """Return a run's records of every category, filtered, then the first `limit` after `after_seq`."""
        user = self._users.resolve(user_id, "list_events")
        return await super().list_events(
            thread_id,
            run_id,
            event_types=event_types,
            task_id=task_id,
            after_seq=after_seq,
            limit=limit,
            user_id=user,
        )

    async def list_messages_by_run(
        self,
        thread_id: str,
        run_id: str,
        *,
        limit: int = 50,
        before_seq: int | None = None,
        after_seq: int | None = None,
        user_id: UserArgument = AUTO,
    ) -> list[Record]:
        """Return one page of a run's message records, ascending by seq."""
        user = self._users.resolve(user_id, "list_messages_by_run")
        return await super().list_messages_by_run(
            thread_id, run_id, limit=limit, before_seq=before_seq, after_seq=after_seq, user_id=user
        )

    async def get_last_visible_ai_seq_by_run(
        self, thread_id: str, run_ids: Collection[str], *, user_id: UserArgument = AUTO
    ) -> dict[str, int]:
        """Return the seq of each run's last AI response not written by middleware."""
        if isinstance(run_ids, set | frozenset | list | tuple) and not run_ids:
            return {}  # as deer-flow: nothing asked, so no user resolved (or refused)
        user = self._users.resolve(user_id, "get_last_visible_ai_seq_by_run")
        return await super().get_last_visible_ai_seq_by_run(thread_id, run_ids, user_id=user)

    async def get_message_seqs(
        self, thread_id: str, identities: Collection[str], *, user_id: UserArgument = AUTO
    ) -> dict[str, int]:
        """Return the seq of the earliest message record whose content `id` is each wanted id."""
        user = self._users.resolve(user_id, "get_message_seqs")
        return await super().get_message_seqs(thread_id, identities, user_id=user)

    async def count_messages(self, thread_id: str, *, user_id: UserArgument = AUTO) -> int:
        """Return how many message records a thread holds (the current user's, by default)."""
        user = self._users.resolve(user_id, "count_messages")
        return await super().count_messages(thread_id, user_id=user)

    def subscribe(
        self,
        thread_id: str,
        *,
        after_seq: int = 0,
        run_id: str | None = None,
        categories: Collection[str] | None = None,
        user_id: UserArgument = AUTO,
    ) -> AsyncGenerator[Record, None]:
        """Follow a thread live (the current user's records, by default); see `RunEventStore.subscribe`."""
        user = self._users.resolve(user_id, "subscribe")
        return super().subscribe(
            thread_id, after_seq=after_seq, run_id=run_id, categories=categories, user_id=user
        )

    # Deletes: runevents deletes threads and runs whole. A user-scoped delete (deer-flow's default)
    # deletes only what that user can see: the whole thread (run) if it holds any of their records,
    # nothing otherwise. deer-flow's threads belong to one user, so this is deer-flow's result.

    async def delete_by_thread(
        self, thread_id: str, *, user_id: UserArgument = AUTO, erase: bool = False
    ) -> int:
        """Delete a thread's records and reset its seq (`erase`: as runevents' store); how many went."""
        user = self._users.resolve(user_id, "delete_by_thread")
        if user is not None and not await self._visible(thread_id, None, user):
            return 0
        return await super().delete_by_thread(thread_id, erase=erase)

    async def delete_by_run(self, thread_id: str, run_id: str, *, user_id: UserArgument = AUTO) -> int:
        """Delete a run's records (the thread's seq goes on); return how many were removed."""
        user = self._users.resolve(user_id, "delete_by_run")
        if user is not None and not await self._visible(thread_id, run_id, user):
            return 0
        return await super().delete_by_run(thread_id, run_id)

    async def _visible(self, thread_id: str, run_id: str | None, user: str) -> bool:
        """Whether `user` has any record in the thread (or the run)."""
        found = await self._records_after(thread_id, 0, 1, run_id, None, user)
        return bool(found)

    # The backend's side: the wrapped store's, records marked on the way out.

    async def _list_messages(
        self, thread_id: str, limit: int, before_seq: int | None, after_seq: int | None, user_id: str | None
    ) -> list[Record]:
        await self._ready()
        found = await self.store._list_messages(thread_id, limit, before_seq, after_seq, user_id)
        return [self._mark(record) for record in found]

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
        await self._ready()
        found = await self.store._list_events(
            thread_id, run_id, event_types, task_id, after_seq, limit, user_id
        )
        return [self._mark(record) for record in found]

    async def _list_messages_by_run(
        self,
        thread_id: str,
        run_id: str,
        limit: int,
        before_seq: int | None,
        after_seq: int | None,
        user_id: str | None,
    ) -> list[Record]:
        await self._ready()
        found = await self.store._list_messages_by_run(
            thread_id, run_id, limit, before_seq, after_seq, user_id
        )
        return [self._mark(record) for record in found]

    async def _last_visible_ai_seqs(
        self, thread_id: str, run_ids: Collection[str], user_id: str | None
    ) -> dict[str, int]:
        await self._ready()
        return await self.store._last_visible_ai_seqs(thread_id, run_ids, user_id)

    async def _message_seqs(
        self, thread_id: str, identities: Collection[str], user_id: str | None
    ) -> dict[str, int]:
        await self._ready()
        return await self.store._message_seqs(thread_id, identities, user_id)

    async def _count_messages(self, thread_id: str, user_id: str | None) -> int:
        await self._ready()
        return await self.store._count_messages(thread_id, user_id)

    def _watch(self, thread_id: str) -> contextlib.AbstractAsyncContextManager[Doorbell]:
        return self.store._watch(thread_id)

    def _subscription_poll_s(self) -> float | None:
        return self.store._subscription_poll_s()

    async def _thread_last_seq(self, thread_id: str) -> int | None:
        return await self.store._thread_last_seq(thread_id)

    async def _records_after(
        self,
        thread_id: str,
        after_seq: int,
        limit: int,
        run_id: str | None,
        categories: Collection[str] | None,
        user_id: str | None,
    ) -> list[Record]:
        await self._ready()
        found = await self.store._records_after(thread_id, after_seq, limit, run_id, categories, user_id)
        return [self._mark(record) for record in found]

    async def _delete_thread(self, thread_id: str) -> int:
        await self._ready()
        return await self.store._delete_thread(thread_id)

    async def _delete_run(self, thread_id: str, run_id: str) -> int:
        await self._ready()
        return await self.store._delete_run(thread_id, run_id)

    async def _expire(self, thread_id: str, seqs: list[int]) -> int:
        await self._ready()
        return await self.store._expire(thread_id, seqs)

    async def _summaries(self, thread_id: str) -> list[Summary]:
        await self._ready()
        return await self.store._summaries(thread_id)

    async def _user_threads(self, user_id: str) -> Collection[str]:
        await self._ready()
        return await self.store._user_threads(user_id)

    def _check_erasable(self) -> None:
        self.store._check_erasable()

    def _blob_opener(self) -> BlobOpener | None:
        return self.store._blob_opener()

    async def _erase(self, thread_ids: list[str]) -> None:
        await self.store._erase(thread_ids)

    async def _blob_references(self, thread_id: str) -> set[str]:
        await self._ready()
        return await self.store._blob_references(thread_id)

    async def _event_by_id(self, thread_id: str, event_id: str) -> Record | None:
        await self._ready()
        return await self.store._event_by_id(thread_id, event_id)

    def _blob_store(self) -> BlobStore | None:
        return self.store._blob_store()

    async def caught_up(self) -> None:
        """Return once every write acknowledged before the call can be read (the store's own wait)."""
        await self.store.caught_up()

    async def _set_retention(self, thread_id: str, policy: dict[str, Any] | None) -> None:
        await self._ready()
        await self.store._set_retention(thread_id, policy)

    async def _get_retention(self, thread_id: str) -> dict[str, Any] | None:
        await self._ready()
        return await self.store._get_retention(thread_id)

    async def _thread_ids(self, after: str | None, limit: int) -> list[str]:
        await self._ready()
        return await self.store._thread_ids(after, limit)

    async def close(self) -> None:
        """Close the wrapped store."""
        await self.store.close()


def _unmarked(record: Record) -> Record:
    return record
