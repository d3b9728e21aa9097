"""A writer process for the broker-crash tests: `put`, `put_batch` and `publish_batch` until N events
are in, retrying what the broker did not acknowledge with the same event ids, and keeping a ledger.

    python -m tests.faults.crash_writer KAFKA DATABASE TOPIC NAME EVENTS LEDGER [SEED [MODE]]

MODE `mixed` (the default) mixes the three calls; `mixed-large` too, in calls five times as large (the
soak: Tansu on S3 lists every stored batch on each fetch, so a long log must hold few); `journal` makes
only `put_batch` calls of one thread
each (how deer-flow's run journal writes) and `spread` only `put_batch` calls over four threads, each
noted as `begun` before it is made, so a test that SIGKILLs the writer knows which call it cut.

The ledger gets one JSON line per call that ended: `{"call", "ids": [content ids], "outcome",
"seqs"?}` where outcome is `returned` (a put or put_batch returned: `seqs` has each content id's seq),
`published` (publish_batch returned: acknowledged, no seq), `begun` (a call about to be made, with
its `batch` name), `acknowledged` (a put whose event the
broker took, but whose read-back timed out: it must be projected all the same) or `unknown` (a put
the read tables failed: at most once); and one line per error:
`{"call", "error", "maybe_durable", "ids"}`. A SIGKILL may cut the last line; the test reads whole lines.
"""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from runevents.bus.producer import BrokerUnavailableError
from runevents.bus.read_your_writes import ProjectionTimeout
from runevents.bus.store import BusRunEventStore, ProjectedRecordMissingError
from runevents.errors import RunEventsError
from runevents.events import new_event_id

THREADS_PER_WRITER = 12
RETRY_PAUSE_S = 0.3
# A call the broker does not answer within this fails (BrokerUnavailableError) and is retried.
REQUEST_TIMEOUT_MS = 3_000


def event(name: str, n: int) -> dict[str, Any]:
    """Event `n` of writer `name`: its content carries a unique id."""
    return {
        "thread_id": f"{name}-t{n % THREADS_PER_WRITER}",
        "run_id": f"{name}-r{n // 500}",
        "event_type": "llm.ai.response" if n % 3 else "llm.human.input",
        "category": "message" if n % 5 else "trace",
        "content": {"id": f"{name}-{n}", "text": "x" * (n % 200)},
        "metadata": {"n": n},
    }


class Writer:
    """One writer's calls and its ledger."""

    def __init__(self, store: BusRunEventStore, ledger: BinaryIO, name: str, rng: random.Random) -> None:
        self.store = store
        self.ledger = ledger
        self.name = name
        self.rng = rng

    def note(self, line: dict[str, Any]) -> None:
        self.ledger.write(orjson.dumps(line) + b"\n")
        self.ledger.flush()

    async def put_one(self, written: dict[str, Any]) -> None:
        """`put`; what the broker did not take is retried with its event id until it returns."""
        ids = [written["content"]["id"]]
        try:
            record = await self.store.put(**written)
        except BrokerUnavailableError as error:
            self.error("put", ids, error)
            await self.retry("put", [written], list(error.event_ids))
            return
        except (ProjectionTimeout, ProjectedRecordMissingError) as error:
            # Taken by the broker, not read back in time: it must be projected all the same.
            self.error("put", ids, error)
            self.note({"call": "put", "ids": ids, "outcome": "acknowledged"})
            return
        except RunEventsError as error:  # the read tables: published or not, the error says; at most once
            self.error("put", ids, error)
            self.note({"call": "put", "ids": ids, "outcome": "unknown"})
            return
        self.note({"call": "put", "ids": ids, "outcome": "returned", "seqs": {ids[0]: record["seq"]}})

    async def retry(
        self, call: str, events: list[dict[str, Any]], event_ids: list[str], batch: str | None = None
    ) -> None:
        """`put_batch` or `publish_batch` of `events` with `event_ids` until it returns."""
        ids = [e["content"]["id"] for e in events]
        named = {} if batch is None else {"batch": batch}
        while True:
            try:
                if call == "publish_batch":
                    await self.store.publish_batch(events, event_ids=event_ids)
                    self.note({"call": call, **named, "ids": ids, "outcome": "published"})
                else:
                    records = await self.store.put_batch(events, event_ids=event_ids)
                    seqs = {r["content"]["id"]: r["seq"] for r in records}
                    self.note({"call": call, **named, "ids": ids, "outcome": "returned", "seqs": seqs})
                return
            except RunEventsError as error:
                self.error(call, ids, error)
                await asyncio.sleep(RETRY_PAUSE_S)

    def error(self, call: str, ids: list[str], error: RunEventsError) -> None:
        durable = getattr(error, "maybe_durable", None)
        self.note({"call": call, "ids": ids[:1], "error": type(error).__name__, "maybe_durable": durable})

    async def run(self, total: int, scale: int = 1) -> None:
        """Mixed calls until `total` events are in, their batches `scale` times the usual size."""
        n = 0
        while n < total:
            roll = self.rng.random()
            if roll < 0.02:
                await self.put_one(event(self.name, n))
                n += 1
                continue
            # Large batches: Tansu on S3 lists a partition's stored batches on each fetch.
            call, size = ("put_batch", 100 * scale) if roll < 0.4 else ("publish_batch", 500 * scale)
            events = [event(self.name, k) for k in range(n, min(n + size, total))]
            # The ids are the writer's from the start: a retry after any failure sends the same ones.
            await self.retry(call, events, [new_event_id() for _ in events])
            n += len(events)

    async def run_batches(self, total: int, threads: int) -> None:
        """`put_batch` calls over `threads` threads each, noted before they are made."""
        n = batch = 0
        while n < total:
            size = self.rng.randint(20, 200)
            name = f"{self.name}-b{batch}"
            events = [
                {**event(self.name, k), "thread_id": f"{name}-t{k % threads}"}
                for k in range(n, min(n + size, total))
            ]
            self.note(
                {
                    "call": "put_batch",
                    "batch": name,
                    "ids": [e["content"]["id"] for e in events],
                    "outcome": "begun",
                }
            )
            await self.retry("put_batch", events, [new_event_id() for _ in events], batch=name)
            n, batch = n + len(events), batch + 1


async def main(
    kafka: str, database: str, topic: str, name: str, total: int, ledger: Path, seed: int, mode: str
) -> None:
    store = BusRunEventStore(
        kafka,
        database,
        topic=topic,
        wait_timeout_s=30,
        poll_interval_s=0.1,
        producer_options={"request_timeout_ms": REQUEST_TIMEOUT_MS},
    )
    try:
        with ledger.open("ab") as out:
            writer = Writer(store, out, name, random.Random(seed))
            if mode.startswith("mixed"):
                await writer.run(total, scale=5 if mode == "mixed-large" else 1)
            else:
                await writer.run_batches(total, threads=1 if mode == "journal" else 4)
    finally:
        await store.close()


if __name__ == "__main__":
    kafka, database, topic, name, total, ledger, *rest = sys.argv[1:]
    seed, mode = (int(rest[0]) if rest else 0), (rest[1] if len(rest) > 1 else "mixed")
    asyncio.run(main(kafka, database, topic, name, int(total), Path(ledger), seed, mode))
