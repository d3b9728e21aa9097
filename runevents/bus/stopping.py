"""A consume loop that stops within its stop timeout, wherever it is: the projector's and the usage's.

aiokafka's getmany() does not hold to its timeout while the group rebalances (it waits for the new
assignment, which a broker can keep back for its rebalance timeout and more: seen for 60 s and longer),
and consumer.stop() sees a rebalance through before it leaves the group. So everything the loop awaits
is raced against the stop: a fetch ends at once, the batch in hand gets half the stop timeout (and a
quarter more to roll back), and closing the clients and the pool gets the rest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from runevents.retrying import CANCEL_GRACE_S, Stopped, unless_stopped

# How long a stop may take: the batch in hand gets half of it (and a quarter more to roll back), then
# leaving the group and closing the pool the rest.
STOP_TIMEOUT_S: Final = 15.0
# What closing gets even past the stop timeout: an idle pool or a stopped client needs only a moment.
CLOSE_AT_LEAST_S: Final = 0.2

Batch = dict[TopicPartition, list[ConsumerRecord]]
Work = Coroutine[Any, Any, None]


def _nothing_due() -> Work | None:
    return None


class StoppableLoop:
    """One run of a consumer's loop: start, fetch and apply batches, then close within the stop timeout."""

    def __init__(self, timeout_s: float, log: logging.Logger, *, max_records: int) -> None:
        self.timeout_s = timeout_s
        # Set once the loop is told to stop, or leaves for any reason (cancellation included): every
        # retry loop of the consumer ends on it (the rebalance listener's too, in the client's own task).
        self.halt = asyncio.Event()
        self._log = log
        self._max_records = max_records
        self._stopped_at: float | None = None
        # `halt` as a future, which what the loop awaits is raced against (while it runs).
        self._halted: asyncio.Future[Any] | None = None

    async def run(
        self,
        stop: asyncio.Event | None,
        start: Callable[[], Coroutine[Any, Any, AIOKafkaConsumer]],
        apply: Callable[[Batch], Work],
        close: Callable[[float], Work],
        *,
        chores: Callable[[], Work | None] = _nothing_due,
    ) -> None:
        """`start` the consumer, then `apply` each batch it fetches and what `chores` has due until `stop`
        is set (or the task is cancelled); then `close` it by the stop timeout's deadline."""
        halt = self.halt
        relay = asyncio.ensure_future((stop or asyncio.Event()).wait())
        relay.add_done_callback(lambda _: self._begin_stop())
        # A stop is seen at once, and nothing awaited can hold it up for longer than the stop timeout.
        self._halted = asyncio.ensure_future(halt.wait())
        try:
            try:
                consumer = await unless_stopped(start(), halt)
            except Stopped:
                return  # told to stop while starting: nothing was applied
            while not halt.is_set():
                batch = await self._fetch(consumer)
                if batch and not halt.is_set():
                    await self._finish_in_time(apply(batch))
                due = chores()
                if due is not None:
                    await self._finish_in_time(due)
        finally:
            self._begin_stop()
            relay.cancel()
            self._halted.cancel()
            # What did start (a producer, say) is not left open.
            await close(time.monotonic() + self._stop_left(1.0))

    def _begin_stop(self) -> None:
        """Set `halt`, and start the stop timeout's clock (once)."""
        if self._stopped_at is None:
            self._stopped_at = time.monotonic()
        self.halt.set()

    def _stop_left(self, share: float) -> float:
        """Seconds until `share` of the stop timeout has passed since the stop began (all of it, before)."""
        if self._stopped_at is None:
            return share * self.timeout_s
        return max(self._stopped_at + share * self.timeout_s - time.monotonic(), 0.0)

    async def _fetch(self, consumer: AIOKafkaConsumer) -> Batch:
        """The next fetched batch (maybe empty), or nothing once halted."""
        assert self._halted is not None
        # getmany's timeout does not hold while the group rebalances: it waits for the new assignment.
        fetching = asyncio.ensure_future(consumer.getmany(timeout_ms=100, max_records=self._max_records))
        try:
            await asyncio.wait((fetching, self._halted), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not fetching.done():
                # Cancelled where it waits: no record is taken from the client's buffer and dropped.
                fetching.cancel()
                await asyncio.wait((fetching,), timeout=CANCEL_GRACE_S)
        if fetching.cancelled() or not fetching.done():
            return {}
        batch: Batch = fetching.result()
        return batch

    async def _finish_in_time(self, work: Work) -> None:
        """Await `work` (the batch in hand); once halted, at most half the stop timeout, then cancel it."""
        assert self._halted is not None
        applying = asyncio.ensure_future(work)
        try:
            await asyncio.wait((applying, self._halted), return_when=asyncio.FIRST_COMPLETED)
            if not applying.done():
                await asyncio.wait((applying,), timeout=self._stop_left(0.5))
        finally:
            if not applying.done():
                # Safe: the batch's offsets move in its own transaction, so none of it is stored, and
                # whoever owns its partitions next reads it again (a second copy would be skipped).
                applying.cancel()
                stopping = self._stopped_at is not None
                # A rollback waits for a database that does not answer: not past three quarters.
                await asyncio.wait((applying,), timeout=self._stop_left(0.75) if stopping else CANCEL_GRACE_S)
                if stopping:
                    self._log.warning("the batch in hand did not commit in time after the stop: rolled back")
        if applying.done() and not applying.cancelled():
            applying.result()


async def leave_group(consumer: AIOKafkaConsumer) -> None:
    """Stop `consumer` (leaving its group); if this is given up on, still close its connections."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        # stop() leaves the group before it closes the client: given up on mid-rebalance, the client's
        # connections would stay open until garbage collection, on a loop that may be gone by then.
        await asyncio.shield(consumer._client.close())
        raise


async def close_together(
    steps: dict[str, Work], deadline: float, *, timeout_s: float, log: logging.Logger
) -> None:
    """Run the closing `steps` (each named for what it does) together; give up on those late at `deadline`."""
    closing = {asyncio.ensure_future(step): doing for doing, step in steps.items()}
    try:
        left = max(deadline - time.monotonic(), CLOSE_AT_LEAST_S)
        done, late = await asyncio.wait(closing, timeout=left)
    finally:
        for task in closing:
            task.cancel()
    if late:
        await asyncio.wait(late, timeout=CLOSE_AT_LEAST_S)  # to unwind; not waited for past that
        # Given up: the group moves the consumer's partitions once its session expires, and the
        # database ends its connections (and rolls back what they held) when the process exits.
        log.warning(
            "gave up %s: not done within the stop timeout (%g s)",
            " and ".join(sorted(closing[task] for task in late)),
            timeout_s,
        )
    for task in done:
        task.result()
