"""`runevents usage run` processes SIGKILLed mid-batch while events and deletes keep coming: every call once.

Real processes, the real broker and PostgreSQL. The expected usage is summed on the side from the
numbers the events were made of (tests/usage/load.py), never by the code under test.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import uuid

import asyncpg
import pytest

from runevents.bus.store import BusRunEventStore
from runevents.tables.migrate import upgrade_async
from tests.faults.exactly_once import connect
from tests.faults.projectors import ProjectorFleet, ProjectorProcess
from tests.faults.test_projector_faults import fault_seed
from tests.usage.caught_up import wait_caught_up
from tests.usage.load import THREADS, Expected, publish, thread_name, thread_totals


def usage_process(kafka: str, url: str, topic: str, *options: str) -> subprocess.Popen[bytes]:
    """`runevents usage run` in an OS process of its own (fast group joins)."""
    command = [sys.executable, "-m", "runevents.cli", "usage", "run", "--kafka", kafka, "--database", url]
    return subprocess.Popen(
        [*command, "--topic", topic, "--session-timeout-ms", "2000", *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


class UsageFleet(ProjectorFleet):
    """The projector fault tests' fleet, of usage consumers: killed, restarted, watched for a batch."""

    def __enter__(self) -> UsageFleet:
        return self

    def start(self) -> ProjectorProcess:
        """Start one more usage consumer."""
        self.started += 1
        consumer = ProjectorProcess(f"usage-{self.started}", usage_process(*self._command))
        self.live.append(consumer)
        return consumer

    async def in_batch_within(self, probe: asyncpg.Connection, within_s: float) -> list[ProjectorProcess]:
        """The live consumers with a batch's transaction open, once one has; [] if none has in `within_s`."""
        deadline = time.monotonic() + within_s
        while True:
            self.check_alive()
            busy = await self.in_batch(probe)
            if busy or time.monotonic() > deadline:
                return busy
            await asyncio.sleep(0.005)


async def write_while_killing(
    store: BusRunEventStore, rng: random.Random, expected: Expected, total: int
) -> None:
    """Publish `total` more events in small batches, a delete of a run and of a thread between them."""
    for step in range(total // 200):
        await publish(store, rng, 200, expected)
        thread = thread_name(rng.randrange(THREADS))
        # Each published after the puts before it were acknowledged: a thread's records keep this order.
        if step % 5 == 2:
            run = f"r{rng.randrange(4)}"
            await store.producer.publish_delete_run(thread, run)
            expected.delete_run(thread, run)
        elif step % 5 == 4:
            await store.producer.publish_delete_thread(thread)
            expected.delete_thread(thread)
        await asyncio.sleep(0.05)


async def kill_mid_batch(fleet: UsageFleet, url: str, kills: int, rng: random.Random) -> int:
    """SIGKILL the consumer `kills` times, inside a batch's transaction when caught in one; restart it."""
    probe = await connect(url)
    caught = 0
    try:
        for _ in range(kills):
            await asyncio.sleep(rng.uniform(0.5, 1.5))
            busy = await fleet.in_batch_within(probe, 8)
            caught += bool(busy)
            victim = busy[0] if busy else fleet.live[0]
            code = fleet.stop(victim, signal.SIGKILL)
            assert code == -signal.SIGKILL, f"{victim.name} ended {code}, not by SIGKILL:\n{victim.output()}"
            fleet.start()
    finally:
        await probe.close()
    return caught


@pytest.mark.parametrize(
    ("before", "during", "kills"),
    [
        pytest.param(3000, 3000, 3, id="6k-events-3-kills"),
        pytest.param(50_000, 50_000, 20, id="100k-events-20-kills", marks=pytest.mark.soak),
    ],
)
async def test_usage_consumers_killed_mid_batch_count_every_call_once(
    kafka_bootstrap: str, bus_db: str, topic: str, before: int, during: int, kills: int
) -> None:
    seed = fault_seed()
    rng = random.Random(seed)
    expected = Expected()
    group = f"usage-{uuid.uuid4().hex[:8]}"
    store = BusRunEventStore(kafka_bootstrap, bus_db, topic=topic)
    started = time.monotonic()
    try:
        await publish(store, rng, before, expected)
        with UsageFleet(kafka_bootstrap, bus_db, topic, "--group", group) as fleet:
            fleet.start()
            writing = asyncio.create_task(
                write_while_killing(store, random.Random(f"{seed}-w"), expected, during)
            )
            try:
                caught = await kill_mid_batch(fleet, bus_db, kills, random.Random(f"{seed}-kills"))
                await writing
            finally:
                writing.cancel()
            waited = await wait_caught_up(kafka_bootstrap, topic, bus_db, group, alive=fleet.check_alive)
            fleet.stop_all()  # SIGTERM: each finishes its batch and exits 0
        print(
            f"{before + during} events, {kills} kills ({caught} inside a batch), caught up {waited:.1f}s "
            f"after the last kill, {time.monotonic() - started:.1f}s in all"
        )
        assert await thread_totals(bus_db) == expected.threads()

        # A fresh group from offset 0, into a fresh schema, by one more process: the same totals.
        schema = f"usage_{uuid.uuid4().hex[:8]}"
        await upgrade_async(bus_db, schema=schema)
        fresh = f"usage-{uuid.uuid4().hex[:8]}"
        with UsageFleet(kafka_bootstrap, bus_db, topic, "--group", fresh, "--schema", schema) as rerun:
            rerun.start()
            await wait_caught_up(
                kafka_bootstrap, topic, bus_db, fresh, schema=schema, alive=rerun.check_alive
            )
            rerun.stop_all()
        assert await thread_totals(bus_db, schema) == expected.threads()
    finally:
        await store.close()
