"""SharedReads: the reads of subscriptions woken together go out once; a later read is a new query."""

from __future__ import annotations

import asyncio

import pytest

from runevents.store.subscriptions import SharedReads


class Source:
    """A fetch that counts its calls and answers with the value it holds when the query goes out."""

    def __init__(self) -> None:
        self.value = 0
        self.calls = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.asked = asyncio.Event()

    async def fetch(self) -> int:
        self.calls += 1
        self.asked.set()
        seen = self.value
        await self.gate.wait()
        return seen


async def test_reads_asked_in_one_turn_of_the_loop_share_one_query() -> None:
    reads: SharedReads[str, int] = SharedReads()
    source = Source()
    assert await asyncio.gather(*(reads.read("t1", source.fetch) for _ in range(10))) == [0] * 10
    assert source.calls == 1


async def test_other_keys_are_other_queries() -> None:
    reads: SharedReads[str, int] = SharedReads()
    source = Source()
    await asyncio.gather(reads.read("t1", source.fetch), reads.read("t2", source.fetch))
    assert source.calls == 2


async def test_a_read_asked_after_the_query_went_out_is_a_new_query_that_sees_later_writes() -> None:
    reads: SharedReads[str, int] = SharedReads()
    source = Source()
    source.gate.clear()
    first = asyncio.ensure_future(reads.read("t1", source.fetch))
    await source.asked.wait()  # the first query is out, waiting on the gate
    source.value = 1  # a commit after the first query went out
    second = asyncio.ensure_future(reads.read("t1", source.fetch))
    await asyncio.sleep(0.01)
    source.gate.set()
    assert (await first, await second) == (0, 1)
    assert source.calls == 2


async def test_a_caller_that_stops_does_not_cancel_the_read_of_the_others() -> None:
    reads: SharedReads[str, int] = SharedReads()
    source = Source()
    source.gate.clear()
    leaving = asyncio.ensure_future(reads.read("t1", source.fetch))
    staying = asyncio.ensure_future(reads.read("t1", source.fetch))
    await asyncio.sleep(0.01)
    leaving.cancel()
    source.gate.set()
    assert await staying == 0
    with pytest.raises(asyncio.CancelledError):
        await leaving


async def test_a_failed_read_fails_every_caller_of_it() -> None:
    reads: SharedReads[str, int] = SharedReads()

    async def failing() -> int:
        raise OSError("the database went away")

    results = await asyncio.gather(*(reads.read("t1", failing) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(result, OSError) for result in results)
