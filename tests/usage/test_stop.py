"""`runevents usage run` processes SIGTERMed mid-batch and mid-rebalance: each exits 0 in its stop timeout.

The projector's bug, in the usage consumer (tests/faults/test_projector_shutdown.py has the projector's
side): its loop awaited getmany(), whose timeout does not hold while the group rebalances, and its
close waited the rebalance out, so a consumer SIGTERMed while the broker held its group join did not
exit. Real processes, the real broker and PostgreSQL; the usage expected is summed on the side
(tests/usage/load.py), and every call is counted once afterwards.
"""

from __future__ import annotations

import asyncio
import random
import uuid

import pytest

from runevents.bus.store import BusRunEventStore
from tests.faults.exactly_once import connect
from tests.faults.test_projector_faults import fault_seed
from tests.faults.test_projector_shutdown import (
    ENDLESS_JOIN_SESSION_MS,
    SETTLE_S,
    STOP_TIMEOUT_S,
    rebalancing,
    revoked,
    settled,
    stopped_in_time,
)
from tests.usage.caught_up import wait_caught_up
from tests.usage.load import Expected, publish, thread_totals
from tests.usage.test_kills import UsageFleet, write_while_killing

STOP_OPTIONS = ("--stop-timeout-s", str(STOP_TIMEOUT_S))
BACKLOG = 3000


async def keep_writing(
    store: BusRunEventStore, rng: random.Random, expected: Expected, stop: asyncio.Event
) -> None:
    """Publish events, with deletes of runs and threads among them, until `stop` is set."""
    while not stop.is_set():
        await write_while_killing(store, rng, expected, 1000)


async def test_usage_consumers_sigtermed_mid_batch_and_mid_rebalance_exit_in_time_and_count_every_call_once(
    kafka_bootstrap: str, bus_db: str, topic: str
) -> None:
    seed = fault_seed()
    rng = random.Random(f"{seed}-moments")
    expected = Expected()
    group = f"usage-{uuid.uuid4().hex[:8]}"
    store = BusRunEventStore(kafka_bootstrap, bus_db, topic=topic)
    try:
        await publish(store, random.Random(f"{seed}-backlog"), BACKLOG, expected)
        stop = asyncio.Event()
        writing = asyncio.create_task(keep_writing(store, random.Random(f"{seed}-w"), expected, stop))
        try:
            with UsageFleet(kafka_bootstrap, bus_db, topic, "--group", group, *STOP_OPTIONS) as fleet:
                fleet.start()
                fleet.start()
                await settled(fleet)
                await asyncio.sleep(rng.uniform(0.0, 0.5))
                probe = await connect(bus_db)
                try:
                    busy = await fleet.in_batch_within(probe, SETTLE_S)
                finally:
                    await probe.close()
                assert busy, f"no usage consumer opened a batch's transaction within {SETTLE_S:g} s"
                await stopped_in_time(fleet, rng.choice(busy), "mid-batch")

                member = fleet.live[0]
                await settled(fleet)
                watching = asyncio.create_task(revoked(fleet, member, rng))
                fleet.start()
                await watching
                await stopped_in_time(fleet, member, "just after another member joined" + rebalancing(member))
                for consumer in list(fleet.live):
                    await stopped_in_time(fleet, consumer, "at the end")
        finally:
            stop.set()
            await writing
        # What the stopped ones left (a batch rolled back is read again): one consumer of the group.
        with UsageFleet(kafka_bootstrap, bus_db, topic, "--group", group) as rest:
            last = rest.start()
            try:
                await wait_caught_up(kafka_bootstrap, topic, bus_db, group, alive=rest.check_alive)
            except AssertionError:
                if f"usage group {group!r} of" not in last.output():
                    # Never assigned: Tansu answered its joins with a leader that had stopped (a group
                    # whose members stopped mid-rebalance keeps its dead leader), so no assignment ever
                    # came. A broker's limitation, seen in about 1 CI run in 4; said, not passed.
                    pytest.xfail("Tansu never assigned the group's last consumer: its leader had stopped")
                raise
            rest.stop_all()
        assert await thread_totals(bus_db) == expected.threads()
    finally:
        await store.close()


async def test_a_usage_consumer_sigtermed_while_the_broker_holds_its_group_join_exits_in_time(
    kafka_bootstrap: str, bus_db: str, topic: str
) -> None:
    # A join the broker holds longer than the client's request timeout never completes (see
    # ENDLESS_JOIN_SESSION_MS): the consumer is mid-rebalance for as long as it runs.
    seed = fault_seed()
    session = ("--session-timeout-ms", str(ENDLESS_JOIN_SESSION_MS))
    group = f"usage-{uuid.uuid4().hex[:8]}"
    with UsageFleet(kafka_bootstrap, bus_db, topic, "--group", group, *STOP_OPTIONS, *session) as fleet:
        consumer = fleet.start()
        # Started (the interpreter, its imports, the checks take a second or two), and joining.
        await asyncio.sleep(random.Random(f"{seed}-joining").uniform(3.0, 4.0))
        fleet.check_alive()
        await stopped_in_time(fleet, consumer, "while the broker held its group join")
    print(consumer.output())
