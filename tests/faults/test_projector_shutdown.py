"""Projector processes SIGTERMed at random moments: each exits 0 within its stop timeout, nothing is lost.

The moments: at startup, mid-batch (a backlog being projected), mid-rebalance (just after another
member joined, or left), in back-off (the database refusing connections), while the database does
not answer at all, and while the broker holds the group's join for good. Each moment has a topic, and
so a consumer group, of its own: a group the broker left unsettled (Tansu can hold a SyncGroup until
the client's request times out, 40 s) does not hold up the next moment. Real `runevents project`
processes, the real broker and PostgreSQL; nothing mocked. A seed (printed; RUNEVENTS_FAULT_SEED
repeats it) draws the events and the moments.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
from sqlalchemy.engine import make_url

from runevents.bus.projector import Projector
from runevents.bus.store import BusRunEventStore
from runevents.bus.topic import create_topic
from tests.bus.conftest import running
from tests.bus.test_projector import dsn
from tests.bus.test_projector_stop import Gate
from tests.faults.conftest import WIDE_PARTITIONS
from tests.faults.exactly_once import Acknowledged, assert_each_acknowledged_event_once, wait_for_rows
from tests.faults.projectors import ProjectorFleet, ProjectorProcess
from tests.faults.test_projector_faults import fault_seed, varied_event

# The projectors' --stop-timeout-s: short, so the slowest moment (a batch the database never answers,
# given half of the projector's share of it) keeps the test short.
STOP_TIMEOUT_S = 8.0
# Between the process's own deadline and its exit being seen here: the interpreter ending, a loaded host.
EXIT_SEEN_S = 3.0
# Before `runevents project` installs its handlers (the interpreter starting, its imports), SIGTERM's
# default action ends it, and it has opened nothing yet.
KILLED_BEFORE_HANDLERS = -signal.SIGTERM
REVOKED = "gave up partitions"
ASSIGNED = "(partition: next offset)"
BACKING_OFF = "trying again in"
SETTLE_S = 30.0
# Each moment's topic: a backlog, then a batch of TRICKLE events every TRICKLE_PAUSE_S while it lasts.
BACKLOG = 2000
TRICKLE = 100
TRICKLE_PAUSE_S = 0.1
THREADS = 30


async def stopped_in_time(
    fleet: ProjectorFleet, projector: ProjectorProcess, moment: str, *, codes: tuple[int, ...] = (0,)
) -> None:
    """SIGTERM `projector` now; it must exit with one of `codes` within its stop timeout."""
    started = time.monotonic()
    # In a thread: this loop runs the gate a projector may reach the database through.
    code = await asyncio.to_thread(fleet.stop, projector, signal.SIGTERM)
    took = time.monotonic() - started
    said = f"{projector.name}, SIGTERMed {moment}, exited {code} after {took:.1f} s"
    assert code in codes, f"{said}:\n{projector.output()}"
    assert took < STOP_TIMEOUT_S + EXIT_SEEN_S, f"{said}, past its stop timeout:\n{projector.output()}"
    print(said)


def owns_partitions(projector: ProjectorProcess) -> bool:
    """Whether `projector` was assigned partitions since it last gave its partitions up."""
    output = projector.output()
    return output.rfind(ASSIGNED) > output.rfind(REVOKED)


async def settled(fleet: ProjectorFleet) -> None:
    """Wait until every live projector owns partitions: no rebalance under way."""
    deadline = time.monotonic() + SETTLE_S
    while not all(owns_partitions(projector) for projector in fleet.live):
        fleet.check_alive()
        assert time.monotonic() < deadline, f"the group did not settle within {SETTLE_S:g} s:\n" + "\n".join(
            fleet.outputs()
        )
        await asyncio.sleep(0.05)


def rebalancing(projector: ProjectorProcess) -> str:
    """For the moment's name: whether `projector` is still between giving up partitions and new ones."""
    return " (mid-rebalance)" if not owns_partitions(projector) else " (rebalanced already)"


async def revoked(fleet: ProjectorFleet, projector: ProjectorProcess, rng: random.Random) -> None:
    """Wait until `projector` gives up its partitions (a rebalance began), and a random moment more."""
    before = projector.output().count(REVOKED)
    deadline = time.monotonic() + SETTLE_S
    while projector.output().count(REVOKED) == before:
        fleet.check_alive()
        assert time.monotonic() < deadline, (
            f"{projector.name} saw no rebalance in {SETTLE_S:g} s:\n" + "\n".join(fleet.outputs())
        )
        await asyncio.sleep(0.02)
    await asyncio.sleep(rng.uniform(0.0, 0.3))


class Moments:
    """The topics of the moments, each with its events published, and acknowledged, as it runs."""

    def __init__(self, kafka: str, url: str, seed: int) -> None:
        self.kafka = kafka
        self.url = url
        self.seed = seed
        self.acked = Acknowledged()
        self.topics: list[str] = []

    @contextlib.asynccontextmanager
    async def moment(self, name: str, *options: str, url: str | None = None) -> AsyncIterator[ProjectorFleet]:
        """A fresh topic (a fresh group) with a backlog, more events while the block runs, and projectors
        of it (with `options`, reaching the database at `url` if given); those still live afterwards
        must stop in time."""
        topic = f"shutdown-{name}-{uuid.uuid4().hex[:8]}"
        assert await create_topic(self.kafka, topic, partitions=WIDE_PARTITIONS)
        self.topics.append(topic)
        store = BusRunEventStore(self.kafka, self.url, topic=topic)
        rng = random.Random(f"{self.seed}-{name}-events")
        stop = asyncio.Event()
        try:
            for _ in range(BACKLOG // TRICKLE):
                await self._publish(store, rng, name, TRICKLE)
            publishing = asyncio.create_task(self._publish_until(store, rng, name, stop))
            options = ("--stop-timeout-s", str(STOP_TIMEOUT_S), *options)
            with ProjectorFleet(self.kafka, url or self.url, topic, *options, name=name) as fleet:
                try:
                    yield fleet
                finally:
                    stop.set()
                    await publishing
                for projector in list(fleet.live):
                    await stopped_in_time(fleet, projector, f"at the end of {name}")
        finally:
            await store.close()

    async def _publish(self, store: BusRunEventStore, rng: random.Random, name: str, count: int) -> None:
        # Threads of this topic's own: a thread's records are all in one partition of one topic.
        events = [varied_event(rng, f"{name}-t{rng.randrange(THREADS)}", n) for n in range(count)]
        self.acked.add_published(await store.publish_batch(events))

    async def _publish_until(
        self, store: BusRunEventStore, rng: random.Random, name: str, stop: asyncio.Event
    ) -> None:
        while not stop.is_set():
            await self._publish(store, rng, name, TRICKLE)
            await asyncio.sleep(TRICKLE_PAUSE_S)

    async def project_the_rest(self) -> None:
        """With one projector of each topic owning all its partitions (no group), project what is left."""
        async with contextlib.AsyncExitStack() as projecting:
            for topic in self.topics:
                projector = Projector(self.kafka, self.url, topic=topic, partitions=range(WIDE_PARTITIONS))
                await projecting.enter_async_context(running(projector))
            nothing_to_watch = ProjectorFleet(self.kafka, self.url, self.topics[0])
            await wait_for_rows(self.url, len(self.acked), nothing_to_watch)


async def at_startup(moments: Moments, rng: random.Random) -> None:
    """SIGTERM projectors at random moments of their first seconds."""
    async with moments.moment("startup") as fleet:

        async def one(projector: ProjectorProcess, after_s: float) -> None:
            await asyncio.sleep(after_s)
            moment = f"{after_s:.2f} s after its start"
            await stopped_in_time(fleet, projector, moment, codes=(0, KILLED_BEFORE_HANDLERS))

        await asyncio.gather(*(one(fleet.start(), rng.uniform(0.0, 3.0)) for _ in range(3)))


async def mid_batch(moments: Moments, rng: random.Random) -> None:
    """SIGTERM a projector with a batch's transaction open."""
    async with moments.moment("batch") as fleet:
        fleet.start()
        fleet.start()
        await settled(fleet)
        probe = await asyncpg.connect(dsn(moments.url))
        try:
            await asyncio.sleep(rng.uniform(0.0, 0.5))
            deadline = time.monotonic() + SETTLE_S
            busy: list[ProjectorProcess] = []
            while not busy and time.monotonic() < deadline:
                fleet.check_alive()
                busy = await fleet.in_batch(probe)
                if not busy:
                    await asyncio.sleep(0.01)
            assert busy, f"no projector opened a batch's transaction within {SETTLE_S:g} s"
        finally:
            await probe.close()
        await stopped_in_time(fleet, rng.choice(busy), "mid-batch")


async def after_a_join(moments: Moments, rng: random.Random) -> None:
    """SIGTERM a projector in the rebalance a member joining began."""
    async with moments.moment("join") as fleet:
        member = fleet.start()
        await settled(fleet)
        watching = asyncio.create_task(revoked(fleet, member, rng))
        fleet.start()
        await watching
        await stopped_in_time(fleet, member, "just after another member joined" + rebalancing(member))


async def after_a_leave(moments: Moments, rng: random.Random) -> None:
    """SIGTERM a projector in the rebalance a member leaving began, before that one has even exited:
    as `ProjectorFleet.stop_all` does, and as in the flake CI saw."""
    async with moments.moment("leave") as fleet:
        fleet.start()
        fleet.start()
        await settled(fleet)
        leaving, member = rng.sample(fleet.live, 2)
        left = asyncio.create_task(stopped_in_time(fleet, leaving, "while another stayed"))
        await revoked(fleet, member, rng)
        await stopped_in_time(fleet, member, "just after another member left" + rebalancing(member))
        await left


async def in_back_off(moments: Moments, rng: random.Random) -> None:
    """SIGTERM a projector retrying the database, which refuses its connections."""
    async with moments.moment("back-off") as fleet:
        projector = fleet.start()
        await settled(fleet)  # started: refused at its start, a projector fails (a setting to fix)
        database = make_url(moments.url).database
        admin = await asyncpg.connect(dsn(moments.url).rsplit("/", 1)[0] + "/postgres")
        try:
            before = projector.output().count(BACKING_OFF)
            await admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS false')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", database
            )
            deadline = time.monotonic() + SETTLE_S
            while projector.output().count(BACKING_OFF) == before:
                fleet.check_alive()
                assert time.monotonic() < deadline, f"it never backed off:\n{projector.output()}"
                await asyncio.sleep(0.05)
            await asyncio.sleep(rng.uniform(0.0, 1.0))
            await stopped_in_time(fleet, projector, "backing off while the database refused it")
        finally:
            await admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS true')
            await admin.close()


async def database_silent(moments: Moments, rng: random.Random) -> None:
    """SIGTERM a projector whose database stopped answering, most likely mid-batch: the batch gets half
    the projector's stop timeout, then it is rolled back."""
    async with Gate(moments.url) as gate, moments.moment("silent", url=gate.url(moments.url)) as fleet:
        projector = fleet.start()
        await settled(fleet)
        await asyncio.sleep(rng.uniform(0.0, 1.0))
        gate.silent = True
        await asyncio.sleep(rng.uniform(0.5, 1.5))
        await stopped_in_time(fleet, projector, "while its database did not answer")
    # The gate's connections aborted: the database rolled back what the projector held locked.


async def test_projectors_sigtermed_at_random_moments_exit_in_time_and_project_every_event_once(
    kafka_bootstrap: str, bus_db: str
):
    seed = fault_seed()
    rng = random.Random(f"{seed}-moments")
    moments = Moments(kafka_bootstrap, bus_db, seed)
    started = time.monotonic()
    for moment in (at_startup, mid_batch, after_a_join, after_a_leave, in_back_off, database_silent):
        await moment(moments, rng)
        print(f"{time.monotonic() - started:5.1f} s: {moment.__name__} done")
    await moments.project_the_rest()
    print(f"{time.monotonic() - started:5.1f} s: {len(moments.acked)} events projected")
    await assert_each_acknowledged_event_once(bus_db, moments.acked)


# Longer than the client's 40 s request timeout, so that a join the broker holds for (a fraction of)
# the session never completes: aiokafka gives up on the request, finds the coordinator again, and
# joins anew, for as long as the process runs.
ENDLESS_JOIN_SESSION_MS = 120_000


async def test_a_projector_sigtermed_while_the_broker_holds_its_group_join_exits_in_time(
    kafka_bootstrap: str, bus_db: str
):
    # The flake CI saw, made to last: a projector SIGTERMed in a rebalance that does not end. The
    # broker holds a JoinGroup (Kafka: until every member rejoined, up to the rebalance timeout; Tansu:
    # for half the session timeout). The loop waited in getmany(), whose timeout does not hold while
    # the group rebalances, and stop() then waited for the rebalance too: it never exited.
    moments = Moments(kafka_bootstrap, bus_db, fault_seed())
    async with moments.moment("joining", "--session-timeout-ms", str(ENDLESS_JOIN_SESSION_MS)) as fleet:
        projector = fleet.start()
        # Started (the interpreter, its imports, the checks take a second or two), and joining.
        await asyncio.sleep(random.Random(f"{moments.seed}-joining").uniform(3.0, 4.0))
        fleet.check_alive()
        await stopped_in_time(fleet, projector, "while the broker held its group join")
    # With Tansu the join never ends, and the projector gave up leaving the group; with Kafka, whose
    # join of one member ends within seconds, it may have left.
    print(projector.output())
    await moments.project_the_rest()
    await assert_each_acknowledged_event_once(bus_db, moments.acked)
