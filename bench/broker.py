"""Benchmark: what the durable broker costs against the memory one, for the tests that need it.

Starts a memory-storage Tansu and a durable one (`LocalBroker(durable=True)`: Tansu's log in a local
moto S3 server), and on each, for records of 300 bytes on a 6-partition topic: produces for a fixed
time with acks=all, in sends of 1, 10 and 100 records awaited together, then reads everything back from
offset 0 with one consumer (fetch_max_wait_ms 20, as the projector fetches). Prints records/s of each
beside the memory broker's, and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.machine import load
from runevents.bus.topic import create_topic
from runevents.devstack.broker import LocalBroker

PARTITIONS: Final = 6
VALUE: Final = b"x" * 300
BATCHES: Final = (1, 10, 100)
# Reading back stops when it is done, or after this long without a record (a slow log is reported).
IDLE_S: Final = 10.0


async def produce(servers: str, topic: str, batch: int, seconds: float) -> tuple[int, float]:
    """Send `batch` records at a time, each batch awaited, for `seconds`: (records, seconds taken)."""
    producer = AIOKafkaProducer(bootstrap_servers=servers, acks="all", linger_ms=0)
    await producer.start()
    sent = 0
    started = time.perf_counter()
    try:
        while time.perf_counter() - started < seconds:
            pending = [
                await producer.send(topic, VALUE, key=str((sent + n) % 24).encode()) for n in range(batch)
            ]
            await asyncio.gather(*pending)
            sent += batch
    finally:
        taken = time.perf_counter() - started
        await producer.stop()
    return sent, taken


async def consume(servers: str, topic: str, expected: int) -> tuple[int, float]:
    """Read the topic from offset 0 until `expected` records (or `IDLE_S` of nothing): (read, seconds)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=servers, enable_auto_commit=False, fetch_max_wait_ms=20)
    await consumer.start()
    partitions = [TopicPartition(topic, n) for n in range(PARTITIONS)]
    consumer.assign(partitions)
    await consumer.seek_to_beginning(*partitions)
    read = 0
    started = last = time.perf_counter()
    try:
        while read < expected and time.perf_counter() - last < IDLE_S:
            fetched = await consumer.getmany(timeout_ms=500)
            if fetched:
                read += sum(len(records) for records in fetched.values())
                last = time.perf_counter()
    finally:
        await consumer.stop()
    return read, last - started


async def measure(durable: bool, seconds: float) -> dict[int, tuple[float, float, int, int]]:
    """batch -> (produced/s, consumed/s, produced, read) on a fresh broker of the kind."""
    results = {}
    with (
        tempfile.TemporaryDirectory(prefix="runevents-bench-broker-") as scratch,
        LocalBroker(Path(scratch), durable=durable) as broker,
    ):
        for batch in BATCHES:
            topic = f"bench-{batch}"
            await create_topic(broker.bootstrap_servers, topic, partitions=PARTITIONS)
            sent, producing = await produce(broker.bootstrap_servers, topic, batch, seconds)
            read, reading = await consume(broker.bootstrap_servers, topic, sent)
            kind = "durable" if durable else "memory"
            print(f"  {kind}, {batch} a send: {sent} produced, {read} read back")
            results[batch] = (sent / producing, read / reading if reading else 0.0, sent, read)
    return results


def main(argv: Sequence[str] | None = None) -> None:
    """Run both brokers and print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench broker", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 s of producing a batch size, not 5")
    args = parser.parse_args(argv)
    seconds = 1.0 if args.quick else 5.0
    print(f"runevents bench broker: Tansu, memory storage against S3 storage on moto; {seconds:.0f} s a size")
    print(f"load average before: {load()}")
    memory = asyncio.run(measure(False, seconds))
    durable = asyncio.run(measure(True, seconds))
    print(f"load average after:  {load()}")
    print(
        f"{'records a send':>15}{'memory produce/s':>18}{'durable':>10}{'ratio':>7}"
        f"{'memory consume/s':>18}{'durable':>10}{'ratio':>7}"
    )
    for batch in BATCHES:
        m_produce, m_consume, _, _ = memory[batch]
        d_produce, d_consume, sent, read = durable[batch]
        short = "" if read >= sent else f"  (durable read back {read} of {sent} before {IDLE_S:.0f} s idle)"
        print(
            f"{batch:>15}{m_produce:>18,.0f}{d_produce:>10,.0f}{d_produce / m_produce:>7.2f}"
            f"{m_consume:>18,.0f}{d_consume:>10,.0f}{d_consume / m_consume:>7.2f}{short}"
        )
