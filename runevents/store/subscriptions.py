"""Subscriptions: a thread's stored records after a seq, then each new one, with no gap and no duplicate.

Every backend follows a thread the same way (`follow`): it registers a doorbell for the thread *before*
it reads, then reads pages after the last seq it yielded, and waits for the doorbell only when a read
comes back short. A writer rings after its records are readable, so a record committed at any moment
is either in a read that comes after the ring, or rings a doorbell that is already there: the seam
between catch-up and live cannot lose one, and reading strictly after the last seq cannot repeat one.
Backends differ only in who rings: the writing store itself (memory, jsonl, sql on SQLite), or a
process-wide LISTEN on the database (sql on PostgreSQL, the bus's projector).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Collection, Iterable, Iterator
from typing import Final, Generic, TypeVar

from runevents.errors import ThreadDeletedError
from runevents.events import Record

# Records a subscription reads at a time while catching up (and after each wake).
PAGE: Final = 500


class Doorbell:
    """One subscription's signal: its thread may have new records, or was deleted."""

    __slots__ = ("_rung", "deleted", "resync")

    def __init__(self) -> None:
        self._rung = asyncio.Event()
        self.deleted = False
        # Notifications may have been missed (the listener reconnected): check the thread still exists.
        self.resync = False

    def ring(self, *, deleted: bool = False, resync: bool = False) -> None:
        """Wake the subscription (never blocks: a slow subscriber only reads more when it gets to it)."""
        self.deleted = self.deleted or deleted
        self.resync = self.resync or resync
        self._rung.set()

    def clear(self) -> None:
        """Forget rings so far: the read that follows sees everything they announced."""
        self._rung.clear()

    async def wait(self, poll_s: float | None = None) -> None:
        """Until the next ring, or `poll_s` seconds for backends that must also look by themselves."""
        try:
            await asyncio.wait_for(self._rung.wait(), poll_s)
        except TimeoutError:
            # Looking unasked is looking without notifications: check the thread as after a reconnect.
            self.resync = True


class Doorbells:
    """The doorbells of one process's subscriptions, by thread: what a writer or listener rings."""

    def __init__(self) -> None:
        self._by_thread: dict[str, set[Doorbell]] = {}

    @contextlib.contextmanager
    def watch(self, thread_id: str) -> Iterator[Doorbell]:
        """A doorbell rung for `thread_id` while the block runs."""
        bell = Doorbell()
        self._by_thread.setdefault(thread_id, set()).add(bell)
        try:
            yield bell
        finally:
            bells = self._by_thread.get(thread_id)
            if bells is not None:
                bells.discard(bell)
                if not bells:
                    del self._by_thread[thread_id]

    def ring(self, thread_ids: Iterable[str], *, deleted: bool = False, resync: bool = False) -> None:
        """Ring every subscription of these threads."""
        for thread_id in thread_ids:
            for bell in self._by_thread.get(thread_id, ()):
                bell.ring(deleted=deleted, resync=resync)

    def ring_all(self, *, resync: bool = False) -> None:
        """Ring every subscription (after notifications may have been lost)."""
        for bells in self._by_thread.values():
            for bell in bells:
                bell.ring(resync=resync)

    def __bool__(self) -> bool:
        return bool(self._by_thread)


Key = TypeVar("Key")
Result = TypeVar("Result")


class SharedReads(Generic[Key, Result]):
    """Reads asked for at once with the same arguments, sent once.

    The subscriptions a notification wakes all read the same thread after the same seq: one query for
    all of them instead of one each. A read joins another only before that one's query goes out, and
    every joiner has cleared its doorbell before it joins, so the query sees every commit any of them
    was woken for.
    """

    def __init__(self) -> None:
        self._forming: dict[Key, asyncio.Task[Result]] = {}

    async def read(self, key: Key, fetch: Callable[[], Awaitable[Result]]) -> Result:
        """`fetch()`'s result, shared with the callers of the same `key` in this turn of the loop."""
        task = self._forming.get(key)
        if task is None:
            task = asyncio.ensure_future(self._after_joiners(key, fetch))
            task.add_done_callback(_retrieved)
            self._forming[key] = task
        # Shielded: a subscription that stops does not cancel the read of those still waiting on it.
        return await asyncio.shield(task)

    async def _after_joiners(self, key: Key, fetch: Callable[[], Awaitable[Result]]) -> Result:
        # One turn of the loop for the subscriptions woken with the first to join it.
        await asyncio.sleep(0)
        del self._forming[key]
        return await fetch()


def _retrieved(task: asyncio.Task[Result]) -> None:
    # Every caller may have stopped waiting; the failure is theirs to see, not the loop's to report.
    if not task.cancelled():
        task.exception()


# A backend's read of a thread's records after a seq: (thread, after_seq, limit, run, categories, user).
ReadAfter = Callable[[str, int, int, str | None, Collection[str] | None, str | None], Awaitable[list[Record]]]


async def follow(
    watch: contextlib.AbstractAsyncContextManager[Doorbell],
    read_after: ReadAfter,
    thread_id: str,
    after_seq: int,
    run_id: str | None,
    categories: Collection[str] | None,
    user_id: str | None,
    *,
    last_seq: Callable[[str], Awaitable[int | None]] | None = None,
    poll_s: float | None = None,
) -> AsyncGenerator[Record, None]:
    """The records of a thread after `after_seq`, then each new one; ends with `ThreadDeletedError`.

    `last_seq` (the thread's seq counter, 0 when it has none) lets a backend whose notifications can
    be lost tell a deleted thread after a resync; `poll_s` makes it look by itself that often.
    """
    last = after_seq
    async with watch as bell:
        while True:
            if bell.deleted:
                raise ThreadDeletedError(thread_id)
            if bell.resync and last_seq is not None:
                bell.resync = False
                # seq only goes back when the thread was deleted (delete_by_run never reuses one).
                counter = await last_seq(thread_id)
                if counter is not None and counter < last:
                    raise ThreadDeletedError(thread_id)
            bell.clear()
            page = await read_after(thread_id, last, PAGE, run_id, categories, user_id)
            for record in page:
                last = record["seq"]
                yield record
            if len(page) < PAGE:
                await bell.wait(poll_s)


@contextlib.asynccontextmanager
async def watching(doorbells: Doorbells, thread_id: str) -> AsyncIterator[Doorbell]:
    """`Doorbells.watch` as the async context manager `follow` takes."""
    with doorbells.watch(thread_id) as bell:
        yield bell
