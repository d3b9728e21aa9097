"""Retrying until stopped: back-off waits a stop request cuts short, and one-line retry warnings.

Every loop that retries a database (the projector's rebalance listener and batch recovery, the
writers' projection watcher) waits through here, so a stop request or a cancellation ends it at
once instead of after its sleep, and an attempt that hangs (a lock, a connect that never answers)
is cancelled when a stop is requested. Warnings carry the reason in one line, never the failed
SQL statement and its parameters, with secrets masked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Final, TypeVar

from runevents.masking import mask_secrets
from runevents.tables.failures import reason_of

# Backing off while the database does not answer.
RETRY_FIRST_S: Final = 0.1
RETRY_MAX_S: Final = 5.0
# How long a cancelled attempt may take to wind down (a rollback, a connection closed) before it is left.
CANCEL_GRACE_S: Final = 2.0

T = TypeVar("T")


class Stopped(Exception):
    """A stop was requested before the awaited work finished; the work was cancelled."""


def one_line(error: BaseException, *secrets: str | None) -> str:
    """What went wrong, in one line, with every secret masked (never a statement or its parameters)."""
    return mask_secrets(reason_of(error), *secrets)


async def pause(stop: asyncio.Event, seconds: float) -> bool:
    """Wait `seconds`, or less if `stop` is set meanwhile; whether `stop` is set."""
    if not stop.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await stop.wait()
    return stop.is_set()


async def unless_stopped(work: Coroutine[Any, Any, T], stop: asyncio.Event) -> T:
    """`work`'s result; if `stop` is set first, `work` is cancelled and `Stopped` raised."""
    if stop.is_set():
        work.close()
        raise Stopped
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((task, stopping), return_when=asyncio.FIRST_COMPLETED)
    finally:
        # Also when this waiter is cancelled itself: the work must not go on behind its back.
        stopping.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait((task,), timeout=CANCEL_GRACE_S)
    if task.done() and not task.cancelled():
        return task.result()
    raise Stopped


async def retry_until_stopped(
    attempt: Callable[[], Coroutine[Any, Any, T]],
    stop: asyncio.Event,
    *,
    doing: str,
    errors: tuple[type[BaseException], ...],
    log: logging.Logger,
    secrets: tuple[str | None, ...] = (),
) -> T | None:
    """Run `attempt` until it succeeds (its result) or `stop` is set (None), backing off between tries.

    Each failure (one of `errors`) is one warning line: `doing` failed (the reason); trying again in N s.
    """
    delay = RETRY_FIRST_S
    while not stop.is_set():
        try:
            return await unless_stopped(attempt(), stop)
        except Stopped:
            return None
        except errors as exc:
            log.warning("%s failed (%s); trying again in %g s", doing, one_line(exc, *secrets), delay)
        if await pause(stop, delay):
            return None
        delay = min(delay * 2, RETRY_MAX_S)
    return None
