"""A simulated fleet of agents that writes deer-flow-shaped runs through any `RunEventStore`.

Each agent is a coroutine writing runs on its own thread(s) the way deer-flow's `RunJournal` does,
buffered and flushed through `put_batch`, then a `run.delivery` receipt through `put_if_absent`.
The same seed gives the same events and seqs; only `event_id` and `created_at` differ.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from runevents.store.base import RunEventStore

FLUSH_EVERY: Final = 20  # deer-flow's RunJournal flush_threshold
LEAD_AGENT: Final = "lead_agent"
SUMMARIZE: Final = "middleware:summarize"
TITLE: Final = "middleware:title"
RECEIPT: Final = "run.delivery"

# (thread_id, seq, event_id) of a record the store gave back to a writer.
Acknowledged = tuple[str, int, str]

_QUESTIONS: Final = (
    "Compare the storage costs of our three largest customers over the last quarter.",
    "Why did the nightly ETL job fail on Tuesday? Check the logs and the schema change.",
    "Draft a migration plan from the JSONL event store to PostgreSQL.",
    "Summarize the open incidents and who owns each one.",
    "Find three papers on exactly-once stream processing and explain how they differ.",
    "Write a Python script that deduplicates events by id and keeps the earliest.",
    "What changed in the pricing page since last month? Cite the commits.",
    "Plan a load test for 5,000 agents writing to Kafka at once.",
)
_TOOLS: Final = ("web_search", "web_fetch", "python", "read_file", "task")
_MODELS: Final = ("gpt-4o-2024-08-06", "claude-sonnet-4", "deepseek-v3")
_SUBAGENTS: Final = ("research", "coder")
_FINDINGS: Final = (
    "The nightly job failed after the orders table gained a NOT NULL column.",
    "Storage grew 18% quarter over quarter, mostly from event payloads.",
    "Kafka keeps a thread's events in one partition, so their order holds.",
    "A COPY-based loader moves about 40k rows per second on the staging database.",
    "Exactly-once in effect needs the offsets and the rows in one transaction.",
    "The JSONL files can be imported in thread order without rewriting seqs.",
    "The load test should ramp to 5,000 agents over ten minutes, then hold an hour.",
    "Customer B stores twice the events per run of customer A, due to long traces.",
)


@dataclass(frozen=True, slots=True)
class FleetSummary:
    """What a fleet wrote: counts, the threads and their runs, and how long it took."""

    events: int
    batches: int
    receipts_created: int
    receipts_repeated: int
    threads: dict[str, list[str]]
    events_by_thread: dict[str, int]
    seconds: float
    # Every record the store returned to the fleet, so a check can look for each one where it was stored.
    acknowledged: tuple[Acknowledged, ...] = ()

    @property
    def runs(self) -> int:
        """How many runs the fleet ran."""
        return sum(len(runs) for runs in self.threads.values())

    @property
    def events_per_second(self) -> float:
        """Events written per second of wall time."""
        return self.events / self.seconds if self.seconds > 0 else 0.0


@dataclass(slots=True)
class _Tally:
    events: int = 0
    batches: int = 0
    receipts_created: int = 0
    receipts_repeated: int = 0
    threads: dict[str, list[str]] = field(default_factory=dict)
    events_by_thread: dict[str, int] = field(default_factory=dict)
    acknowledged: list[Acknowledged] = field(default_factory=list)

    def count(self, thread_id: str, events: int) -> None:
        self.events += events
        self.events_by_thread[thread_id] = self.events_by_thread.get(thread_id, 0) + events


@dataclass(slots=True)
class RunWriter:
    """Buffers one run's events and flushes them through `put_batch`, as deer-flow's RunJournal does."""

    store: RunEventStore
    thread_id: str
    run_id: str
    user_id: str
    flush_every: int
    tally: _Tally
    buffer: list[dict[str, Any]] = field(default_factory=list)

    async def put(
        self, event_type: str, category: str, content: str | dict[str, Any], metadata: dict[str, Any]
    ) -> None:
        """Buffer one event; flush when the buffer is full."""
        event = {"event_type": event_type, "category": category, "content": content, "metadata": metadata}
        self.buffer.append(
            {"thread_id": self.thread_id, "run_id": self.run_id, "user_id": self.user_id, **event}
        )
        if len(self.buffer) >= self.flush_every:
            await self.flush()

    async def flush(self) -> None:
        """Write the buffered events in one `put_batch`."""
        if not self.buffer:
            return
        batch, self.buffer = self.buffer, []
        records = await self.store.put_batch(batch)
        self.tally.acknowledged.extend((r["thread_id"], r["seq"], r["event_id"]) for r in records)
        self.tally.batches += 1
        self.tally.count(self.thread_id, len(batch))


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _message(kind: str, message_id: str, content: str, **extra: Any) -> dict[str, Any]:
    # The shape of a LangChain message's model_dump().
    return {
        "content": content,
        "additional_kwargs": {},
        "response_metadata": extra.pop("response_metadata", {}),
        "type": kind,
        "name": extra.pop("name", None),
        "id": message_id,
        "example": False,
        **extra,
    }


def _prose(rng: random.Random, sentences: int) -> str:
    return " ".join(rng.choices(_FINDINGS, k=sentences))


class _Agent:
    """One simulated agent: its random source, identity and LLM call counter."""

    def __init__(self, index: int, seed: int) -> None:
        self.index = index
        self.rng = random.Random(f"{seed}:{index}")
        self.user_id = f"user-{index:02d}"
        self.model = self.rng.choice(_MODELS)
        self.llm_calls = 0

    def ai(
        self, text: str, caller: str, tool_calls: list[dict[str, Any]] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """An AI message and the metadata deer-flow's journal records with it."""
        rng = self.rng
        self.llm_calls += 1
        usage = {"input_tokens": rng.randint(800, 24000), "output_tokens": rng.randint(20, 1800)}
        usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
        reason = "tool_calls" if tool_calls else "stop"
        response_metadata = {"finish_reason": reason, "model_name": self.model}
        content = _message("ai", f"run-{_uuid(rng)}", text, response_metadata=response_metadata)
        content.update(tool_calls=tool_calls or [], invalid_tool_calls=[], usage_metadata=usage)
        latency_ms = rng.randint(300, 9000)
        return content, {
            "caller": caller,
            "usage": usage,
            "latency_ms": latency_ms,
            "llm_call_index": self.llm_calls,
        }

    def tool_call(self, question: str) -> dict[str, Any]:
        """One tool call the lead agent asks for."""
        rng = self.rng
        name = rng.choice(_TOOLS)
        args: dict[str, Any] = {
            "web_search": {"query": question[:60]},
            "web_fetch": {"url": f"https://docs.example.com/page/{rng.randint(1, 999)}"},
            "python": {"code": "df.groupby('customer').bytes.sum()"},
            "read_file": {"path": "/mnt/user-data/uploads/usage.csv"},
            "task": {"description": question[:60], "subagent_type": rng.choice(_SUBAGENTS)},
        }[name]
        return {"name": name, "args": args, "id": f"call_{rng.getrandbits(48):012x}", "type": "tool_call"}

    async def subagent(self, writer: RunWriter, call: dict[str, Any]) -> str:
        """Write a subagent's steps, each tagged with the task (tool call) id; return its result."""
        rng = self.rng
        name = call["args"]["subagent_type"]
        meta = {"caller": f"subagent:{name}", "task_id": call["id"]}
        await writer.put("subagent.start", "trace", call["args"], meta)
        for step in range(1, rng.randint(2, 4) + 1):
            content, llm_meta = self.ai(_prose(rng, rng.randint(1, 2)), meta["caller"])
            await writer.put("subagent.step", "trace", content, {**llm_meta, **meta, "step": step})
        result = _prose(rng, rng.randint(2, 4))
        await writer.put("subagent.end", "trace", {"status": "completed", "result": result}, meta)
        return result

    async def turns(self, writer: RunWriter, question: str) -> int:
        """The lead agent's LLM calls and tool results, ending with its answer; return the turn count."""
        rng = self.rng
        turns = rng.randint(1, 4)
        for _ in range(turns - 1):
            calls = [self.tool_call(question) for _ in range(rng.randint(1, 2))]
            content, meta = self.ai("", LEAD_AGENT, calls)
            await writer.put("llm.ai.response", "message", content, meta)
            for call in calls:
                if call["name"] == "task":
                    output = await self.subagent(writer, call)
                else:
                    output = _prose(rng, rng.randint(1, 8))
                result = _message(
                    "tool", _uuid(rng), output, name=call["name"], tool_call_id=call["id"], status="success"
                )
                await writer.put("llm.tool.result", "message", result, {"caller": LEAD_AGENT})
        content, meta = self.ai(_prose(rng, rng.randint(2, 6)), LEAD_AGENT)
        await writer.put("llm.ai.response", "message", content, meta)
        return turns

    async def run(
        self, store: RunEventStore, thread_id: str, run_id: str, first: bool, flush_every: int, tally: _Tally
    ) -> None:
        """Write one run, then its delivery receipt."""
        rng = self.rng
        self.llm_calls = 0
        writer = RunWriter(store, thread_id, run_id, self.user_id, flush_every, tally)
        lead = {"caller": LEAD_AGENT}
        question = rng.choice(_QUESTIONS)
        await writer.put(
            "run.start", "trace", {"chain": "lead_agent"}, {**lead, "assistant_id": "lead_agent"}
        )
        await writer.put("llm.human.input", "message", _message("human", _uuid(rng), question), lead)
        if rng.random() < 0.4:
            # Memory injected into the context (4-14 KB): the long traces real runs carry.
            await writer.put("context:memory", "trace", _prose(rng, rng.randint(60, 200)), lead)
        if not first and rng.random() < 0.35:
            summary, meta = self.ai("Summary of the earlier turns: " + _prose(rng, 3), SUMMARIZE)
            await writer.put(SUMMARIZE, "message", summary, meta)
        turns = await self.turns(writer, question)
        if first:
            # deer-flow's title middleware answers after a thread's first run; users never see it.
            content, meta = self.ai(question[:40], TITLE)
            await writer.put("llm.ai.response", "message", content, meta)
        await writer.put("run.end", "outputs", {"turns": turns}, {**lead, "status": "success"})
        await writer.flush()
        await self.receipt(store, thread_id, run_id, tally)

    async def receipt(self, store: RunEventStore, thread_id: str, run_id: str, tally: _Tally) -> None:
        """Write the run's delivery receipt; sometimes twice, as a worker retrying a lost ack would."""
        rng = self.rng
        paths = [f"/mnt/user-data/outputs/report-{n}.md" for n in range(rng.randint(0, 2))]
        receipt = {"presented": len(paths), "paths": paths, "by_tool": {"present_files": paths}}
        for _ in range(2 if rng.random() < 0.3 else 1):
            record, created = await store.put_if_absent(
                thread_id=thread_id,
                run_id=run_id,
                event_type=RECEIPT,
                category="outputs",
                content=receipt,
                metadata={"caller": "run_worker"},
            )
            tally.acknowledged.append((record["thread_id"], record["seq"], record["event_id"]))
            if created:
                tally.receipts_created += 1
                tally.count(thread_id, 1)
            else:
                tally.receipts_repeated += 1


async def _agent_runs(
    store: RunEventStore, agent: _Agent, runs: int, threads: int, flush_every: int, tally: _Tally
) -> None:
    thread_ids = [f"agent{agent.index:02d}-thread{k + 1}" for k in range(threads)]
    for n in range(runs):
        thread_id = thread_ids[n % threads]
        run_id = f"agent{agent.index:02d}-run{n + 1:02d}"
        thread_runs = tally.threads.setdefault(thread_id, [])
        thread_runs.append(run_id)
        await agent.run(store, thread_id, run_id, len(thread_runs) == 1, flush_every, tally)


async def run_fleet(
    store: RunEventStore,
    *,
    agents: int = 8,
    runs_per_agent: int = 5,
    threads_per_agent: int = 1,
    seed: int = 7,
    flush_every: int = FLUSH_EVERY,
    first_agent: int = 0,
) -> FleetSummary:
    """Run `agents` concurrent agents, each writing `runs_per_agent` runs; return what was written."""
    # first_agent: fleets split across processes number their agents apart, so threads never collide
    # and each agent writes what it would have written in one process with the same seed.
    for name, value in (("agents", agents), ("runs_per_agent", runs_per_agent), ("flush_every", flush_every)):
        if value < 1:
            raise ValueError(f"{name}: must be >= 1, got {value}")
    if first_agent < 0:
        raise ValueError(f"first_agent: must be >= 0, got {first_agent}")
    if not 1 <= threads_per_agent <= runs_per_agent:
        raise ValueError(f"threads_per_agent: must be between 1 and runs_per_agent, got {threads_per_agent}")
    tally = _Tally()
    fleet = [_Agent(index, seed) for index in range(first_agent, first_agent + agents)]
    started = time.perf_counter()
    await asyncio.gather(
        *(_agent_runs(store, agent, runs_per_agent, threads_per_agent, flush_every, tally) for agent in fleet)
    )
    seconds = time.perf_counter() - started
    return FleetSummary(
        events=tally.events,
        batches=tally.batches,
        receipts_created=tally.receipts_created,
        receipts_repeated=tally.receipts_repeated,
        threads={thread: tally.threads[thread] for thread in sorted(tally.threads)},
        events_by_thread=dict(sorted(tally.events_by_thread.items())),
        seconds=seconds,
        acknowledged=tuple(tally.acknowledged),
    )


def combine(parts: Sequence[FleetSummary], seconds: float) -> FleetSummary:
    """One summary of fleets that ran side by side (on distinct threads) for `seconds` in all."""
    threads = {thread: runs for part in parts for thread, runs in part.threads.items()}
    by_thread = {thread: count for part in parts for thread, count in part.events_by_thread.items()}
    return FleetSummary(
        events=sum(part.events for part in parts),
        batches=sum(part.batches for part in parts),
        receipts_created=sum(part.receipts_created for part in parts),
        receipts_repeated=sum(part.receipts_repeated for part in parts),
        threads=dict(sorted(threads.items())),
        events_by_thread=dict(sorted(by_thread.items())),
        seconds=seconds,
        acknowledged=tuple(ack for part in parts for ack in part.acknowledged),
    )
