"""A Kafka client whose start is cancelled half-way closes every connection it opened once stopped."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from runevents.bus.clients import START_GRACE_S, start_fully

# The broker's second answer on each connection (after the API versions: the bootstrap's metadata)
# comes this late, and a start is cancelled while it waits for it.
ANSWER_DELAY_S = 0.5
CANCEL_AFTER_S = 0.2


class SlowFirstAnswer:
    """A TCP proxy in front of the broker that holds back each connection's second answer.

    Counts the client connections still open: what a client leaves open shows here, collected or not.
    """

    def __init__(self, target: str) -> None:
        self._host, port = target.rsplit(":", 1)
        self._port = int(port)
        self.open = 0
        self.accepted = 0
        self.all_closed = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def bootstrap(self) -> str:
        assert self._server is not None
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        self.all_closed.clear()
        broker_in, broker_out = await asyncio.open_connection(self._host, self._port)
        upstream = asyncio.create_task(self._pipe(client_in, broker_out, delay_s=0))
        downstream = asyncio.create_task(self._pipe(broker_in, client_out, delay_s=ANSWER_DELAY_S))
        self._tasks |= {upstream, downstream}
        try:
            await upstream  # ends when the client closes its side
        finally:
            self.open -= 1
            if not self.open:
                self.all_closed.set()
            downstream.cancel()
            for writer in (broker_out, client_out):
                writer.close()

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, delay_s: float) -> None:
        answers = 0
        while chunk := await source.read(65536):
            answers += 1
            if answers == 2 and delay_s:
                await asyncio.sleep(delay_s)
            sink.write(chunk)
            await sink.drain()


@pytest.fixture
async def slow_broker(kafka_bootstrap: str) -> AsyncIterator[SlowFirstAnswer]:
    proxy = SlowFirstAnswer(kafka_bootstrap)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


def _producer(bootstrap: str) -> tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]:
    client = AIOKafkaProducer(bootstrap_servers=bootstrap)
    return client.start, client.stop


def _consumer(bootstrap: str) -> tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]:
    client = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    return client.start, client.stop


def _admin(bootstrap: str) -> tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]:
    client = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    return client.start, client.close


@pytest.mark.parametrize("make", [_producer, _consumer, _admin], ids=["producer", "consumer", "admin"])
async def test_a_start_cancelled_while_bootstrapping_leaves_no_connection_open_once_stopped(
    slow_broker: SlowFirstAnswer,
    make: Callable[[str], tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]],
):
    start, stop = make(slow_broker.bootstrap)
    starting = asyncio.create_task(start_fully(start))
    await asyncio.sleep(CANCEL_AFTER_S)
    assert slow_broker.open == 1, "the client has not reached the broker yet: cancel later"
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    await stop()
    async with asyncio.timeout(5):
        await slow_broker.all_closed.wait()
    assert slow_broker.accepted == 1


async def test_a_start_that_does_not_finish_within_the_grace_is_cancelled_all_the_same():
    never = asyncio.Event()
    cancelled_inside = asyncio.Event()

    async def stuck() -> None:
        try:
            await never.wait()
        except asyncio.CancelledError:
            cancelled_inside.set()
            raise

    starting = asyncio.create_task(start_fully(stuck))
    await asyncio.sleep(0.05)
    starting.cancel()
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(asyncio.CancelledError):
        await starting
    assert START_GRACE_S - 0.1 <= loop.time() - began < START_GRACE_S + 2
    await asyncio.sleep(0)
    assert cancelled_inside.is_set()


async def test_a_failed_start_raises_its_own_error():
    async def refused() -> None:
        raise ConnectionRefusedError("no broker")

    with pytest.raises(ConnectionRefusedError, match="no broker"):
        await start_fully(refused)
