"""Critical sections that a cancelled caller cannot cut short."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


async def run_to_completion(section: Coroutine[Any, Any, T]) -> T:
    """Run `section` to its end even if the caller is cancelled meanwhile, then pass the cancel on.

    A write that was cancelled while its file I/O ran in a thread would otherwise release its lock
    with the I/O still going, and the store's view of the file would lose the write.
    """
    task = asyncio.ensure_future(section)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():
                raise
            cancelled = True
            continue
        break
    if cancelled:
        raise asyncio.CancelledError
    return result
