"""A writer process SIGKILLed in the middle of `put_batch`: what it had sent is projected whole or not at
all, never a part of a thread's events.

The bus sends a put_batch as one record batch per partition, so one thread's events of a call (the way
deer-flow's run journal writes) land on the log together or not at all, on any Kafka. A call over
threads on several partitions is whole per thread; whole across partitions only a transactional
producer could make it, which Tansu does not offer (docs/kafka-faults.md).
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from runevents.bus.topic import create_topic, log_offsets
from tests.faults.crash_support import Ledgers, output_of, stored_content, writer
from tests.faults.exactly_once import connect
from tests.faults.projectors import ProjectorFleet
from tests.faults.test_projector_faults import fault_seed

PARTITIONS = 4
KILLS = 12


async def begun_calls(ledger: Path, at_least: int, process: subprocess.Popen[bytes]) -> None:
    """Wait until the writer has begun `at_least` calls (its first ones start its producer)."""
    deadline = time.monotonic() + 60
    while not ledger.exists() or ledger.read_bytes().count(b'"begun"') < at_least:
        assert process.poll() is None, f"the writer exited: {output_of(ledger)}"
        assert time.monotonic() < deadline, "the writer began no call within 60 s"
        await asyncio.sleep(0.02)


async def projected_to_the_end(kafka: str, url: str, topic: str, fleet: ProjectorFleet) -> None:
    """Wait until the projection has applied every record on the log."""
    ends = await log_offsets(kafka, topic, "end")
    deadline = time.monotonic() + 120
    connection = await connect(url)
    try:
        while True:
            fleet.check_alive()
            stored = dict(await connection.fetch("SELECT partition, next_offset FROM projection_offsets"))
            if all(stored.get(partition, 0) >= end for partition, end in ends.items() if end > 0):
                return
            assert time.monotonic() < deadline, f"projected {stored} of {ends} within 120 s"
            await asyncio.sleep(0.2)
    finally:
        await connection.close()


@pytest.mark.parametrize("mode", ["journal", "spread"])
async def test_a_writer_killed_mid_put_batch_leaves_each_threads_events_all_projected_or_none(
    kafka_bootstrap: str, bus_db: str, tmp_path: Path, mode: str
) -> None:
    seed = fault_seed()
    rng = random.Random(seed)
    topic = f"writer-kills-{mode}-{seed}"
    assert await create_topic(kafka_bootstrap, topic, partitions=PARTITIONS)
    ledgers = [tmp_path / f"writer-{n}.jsonl" for n in range(KILLS)]
    with ProjectorFleet(kafka_bootstrap, bus_db, topic) as fleet:
        fleet.start()
        for n, ledger in enumerate(ledgers):
            process = writer(kafka_bootstrap, bus_db, topic, f"k{n}", 10**9, ledger, seed + n, mode)
            try:
                await begun_calls(ledger, at_least=2 + rng.randrange(3), process=process)
                await asyncio.sleep(rng.uniform(0, 0.05))  # into the call: publishing, or waiting for it
            finally:
                process.send_signal(signal.SIGKILL)
                process.wait()
        await projected_to_the_end(kafka_bootstrap, bus_db, topic, fleet)
        fleet.stop_all()

    told = Ledgers(ledgers)
    stored = await stored_content(bus_db)
    cut = set(told.begun) - told.returned_batches
    # The writer is in a call all the time but for building the next one: nearly every kill cuts one.
    assert len(cut) >= KILLS * 3 // 4, f"only {len(cut)} of {KILLS} kills fell in a call"
    outcomes: Counter[str] = Counter()
    for batch, ids in told.begun.items():
        by_thread: dict[int, list[bool]] = {}
        for content_id in ids:
            # crash_writer puts its event k on thread k % 4 (spread), or all of a call on one (journal).
            k = int(content_id.rsplit("-", 1)[1])
            by_thread.setdefault(k % 4 if mode == "spread" else 0, []).append(content_id in stored)
        for thread, found in by_thread.items():
            assert all(found) or not any(found), (
                f"batch {batch} thread {thread}: {sum(found)} of {len(found)} events projected"
            )
        whole = [all(found) for found in by_thread.values()]
        if batch in cut:
            outcomes["whole" if all(whole) else "some threads" if any(whole) else "none"] += 1
        else:
            assert all(whole), f"batch {batch} returned, and not all of it is there"
    duplicated = [content_id for content_id, seqs in stored.items() if len(seqs) > 1]
    assert not duplicated, f"{len(duplicated)} events stored twice"
    print(
        f"{KILLS} writers SIGKILLed mid-put_batch ({mode}): the cut calls were {dict(outcomes)}; seed {seed}"
    )
