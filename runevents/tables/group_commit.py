"""Group commit: concurrent writes of one store share one transaction.

One transaction per `put` caps a store at what one round trip and one commit allow; writers that
arrive while a transaction runs are flushed together in the next one. Each caller still gets its
own records or its own error: when a shared transaction fails before its commit, nothing of it was
written, and each write is tried again alone so one bad write cannot fail its neighbours.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from runevents.errors import RunEventsError

Item = TypeVar("Item")
Result = TypeVar("Result")


class CommitOutcomeUnknown(RunEventsError):
    """Raised by a flush whose commit failed: the writes may or may not have been stored."""


@dataclass(slots=True)
class _Pending(Generic[Item, Result]):
    items: Sequence[Item]
    done: asyncio.Future[list[Result]]
    taken: bool = False  # in a transaction now: its outcome is no longer the caller's to cancel


class GroupCommitter(Generic[Item, Result]):
    """Runs `flush(groups)` for whatever writes are waiting, in up to `concurrency` transactions at once."""

    def __init__(
        self,
        flush: Callable[[list[Sequence[Item]]], Awaitable[list[list[Result]]]],
        *,
        concurrency: int = 4,
        max_items: int = 2000,
        min_share: int = 200,
    ) -> None:
        self._flush = flush
        self._concurrency = concurrency
        self._max_items = max_items
        self._min_share = min_share
        self._idle = 0
        self._waiting: deque[_Pending[Item, Result]] = deque()
        self._wakeup: asyncio.Event | None = None
        self._flushers: list[asyncio.Task[None]] = []
        self._unsettled: set[asyncio.Future[list[Result]]] = set()

    async def submit(self, items: Sequence[Item]) -> list[Result]:
        """Write `items` in the next transaction and return their results."""
        if not self._flushers:
            self._start()
        assert self._wakeup is not None
        pending: _Pending[Item, Result] = _Pending(items, asyncio.get_running_loop().create_future())
        self._waiting.append(pending)
        self._unsettled.add(pending.done)
        pending.done.add_done_callback(self._unsettled.discard)
        self._wakeup.set()
        try:
            return await asyncio.shield(pending.done)
        except asyncio.CancelledError:
            if not pending.taken:
                pending.done.cancel()  # still waiting: the flushers skip it, nothing is written
                raise
        # Already in a transaction: the cancel is passed on only once that has settled, so a
        # cancelled write never lands after writes its caller made once the cancel returned.
        while not pending.done.done():
            with contextlib.suppress(BaseException):
                await asyncio.shield(pending.done)
        raise asyncio.CancelledError

    def _start(self) -> None:
        self._wakeup = asyncio.Event()
        self._flushers = [asyncio.create_task(self._run()) for _ in range(self._concurrency)]

    async def close(self) -> None:
        """Stop the flushers once the writes already submitted are done."""
        await asyncio.gather(*self._unsettled, return_exceptions=True)
        for task in self._flushers:
            task.cancel()
        for task in self._flushers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._flushers = []

    def _take(self) -> list[_Pending[Item, Result]]:
        # Leave idle flushers a share of a large backlog, so the database works on several
        # transactions while this process prepares the next; small writes stay together.
        backlog = sum(len(pending.items) for pending in self._waiting)
        share = max(self._min_share, -(-backlog // (self._idle + 1)))
        limit = min(self._max_items, share)
        taken: list[_Pending[Item, Result]] = []
        size = 0
        while self._waiting and (not taken or size + len(self._waiting[0].items) <= limit):
            pending = self._waiting.popleft()
            if not pending.done.done():  # a caller cancelled before its turn: nothing to write
                pending.taken = True
                taken.append(pending)
                size += len(pending.items)
        return taken

    async def _run(self) -> None:
        assert self._wakeup is not None
        while True:
            if not self._waiting:
                self._wakeup.clear()
                self._idle += 1
                try:
                    await self._wakeup.wait()
                finally:
                    self._idle -= 1
                continue
            taken = self._take()
            if taken:
                await self._write(taken)

    async def _write(self, taken: list[_Pending[Item, Result]]) -> None:
        try:
            results = await self._flush([pending.items for pending in taken])
        except CommitOutcomeUnknown as exc:
            for pending in taken:
                _settle_error(pending, exc)
        except Exception as exc:
            if len(taken) == 1:
                _settle_error(taken[0], exc)
                return
            for pending in taken:  # the shared transaction rolled back: try each alone
                await self._write([pending])
        else:
            for pending, result in zip(taken, results, strict=True):
                if not pending.done.done():
                    pending.done.set_result(result)


def _settle_error(pending: _Pending[Item, Result], error: BaseException) -> None:
    if not pending.done.done():
        pending.done.set_exception(error)
