"""Subscriptions on PostgreSQL: one LISTEN per process, other stores' writes, a lost connection healed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import Any

from sqlalchemy.engine import make_url

from runevents.errors import ThreadDeletedError
from runevents.tables.migrate import upgrade_async
from runevents.tables.notify import THREADS_CHANNEL, decode, payloads
from tests.tables.support import make_event, pg_connection, sql_store

WAIT_S = 20.0


async def take(records: AsyncGenerator[dict[str, Any], None], count: int) -> list[int]:
    """The seqs of the next `count` records of a subscription."""
    async with asyncio.timeout(WAIT_S):
        return [(await anext(records))["seq"] for _ in range(count)]


async def listeners(url: str) -> int:
    """How many sessions of the database listen on the thread channel."""
    async with pg_connection(url) as connection:
        found: int = await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query = $1",
            f'LISTEN "{THREADS_CHANNEL}"',
        )
        return found


async def until_listening(url: str, wanted: bool) -> None:
    """Wait until the database has a listener (or has none)."""
    for _ in range(int(WAIT_S / 0.05)):
        if bool(await listeners(url)) == wanted:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"still {'no' if wanted else 'a'} listener after {WAIT_S} s")


async def test_every_subscription_of_a_process_shares_one_listen_connection(migrated_pg: str) -> None:
    async with sql_store(migrated_pg) as store:
        subscriptions = [store.subscribe(f"t{n % 5}") for n in range(20)]
        waiting = [asyncio.ensure_future(anext(records)) for records in subscriptions]
        await asyncio.sleep(0.5)
        assert await listeners(migrated_pg) == 1
        await store.put_batch([make_event(f"t{n}") for n in range(5)])
        async with asyncio.timeout(WAIT_S):
            assert [(await first)["seq"] for first in waiting] == [1] * 20
        for records in subscriptions:
            await records.aclose()
        # The connection goes with the last subscription.
        await until_listening(migrated_pg, False)


async def test_writes_of_another_store_reach_the_subscription_without_polling(migrated_pg: str) -> None:
    async with sql_store(migrated_pg) as reader, sql_store(migrated_pg) as writer:
        records = reader.subscribe("t1")
        try:
            first = asyncio.ensure_future(take(records, 1))
            await asyncio.sleep(0.3)
            await writer.put(**make_event("t1"))
            assert await first == [1]
            # Far less than a poll would take: the notification carried it.
            started = asyncio.get_running_loop().time()
            await writer.put(**make_event("t1"))
            assert await take(records, 1) == [2]
            assert asyncio.get_running_loop().time() - started < 0.4
            await writer.delete_by_thread("t1")
            try:
                async with asyncio.timeout(WAIT_S):
                    await anext(records)
            except ThreadDeletedError:
                pass
            else:
                raise AssertionError("the subscription went on after its thread was deleted")
        finally:
            await records.aclose()


async def test_a_lost_listen_connection_is_healed_by_reading_from_the_last_seq(migrated_pg: str) -> None:
    async with sql_store(migrated_pg) as reader, sql_store(migrated_pg) as writer:
        records = reader.subscribe("t1")
        try:
            await writer.put_batch([make_event("t1") for _ in range(3)])
            assert await take(records, 3) == [1, 2, 3]
            pending = asyncio.ensure_future(take(records, 40))
            database = make_url(migrated_pg).database
            # ALLOW_CONNECTIONS cannot be changed from inside the database it is about.
            async with pg_connection(
                make_url(migrated_pg).set(database="postgres").render_as_string(False)
            ) as admin:
                for round_ in range(4):
                    # Nobody may connect (the writer's pooled connection is already open): the listener
                    # stays down while the writes below commit, so their notifications are lost for good.
                    await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
                    killed = await admin.fetchval(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = $1 AND query = $2",
                        database,
                        f'LISTEN "{THREADS_CHANNEL}"',
                    )
                    assert killed == 1, f"round {round_}: no listener to kill"
                    await writer.put_batch([make_event("t1") for _ in range(10)])
                    await asyncio.sleep(0.3)
                    await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
                    await until_listening(migrated_pg, True)
            assert await pending == list(range(4, 44))
        finally:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending
            await records.aclose()


async def test_a_delete_in_another_schema_does_not_end_the_subscription(migrated_pg: str) -> None:
    await upgrade_async(migrated_pg, schema="tenant_b")
    async with sql_store(migrated_pg) as ours, sql_store(migrated_pg, schema="tenant_b") as theirs:
        await ours.put(**make_event("t1"))
        await theirs.put(**make_event("t1"))
        records = ours.subscribe("t1")
        try:
            assert await take(records, 1) == [1]
            assert await theirs.delete_by_thread("t1") == 1
            await ours.put(**make_event("t1"))
            assert await take(records, 1) == [2]
        finally:
            await records.aclose()


def test_payloads_split_long_thread_lists_and_decode_back() -> None:
    threads = [f"thread-{n:04d}-{'x' * 40}" for n in range(400)]
    told = payloads("tenant_a", "w", threads)
    assert len(told) > 1
    assert all(len(payload.encode()) < 8000 for payload in told)
    decoded = [decode(payload) for payload in told]
    assert all(notice is not None and notice.schema == "tenant_a" for notice in decoded)
    assert [thread for notice in decoded if notice for thread in notice.thread_ids] == threads
    assert decode("\tx\tt1") is None
