"""`runevents replay` against a real broker and PostgreSQL: live == replayed, resumable, refusals."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
from collections.abc import Callable

import asyncpg
import pytest

from runevents.bus.projector import Projector
from runevents.bus.store import BusRunEventStore
from runevents.lifecycle.retention import parse_policy
from runevents.ops import replay as ops
from tests.bus.conftest import running
from tests.bus.test_projector import event, fetch
from tests.faults.exactly_once import checksums
from tests.ops.test_dead_letters import cli

COUNTERS = "SELECT thread_id, last_seq, event_count, message_count FROM {schema}.thread_counters ORDER BY 1"
POLICIES = "SELECT thread_id, policy FROM {schema}.retention_policies ORDER BY 1"


async def write_history(store: BusRunEventStore, threads: int, per_thread: int) -> None:
    """Puts, put_if_absent, a deleted run, a deleted thread and an expiry: every kind of record the topic
    holds."""
    for number in range(per_thread):
        await store.put_batch(
            [event(f"t{thread}", number, run_id=f"r{number % 3}") for thread in range(threads)]
        )
    receipt = {**event("t0", 999), "event_type": "run.delivery", "category": "outcome"}
    assert (await store.put_if_absent(**receipt))[1]
    assert not (await store.put_if_absent(**receipt))[1]
    await store.delete_by_run("t1", "r1")
    await store.delete_by_thread("t2")
    await store.put_batch([event("t2", 1000), event("t1", 1001, run_id="r1")])
    # Retention's expiry, the thread's newest seq among them: a replay must not give it again.
    assert await store.expire_events("t0", [1, 3, per_thread + 1]) == 3
    await store.put_batch([event("t0", 1002)])
    await store.set_retention("t1", parse_policy("trace: max_age=7d"))
    await store.set_retention("t3", parse_policy("keep_runs=2"))
    await store.set_retention("t3", None)


async def assert_same_tables(url: str, live: str, replayed: str) -> None:
    """Every row of run_events (every column of the contract) and every counter, equal in both schemas."""
    (live_sum, replayed_sum) = await checksums(url, live, replayed)
    assert live_sum == replayed_sum
    assert live_sum[0] > 0
    assert await fetch(url, COUNTERS.format(schema=live)) == await fetch(
        url, COUNTERS.format(schema=replayed)
    )
    policies = [await fetch(url, POLICIES.format(schema=schema)) for schema in (live, replayed)]
    assert policies[0] == policies[1]


async def test_a_replay_rebuilds_the_same_tables_deletes_and_put_if_absent_included(
    kafka_bootstrap: str,
    bus_db: str,
    topic: str,
    bus_store: BusRunEventStore,
    make_projector: Callable[..., Projector],
):
    async with running(make_projector()):
        await write_history(bus_store, threads=4, per_thread=5)

    result = await cli(
        "replay",
        "--projection",
        "rebuilt",
        "--topic",
        topic,
        "--database",
        bus_db,
        "--kafka",
        kafka_bootstrap,
    )
    assert result.exit_code == 0, result.output
    assert "replayed " in result.output
    assert "into projection 'rebuilt' (schema rebuilt)" in result.output
    await assert_same_tables(bus_db, "public", "rebuilt")


async def test_a_stopped_replay_goes_on_from_where_it_was(
    kafka_bootstrap: str,
    bus_db: str,
    topic: str,
    bus_store: BusRunEventStore,
    make_projector: Callable[..., Projector],
):
    async with running(make_projector()):
        await write_history(bus_store, threads=20, per_thread=50)
    total = sum(row[0] for row in await fetch(bus_db, "SELECT next_offset FROM projection_offsets"))

    stop = asyncio.Event()

    def stop_midway(progress: ops.Progress) -> None:
        if sum(done for done, _ in progress.values()) > 0:
            stop.set()

    first = await ops.replay(
        kafka_bootstrap,
        bus_db,
        projection="again",
        topic=topic,
        on_progress=stop_midway,
        stop=stop,
        max_batch=5,
        tick_s=0.005,  # told of progress early: a fast machine would otherwise finish before the stop
    )
    assert not first.caught_up
    assert 0 < sum(first.reached.values()) < total
    second = await ops.replay(kafka_bootstrap, bus_db, projection="again", topic=topic, max_batch=20)
    assert second.caught_up
    assert sum(second.reached.values()) == total
    assert second.records == total - sum(first.reached.values())  # nothing applied twice
    await assert_same_tables(bus_db, "public", "again")


def test_a_log_that_lost_its_start_is_named_with_how_much_is_gone():
    assert ops.missing_history({0: 0, 1: 0}) is None
    problem = ops.missing_history({0: 0, 1: 1200, 2: 5})
    assert problem is not None
    assert "partition 1 starts at offset 1,200, partition 2 starts at offset 5" in problem
    assert "retention is not -1" in problem
    assert "1,205 records of history are gone" in problem


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--projection", "Bad-Name"], "projection name 'Bad-Name' must be a lower-case identifier"),
        (["--projection", "main"], "'main' is the live projection's name"),
        (["--projection", "fine", "--topic", "no-such-topic"], "topic 'no-such-topic' does not exist"),
    ],
)
async def test_replay_refuses_bad_arguments_in_one_line(
    kafka_bootstrap: str, bus_db: str, arguments: list[str], message: str
):
    result = await cli("replay", *arguments, "--database", bus_db, "--kafka", kafka_bootstrap)
    assert result.exit_code == 1
    assert result.output.startswith("error: ")
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1


async def test_a_killed_replay_run_again_finishes_the_job_without_duplicates(
    kafka_bootstrap: str,
    bus_db: str,
    topic: str,
    bus_store: BusRunEventStore,
    make_projector: Callable[..., Projector],
):
    async with running(make_projector()):
        for start in range(0, 40_000, 1000):
            await bus_store.publish_batch([event(f"t{n % 97}", n) for n in range(start, start + 1000)])
        await bus_store.put(**event("t0", -1))  # read-your-writes: the live projection has it all
    total = sum(row[0] for row in await fetch(bus_db, "SELECT next_offset FROM projection_offsets"))
    command = [sys.executable, "-m", "runevents.cli", "replay", "--projection", "killed", "--topic", topic]
    command += ["--database", bus_db, "--kafka", kafka_bootstrap]
    done = "SELECT coalesce(sum(next_offset), 0) FROM killed.projection_offsets WHERE projection = 'killed'"

    first = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        reached = 0
        while reached == 0 and first.returncode is None:
            await asyncio.sleep(0.01)
            with contextlib.suppress(asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
                reached = (await fetch(bus_db, done))[0][0]
        if first.returncode is None:
            first.send_signal(signal.SIGKILL)  # mid-replay: between or inside batches, nothing half-written
    finally:
        await asyncio.wait_for(first.wait(), timeout=30)
    partial = (await fetch(bus_db, done))[0][0]
    assert 0 < partial < total, f"the replay was not killed midway ({partial} of {total})"

    second = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert f"replayed {total - partial:,} records" in second.stdout
    await assert_same_tables(bus_db, "public", "killed")
