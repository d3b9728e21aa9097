"""Waiting for a usage group to reach the end of the topic's log, as its stored offsets say."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.bus.test_projector import dsn


async def log_ends(bootstrap: str, topic: str) -> dict[int, int]:
    """Each partition's end offset (the offset the next record will get)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        await consumer.topics()
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        ends = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    return {tp.partition: offset for tp, offset in ends.items()}


async def stored_offsets(url: str, group: str, schema: str = "public") -> dict[int, int]:
    """The group's stored next offset of each partition."""
    connection = await asyncpg.connect(dsn(url))
    try:
        rows = await connection.fetch(
            f"SELECT partition, next_offset FROM {schema}.token_usage_offsets WHERE consumer_group = $1",
            group,
        )
    finally:
        await connection.close()
    return {row[0]: row[1] for row in rows}


async def wait_caught_up(
    bootstrap: str,
    topic: str,
    url: str,
    group: str,
    *,
    schema: str = "public",
    within_s: float = 90,
    alive: Callable[[], None] = lambda: None,
) -> float:
    """Wait until the group's stored offsets reach the log's end; how long it took."""
    ends = await log_ends(bootstrap, topic)
    started = time.monotonic()
    stored: dict[int, int] = {}
    while time.monotonic() - started < within_s:
        alive()
        stored = await stored_offsets(url, group, schema)
        if all(stored.get(partition, 0) >= end for partition, end in ends.items()):
            return time.monotonic() - started
        await asyncio.sleep(0.2)
    raise AssertionError(f"usage group {group!r} at {stored}, the log ends at {ends}, after {within_s}s")
