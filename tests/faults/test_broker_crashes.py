"""The broker crashes under load, on a durable broker (Tansu's log in a local S3 server): what it
acknowledged reaches the read tables exactly once, whatever crashed.

Writer processes (`tests/faults/crash_writer.py`) `put`, `put_batch` and `publish_batch` while three
projector processes project and the broker is SIGKILLed and started again; each writer retries what
was not acknowledged with the same event ids, and keeps a ledger of what it was told. Afterwards: every
event a call returned or the broker acknowledged is in the read tables once, at the seq a put returned;
none is there twice; every thread runs 1..n with counters equal to the rows; and a replay of the topic
into a new projection gives the same checksum.

The soak variant (`-m soak`): 1M events, 50 broker kills and 100 projector kills.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runevents.bus.topic import create_topic
from runevents.devstack.broker import LocalBroker
from runevents.devstack.postgres import LocalPostgres
from runevents.tables.migrate import upgrade_async
from tests.faults.crash_support import (
    DURABLE_FETCH_OPTIONS,
    Ledgers,
    assert_acknowledged_once,
    assert_replay_checksum_equal,
    at_progress,
    broker_tail,
    finish_writers,
    quiet,
    until_projecting,
    where_things_stand,
    writer,
)
from tests.faults.exactly_once import wait_for_rows
from tests.faults.projectors import ProjectorFleet
from tests.faults.test_projector_faults import fault_seed
from tests.faults.test_service_faults import own_postgres

__all__ = ["own_postgres"]

pytestmark = pytest.mark.durable_broker

TOPIC = "crashes"
PARTITIONS = 6
WRITERS = 4
PROJECTORS = 3
# How long the writers may take once the last fault is over (slower than this is a stall).
WRITERS_WITHIN_S = 300
# Longer than a writer's request timeout (crash_writer.REQUEST_TIMEOUT_MS): its call in flight fails.
LONG_DOWN_S = 4.0


class Run:
    """One run of writers and projectors against a broker, and what the test did to them."""

    def __init__(self, broker: LocalBroker, url: str, tmp_path: Path, seed: int) -> None:
        self.broker = broker
        self.kafka = broker.bootstrap_servers
        self.url = url
        self.rng = random.Random(seed)
        self.seed = seed
        self.ledgers: list[Path] = []
        self.writers: list[subprocess.Popen[bytes]] = []
        self.fleet = ProjectorFleet(self.kafka, url, TOPIC, *DURABLE_FETCH_OPTIONS)
        self.tmp_path = tmp_path
        self.broker_kills = self.projector_kills = 0

    def start_writers(self, count: int, events: int, mode: str = "mixed") -> None:
        for n in range(count):
            self.ledgers.append(self.tmp_path / f"writer-{n}.jsonl")
            self.writers.append(
                writer(self.kafka, self.url, TOPIC, f"w{n}", events, self.ledgers[n], self.seed + n, mode)
            )

    async def at(self, fraction: float, total: int) -> bool:
        """Wait until the writers are `fraction` of the way through `total` events (False: done first)."""
        return await at_progress(self.ledgers, fraction * total, self.writers)

    async def kill_broker(self) -> None:
        """SIGKILL the broker; start it again after a moment, or (every third time) after the writers'
        calls in flight have given up on it."""
        self.fleet.check_alive()
        await asyncio.to_thread(self.broker.kill)
        self.broker_kills += 1
        await asyncio.sleep(LONG_DOWN_S if self.broker_kills % 3 == 1 else self.rng.uniform(0.3, 1.5))
        await asyncio.to_thread(self.broker.start)

    def kill_projector(self) -> None:
        """SIGKILL a projector at random (its partitions move once its session expires)."""
        self.fleet.stop(self.rng.choice(self.fleet.live), signal.SIGKILL)
        self.projector_kills += 1

    async def replace_projectors(self) -> None:
        """Start projectors until there are `PROJECTORS` again, and wait until each has partitions."""
        while len(self.fleet.live) < PROJECTORS:
            self.fleet.start()
        await until_projecting(self.fleet)

    async def explain(self) -> str:
        """Where the projection stands, and what the projectors and the broker said last."""
        for projector in self.fleet.live:
            (self.tmp_path / f"{projector.name}.log").write_text(projector.output())
        projectors = "\n".join(quiet(projector.output()) for projector in self.fleet.live)
        positions = await where_things_stand(self.kafka, self.url, TOPIC)
        return (
            f"{positions}; the projectors said:\n{projectors}\nthe broker said:\n{broker_tail(self.broker)}"
        )

    async def finish(self, total: int) -> Ledgers:
        """Wait for the writers and then for the projection of what they were told was taken."""
        try:
            await finish_writers(self.writers, self.ledgers, WRITERS_WITHIN_S, self.explain)
        finally:
            for process in self.writers:
                if process.poll() is None:
                    process.kill()
        told = Ledgers(self.ledgers)
        assert len(told.required) + len(told.maybe) == total, "the writers did not finish their events"
        await wait_for_rows(self.url, len(told.required), self.fleet, within_s=300)
        await asyncio.sleep(1)  # anything beyond the required count (a duplicate) would show by now
        return told


def assert_writers_were_told(told: Ledgers, *, some_cut: bool = True) -> None:
    """Writers whose calls the broker's downtime cut got BrokerUnavailableError, saying whether their
    records may be on the log (each was retried with the same event ids: nothing is there twice).

    `some_cut`: require such calls (with few kills, every writer may have been waiting for its reads
    back, not sending, while the broker was down)."""
    if some_cut:
        assert told.errors["BrokerUnavailableError"] > 0, (
            f"no writer saw the broker down ({dict(told.errors)})"
        )
    assert set(told.durable_flags) <= {"True", "False"}, f"maybe_durable not said: {dict(told.durable_flags)}"


@pytest.fixture
def run(durable_broker: LocalBroker, bus_db: str, tmp_path: Path) -> Iterator[Run]:
    """A run against the durable broker and the bus tests' database; its processes ended afterwards."""
    under_test = Run(durable_broker, bus_db, tmp_path, fault_seed())
    with under_test.fleet:
        try:
            yield under_test
        finally:
            for process in under_test.writers:
                if process.poll() is None:
                    process.kill()


@pytest.mark.parametrize(
    ("total", "broker_kills", "projector_kills"),
    [
        pytest.param(100_000, 10, 0, id="100k-events-10-broker-kills"),
        pytest.param(
            1_000_000, 50, 100, id="1m-events-50-broker-kills-100-projector-kills", marks=pytest.mark.soak
        ),
    ],
)
async def test_broker_crashes_lose_nothing_acknowledged_and_duplicate_nothing(
    run: Run, total: int, broker_kills: int, projector_kills: int
) -> None:
    assert await create_topic(run.kafka, TOPIC, partitions=PARTITIONS)
    started = time.monotonic()
    await run.replace_projectors()
    # The soak's log would hold tens of thousands of stored batches in calls of the usual size.
    run.start_writers(WRITERS, total // WRITERS, "mixed-large" if total > 100_000 else "mixed")
    per_interval = projector_kills // broker_kills
    # The k-th broker kill once the writers are about k/(kills+1) of the way; projector kills between.
    for k in range(broker_kills):
        for j in range(per_interval):
            if not await run.at((k + (j + 1) / (per_interval + 1)) / (broker_kills + 1), total):
                break
            run.kill_projector()
            await run.replace_projectors()
        if not await run.at((k + run.rng.uniform(0.6, 1.0)) / (broker_kills + 1), total):
            break
        await run.kill_broker()
    told = await run.finish(total)
    written = time.monotonic() - started
    run.fleet.stop_all()

    stored = await assert_acknowledged_once(run.url, told)
    assert run.broker_kills == broker_kills, (
        f"the broker was killed {run.broker_kills} times: the writers finished first"
    )
    assert run.projector_kills == projector_kills, (
        f"{run.projector_kills} projector kills: the writers finished first"
    )
    assert_writers_were_told(told)
    await assert_replay_checksum_equal(run.kafka, run.url, TOPIC, len(stored))
    print(
        f"{total} events by {WRITERS} writer processes, {PROJECTORS} projectors, {run.broker_kills} broker "
        f"kills, {run.projector_kills} projector kills in {written:.1f} s; required {len(told.required)}, "
        f"at most once {len(told.maybe)}, stored {len(stored)}, lost 0, duplicated 0; errors "
        f"{dict(told.errors)}, BrokerUnavailableError maybe_durable {dict(told.durable_flags)}; "
        f"seed {run.seed}"
    )


async def test_broker_and_database_restarted_and_a_projector_killed_while_the_broker_is_down(
    durable_broker: LocalBroker, own_postgres: LocalPostgres, tmp_path: Path
) -> None:
    url = own_postgres.create_database("crashes")
    await upgrade_async(url)
    total = 20_000
    run = Run(durable_broker, url, tmp_path, fault_seed())
    with run.fleet:
        assert await create_topic(run.kafka, TOPIC, partitions=PARTITIONS)
        await run.replace_projectors()
        run.start_writers(2, total // 2)
        try:
            # A projector killed while the broker is down; its replacement starts once it is back.
            assert await run.at(0.2, total)
            await asyncio.to_thread(run.broker.kill)
            run.broker_kills += 1
            run.kill_projector()
            await asyncio.sleep(LONG_DOWN_S)
            await asyncio.to_thread(run.broker.start)
            await run.replace_projectors()
            # The broker and the database down together, back in the other order.
            assert await run.at(0.45, total)
            await asyncio.to_thread(run.broker.kill)
            run.broker_kills += 1
            await asyncio.to_thread(own_postgres.stop)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(own_postgres.start)
            await asyncio.to_thread(run.broker.start)
            # The database alone, with a projector killed while it is down.
            assert await run.at(0.7, total)
            await asyncio.to_thread(own_postgres.stop)
            run.kill_projector()
            await asyncio.sleep(1.0)
            await asyncio.to_thread(own_postgres.start)
            await run.replace_projectors()
            told = await run.finish(total)
        finally:
            for process in run.writers:
                if process.poll() is None:
                    process.kill()
        run.fleet.stop_all()

    stored = await assert_acknowledged_once(url, told)
    assert_writers_were_told(told, some_cut=False)
    await assert_replay_checksum_equal(run.kafka, url, TOPIC, len(stored))
    print(
        f"{total} events, 2 broker kills (one with the database down too), 2 database restarts, 2 projector "
        f"kills; required {len(told.required)}, at most once {len(told.maybe)}, stored {len(stored)}, "
        f"lost 0, duplicated 0; errors {dict(told.errors)}; seed {run.seed}"
    )
