"""The bus under the ordinary faults: projectors stopped and killed mid-batch, the broker unreachable."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from runevents.bus.producer import BrokerUnavailableError
from runevents.bus.store import BusRunEventStore
from runevents.bus.topic import create_topic
from runevents.devstack.broker import LocalBroker
from runevents.errors import InvalidEventError
from runevents.events import new_event_id
from tests.bus.conftest import projector_process, running
from tests.bus.test_projector import assert_gap_free, event, fetch

TOTAL = 20_000
THREADS = 40


async def projected(url: str) -> int:
    """How many events the read tables hold."""
    return int((await fetch(url, "SELECT count(*) FROM run_events"))[0][0])


async def wait_for_rows(
    url: str, at_least: int, process: subprocess.Popen[bytes], *, within_s: float = 60
) -> int:
    """Wait until the read tables hold at least `at_least` events; return how many."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        count = await projected(url)
        if count >= at_least:
            return count
        if process.poll() is not None:
            output = process.stdout.read().decode(errors="replace") if process.stdout else ""
            raise AssertionError(f"the projector exited ({process.returncode}) at {count} events:\n{output}")
        await asyncio.sleep(0.02)
    raise AssertionError(f"fewer than {at_least} events projected within {within_s}s")


def stopped(process: subprocess.Popen[bytes], how: signal.Signals) -> tuple[int, str]:
    """Send `how`, wait for the process to end; its exit code and output."""
    process.send_signal(how)
    output, _ = process.communicate(timeout=60)
    return process.returncode, output.decode(errors="replace")


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_a_projector_stopped_mid_ingest_and_restarted_projects_every_event_exactly_once(
    bus_store: BusRunEventStore, kafka_bootstrap: str, bus_db: str, topic: str, how: signal.Signals
):
    events = [event(f"t{n % THREADS}", n) for n in range(TOTAL)]
    for start in range(0, TOTAL, 2000):
        await bus_store.publish_batch(events[start : start + 2000])

    first = projector_process(kafka_bootstrap, bus_db, topic)
    try:
        seen = await wait_for_rows(bus_db, 1, first)
    finally:
        code, output = stopped(first, how)
    assert seen < TOTAL, "the projector finished before it could be stopped mid-ingest"
    if how == signal.SIGTERM:
        assert code == 0, output  # finished (or abandoned) its batch and left the group
    else:
        assert code == -signal.SIGKILL
    # Whatever committed before the stop is whole: gap-free, counters equal to rows.
    at_stop = await projected(bus_db)
    assert at_stop < TOTAL
    await assert_gap_free(bus_db, at_stop)

    second = projector_process(kafka_bootstrap, bus_db, topic)
    try:
        await wait_for_rows(bus_db, TOTAL, second)
        # A moment more: anything applied twice would show now.
        record = await bus_store.put(**event("t0", TOTAL))
    finally:
        code, output = stopped(second, signal.SIGTERM)
    assert code == 0, output
    await assert_gap_free(bus_db, TOTAL + 1)
    assert record["seq"] == TOTAL // THREADS + 1
    contents = await fetch(bus_db, "SELECT count(DISTINCT content) FROM run_events")
    assert contents[0][0] == TOTAL + 1


async def test_an_unreachable_broker_fails_a_put_in_time_with_one_error_naming_it(
    bus_db: str, tmp_path: Path
):
    with LocalBroker(tmp_path / "broker") as broker:
        servers = broker.bootstrap_servers
        await create_topic(servers, "faults", partitions=1)
        options: dict[str, Any] = {"request_timeout_ms": 2000}
        store = BusRunEventStore(servers, bus_db, topic="faults", producer_options=options, wait_timeout_s=2)
        try:
            await store.publish(**event("t1", 0))  # connected, metadata cached
            broker.stop()
            started = time.monotonic()
            with pytest.raises(BrokerUnavailableError) as raised:
                await store.put(**event("t1", 1))
            assert time.monotonic() - started < 15
            message = str(raised.value)
            assert servers in message
            assert "\n" not in message
            # It names the event it was about; whether that may be on the log depends on how far the
            # send got, and the message says which.
            assert len(raised.value.event_ids) == 1
            assert ("retry with the same event_ids" in message) == raised.value.maybe_durable
        finally:
            await store.close()

    # Nothing reaches a store that never could connect either: one clear error at the first put.
    store = BusRunEventStore(servers, bus_db, topic="faults")
    try:
        with pytest.raises(
            BrokerUnavailableError, match=f"cannot reach the Kafka broker at {servers}"
        ) as never:
            await store.put(**event("t1", 2))
        # One line in words: no Python repr of the error or of an address tuple.
        assert "('" not in str(never.value)
        assert "Error(" not in str(never.value)
        # Nothing was sent: nothing of it can be on the log.
        assert never.value.maybe_durable is False
        assert "none of the 1 records was sent" in str(never.value)
        assert len(never.value.event_ids) == 1
    finally:
        await store.close()
    assert await projected(bus_db) == 0


async def test_a_broker_that_answers_nothing_fails_a_put_batch_within_two_request_timeouts(
    bus_db: str, tmp_path: Path
):
    # A frozen broker keeps its connections open and answers nothing: no connection error comes, and
    # an idempotent aiokafka producer would retry the batch for ever. The call must still end, saying
    # its records may be on the log.
    with LocalBroker(tmp_path / "broker") as broker:
        servers = broker.bootstrap_servers
        await create_topic(servers, "frozen", partitions=2)
        options: dict[str, Any] = {"request_timeout_ms": 1500}
        store = BusRunEventStore(servers, bus_db, topic="frozen", producer_options=options, wait_timeout_s=2)
        try:
            await store.publish(**event("t1", 0))  # connected, metadata cached
            broker.pause()
            started = time.monotonic()
            with pytest.raises(BrokerUnavailableError) as raised:
                await store.put_batch([event(f"t{n}", n) for n in range(8)])
            waited = time.monotonic() - started
            assert waited < 2 * 1.5 + 1.5, f"put_batch waited {waited:.1f} s on a broker answering nothing"
            assert raised.value.maybe_durable is True
            assert len(raised.value.event_ids) == 8
            assert "retry with the same event_ids" in str(raised.value)
        finally:
            broker.resume()
            await store.close()


async def test_a_write_retried_with_its_event_ids_is_projected_once_at_its_first_seqs(
    bus_store: BusRunEventStore, bus_db: str, make_projector: Any
):
    events = [event(f"t{n % 3}", n) for n in range(12)]
    ids = [new_event_id() for _ in events]
    async with running(make_projector()):
        first = await bus_store.put_batch(events, event_ids=ids)
        # The retry of a call whose answer was lost: same ids, so the projector keeps the first copies.
        again = await bus_store.put_batch(events, event_ids=ids)
        published = await bus_store.publish_batch(events[:5], event_ids=ids[:5])
        after = await bus_store.put(**event("t0", 99))
    assert [r["event_id"] for r in first] == ids
    assert [(r["event_id"], r["seq"]) for r in again] == [(r["event_id"], r["seq"]) for r in first]
    assert [p.event_id for p in published] == ids[:5]
    assert after["seq"] == 5  # t0 held seqs 1-4 once each, whatever was sent twice
    await assert_gap_free(bus_db, 13)


@pytest.mark.parametrize(
    ("event_ids", "problem"),
    [
        (["not-a-uuid"], "is not a UUID"),
        ([], "must be a list of 1 ids"),
        ("0190b5a8-0000-7000-8000-000000000000", "must be a list of 1 ids"),
    ],
)
async def test_event_ids_that_are_not_one_uuid_an_event_are_refused_before_anything_is_sent(
    bus_store: BusRunEventStore, event_ids: Any, problem: str
):
    with pytest.raises(InvalidEventError, match=problem):
        await bus_store.publish_batch([event("t1", 0)], event_ids=event_ids)
    twice = ["0190b5a8-0000-7000-8000-000000000000"] * 2
    with pytest.raises(InvalidEventError, match="given twice"):
        await bus_store.put_batch([event("t1", 0), event("t1", 1)], event_ids=twice)
