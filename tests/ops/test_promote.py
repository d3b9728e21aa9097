"""`runevents promote` and `runevents projection` against a real broker and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from runevents.bus.projector import Projector
from runevents.bus.read_your_writes import ProjectionTimeout, ProjectionWatcher
from runevents.bus.store import BusRunEventStore
from runevents.ops import promote as ops
from runevents.ops.replay import replay
from runevents.store import open_store
from runevents.tables.migrate import upgrade_async
from tests.bus.conftest import running
from tests.bus.test_projector import event, fetch
from tests.ops.test_dead_letters import cli
from tests.ops.test_replay import assert_same_tables, write_history


async def served_by(url: str) -> list[str]:
    """The schemas whose tables the serving schema's views read, as PostgreSQL knows them."""
    rows = await fetch(
        url,
        "SELECT DISTINCT table_schema FROM information_schema.view_table_usage WHERE view_schema = 'serving'",
    )
    return [row[0] for row in rows]


async def test_promotion_switches_readers_and_writers_while_they_run_and_old_projections_drop(
    kafka_bootstrap: str,
    bus_db: str,
    topic: str,
    bus_store: BusRunEventStore,
    make_projector: Callable[..., Projector],
):
    base = ("--database", bus_db, "--kafka", kafka_bootstrap, "--topic", topic)
    async with running(make_projector()):
        await write_history(bus_store, threads=3, per_thread=4)
        # The default deployment adopts a serving schema once: its live projection, in public.
        result = await cli("promote", "main", *base)
        assert result.exit_code == 0, result.output
        assert "schema 'serving' now serves projection 'main' (schema public)" in result.output
        await replay(kafka_bootstrap, bus_db, projection="v2", topic=topic)
        async with running(make_projector(projection="v2", schema="v2")):
            reader = open_store(f"{bus_db}?schema=serving")
            writer = BusRunEventStore(
                kafka_bootstrap, bus_db, topic=topic, schema="serving", poll_interval_s=0.1, wait_timeout_s=20
            )
            try:
                writes_done = asyncio.Event()

                async def write() -> list[int]:
                    seqs = []
                    for number in range(40):
                        record = await writer.put(**event("w", number))
                        seqs.append(record["seq"])
                    writes_done.set()
                    return seqs

                async def read() -> int:
                    reads = 0
                    while not writes_done.is_set():
                        assert len(await reader.list_messages("t0", limit=1000)) > 0
                        reads += 1
                    return reads

                async def switch() -> int:
                    switches = 0
                    while not writes_done.is_set():
                        target = ("v2",) if switches % 2 == 0 else ("main",)
                        result = await cli("promote", *target, *base)
                        assert result.exit_code == 0, result.output
                        switches += 1
                    return switches

                seqs, reads, switches = await asyncio.gather(write(), read(), switch())
                # Every put came back with its seq, across the switches, and both projections agree.
                assert seqs == list(range(1, 41))
                assert switches >= 2
                assert reads > 0
                assert [r["seq"] for r in await reader.list_messages("w", limit=100)] == seqs
            finally:
                await writer.close()
                await reader.close()
            result = await cli("promote", "v2", *base)
            assert result.exit_code == 0, result.output
            assert await served_by(bus_db) == ["v2"]

    await assert_same_tables(bus_db, "public", "v2")
    history = await ops.history(bus_db)
    assert [p.projection for p in history][:2] == ["main", "v2"]
    assert history[-1].projection == "v2"
    result = await cli("projection", "history", "--database", bus_db)
    assert result.exit_code == 0
    assert result.output.count("\n") == len(history), result.output

    # The served projection is not dropped; another one is, with its schema.
    result = await cli("projection", "drop", "v2", "--yes", "--database", bus_db)
    assert result.exit_code == 1
    assert "projection 'v2' in schema 'v2' is served by 'serving'" in result.output
    await upgrade_async(bus_db, schema="v3")
    await replay(kafka_bootstrap, bus_db, projection="v3", topic=topic)
    result = await cli("promote", "v3", *base)
    assert result.exit_code == 0, result.output
    result = await cli("projection", "drop", "v2", "--yes", "--database", bus_db)
    assert result.exit_code == 0, result.output
    assert await fetch(bus_db, "SELECT 1 FROM pg_namespace WHERE nspname = 'v2'") == []
    await assert_same_tables(bus_db, "public", "serving")


async def test_promote_refuses_a_projection_behind_the_log_or_missing_and_names_why(
    kafka_bootstrap: str,
    bus_db: str,
    topic: str,
    bus_store: BusRunEventStore,
    make_projector: Callable[..., Projector],
):
    base = ("--database", bus_db, "--kafka", kafka_bootstrap, "--topic", topic)
    async with running(make_projector()):
        await bus_store.put_batch([event(f"t{n}", n) for n in range(8)])
    await bus_store.publish_batch([event(f"t{n}", 100 + n) for n in range(5)])

    result = await cli("promote", "main", "--max-lag", "4", *base)
    assert result.exit_code == 1
    assert result.output.startswith("error: projection 'main' is 5 records behind topic"), result.output
    assert "--max-lag" in result.output
    assert await fetch(bus_db, "SELECT 1 FROM pg_namespace WHERE nspname = 'serving'") == []

    result = await cli("promote", "main", "--max-lag", "5", *base)
    assert result.exit_code == 0, result.output
    assert "5 records behind" in result.output

    for args, message in [
        (("nothere",), "schema 'nothere' has no read tables (replay into it first)"),
        (
            ("main", "--serving", "public"),
            "the serving schema 'public' cannot be the projection's own schema",
        ),
        (("Bad-Name",), "projection name 'Bad-Name' must be a lower-case identifier"),
        (
            ("main", "--topic", "no-such-topic"),
            "projection 'main' has applied nothing of topic 'no-such-topic'",
        ),
    ]:
        result = await cli("promote", *base, *args)
        assert result.exit_code == 1, (args, result.output)
        assert message in result.output, args
        assert result.output.count("\n") == 1, result.output

    result = await cli("projection", "drop", "main", "--yes", "--database", bus_db)
    assert result.exit_code == 1
    assert "schema 'public', which holds more than them" in result.output


async def test_dropping_a_projection_that_does_not_exist_says_so(bus_db: str):
    result = await cli("projection", "drop", "nothere", "--yes", "--database", bus_db)
    assert result.exit_code == 1
    assert result.output == "error: schema 'nothere' holds no projection\n"


async def test_writers_on_the_serving_schema_wait_for_the_promoted_projection_not_the_old_one(
    kafka_bootstrap: str,
    bus_db: str,
    topic: str,
    bus_store: BusRunEventStore,
    make_projector: Callable[..., Projector],
):
    watcher = ProjectionWatcher(bus_db, projection="main", topic=topic, schema="serving", poll_interval_s=0.1)
    try:
        async with running(make_projector()):
            await bus_store.put_batch([event(f"t{n}", n) for n in range(4)])
            await ops.promote(kafka_bootstrap, bus_db, "main", topic=topic)
            first = await bus_store.publish(**event("t0", 10))
            await watcher.wait({first.partition: first.offset}, timeout_s=10)
            assert watcher.generation == 0
            await replay(kafka_bootstrap, bus_db, projection="v2", topic=topic)
            await ops.promote(kafka_bootstrap, bus_db, "v2", topic=topic)

            # main applies it and says so, but v2 (not running) is served now: the wait is for v2.
            second = await bus_store.publish(**event("t0", 11))
            with pytest.raises(ProjectionTimeout, match="did not reach"):
                await watcher.wait({second.partition: second.offset}, timeout_s=1.5)
            assert watcher.generation == 1
            assert not await watcher.resync(1)
            async with running(make_projector(projection="v2", schema="v2")):
                await watcher.wait({second.partition: second.offset}, timeout_s=10)
    finally:
        await watcher.close()
