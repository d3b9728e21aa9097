"""The threads' data keys in PostgreSQL: one live key a thread whoever makes it, batches of any size,
destroyed keys kept as rows that open nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from runevents.crypto.keyring import Keyring, KeyUnavailableError, new_key
from runevents.tables.keys import ThreadKeys
from runevents.tables.migrate import upgrade_async
from runevents.tables.sql import engine_for

KEYRING = Keyring.of(new_key())


@pytest.fixture
async def engine(pg_database: str) -> AsyncIterator[AsyncEngine]:
    await upgrade_async(pg_database)
    made = engine_for(pg_database)
    try:
        yield made
    finally:
        await made.dispose()


async def test_writers_racing_for_a_thread_s_first_key_agree_on_one(engine: AsyncEngine) -> None:
    writers = [ThreadKeys(engine, KEYRING) for _ in range(8)]
    got = await asyncio.gather(*(writer.live(["t1", "t2"]) for writer in writers))
    assert len({found["t1"][0] for found in got}) == 1
    assert len({found["t2"][0] for found in got}) == 1


async def test_a_batch_of_tens_of_thousands_of_threads_is_one_call(engine: AsyncEngine) -> None:
    """Past PostgreSQL's 32,767 parameters a statement, were each id one."""
    keys = ThreadKeys(engine, KEYRING)
    threads = [f"thread-{n}" for n in range(40_000)]
    live = await keys.live(threads)
    assert len({key_id for key_id, _ in live.values()}) == 40_000
    async with engine.connect() as connection:
        ciphers = await keys.ciphers(connection, [key_id for key_id, _ in live.values()])
    assert len(ciphers) == 40_000
    assert await keys.destroy(threads) == 40_000


async def test_a_destroyed_key_opens_nothing_and_the_thread_gets_a_new_one(engine: AsyncEngine) -> None:
    keys = ThreadKeys(engine, KEYRING)
    ((old, _),) = (await keys.live(["t1"])).values()
    assert await keys.destroy(["t1"]) == 1
    assert await keys.destroy(["t1"]) == 0
    assert await keys.cipher(old) is None
    ((new, _),) = (await keys.live(["t1"])).values()
    assert new != old
    assert await keys.cipher(new) is not None
    async with engine.connect() as connection:
        with pytest.raises(KeyUnavailableError, match="not in thread_keys"):
            await keys.ciphers(connection, ["00000000-0000-4000-8000-000000000000"])
