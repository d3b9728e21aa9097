"""deer-flow-shaped events with usage in every shape, and the usage expected of them, counted on the side.

The expectation is worked out here from the numbers each event is made of, never by
`runevents.usage.extract_usage`: the consumer's totals are checked against an independent sum.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Final

import asyncpg

from runevents.bus.store import BusRunEventStore
from tests.bus.test_projector import dsn

MODELS: Final = ("gpt-4o", "claude-sonnet-4", "deepseek-v3")
CALLERS: Final = ("lead_agent", "subagent:research", "middleware:title")
THREADS: Final = 40
# (total, input, output, cache_read, reasoning, calls, calls without usage) of one thread.
COUNTS: Final = 7

# The consumer's per-thread totals, in the order of Expected.threads' tuples.
THREAD_TOTALS: Final = (
    "SELECT thread_id, coalesce(sum(total_tokens), 0), coalesce(sum(input_tokens), 0), "
    "coalesce(sum(output_tokens), 0), coalesce(sum(cache_read_tokens), 0), "
    "coalesce(sum(reasoning_tokens), 0), count(*), count(*) FILTER (WHERE NOT usage_known) "
    "FROM {schema}.token_usage_calls GROUP BY thread_id"
)


def thread_name(number: int) -> str:
    """The id of thread `number`."""
    return f"t{number:03d}"


def user_of(thread: str) -> str:
    """Each thread is one user's (u0, u1, u2)."""
    return f"u{int(thread[1:]) % 3}"


@dataclass
class Expected:
    """Per thread, per run: [total, input, output, cache_read, reasoning, calls, calls without usage]."""

    runs: dict[str, dict[str, list[int]]] = field(default_factory=lambda: defaultdict(dict))

    def add(self, thread: str, run: str, counts: tuple[int, ...]) -> None:
        """Count one call in."""
        run_counts = self.runs[thread].setdefault(run, [0] * COUNTS)
        for index, value in enumerate(counts):
            run_counts[index] += value

    def delete_thread(self, thread: str) -> None:
        """The thread's usage goes."""
        self.runs.pop(thread, None)

    def delete_run(self, thread: str, run: str) -> None:
        """One run's usage goes."""
        self.runs.get(thread, {}).pop(run, None)

    def threads(self) -> dict[str, tuple[int, ...]]:
        """Per thread with calls: the counts summed over its runs."""
        summed = {}
        for thread, runs in self.runs.items():
            if runs:
                summed[thread] = tuple(sum(counts[i] for counts in runs.values()) for i in range(COUNTS))
        return summed


def model_call(rng: random.Random, thread: str, run: str, expected: Expected) -> dict[str, Any]:
    """One `llm.ai.response` event in one of the shapes deer-flow and its models write; counted."""
    model = rng.choice(MODELS)
    caller = rng.choice(CALLERS)
    i, o = rng.randrange(1, 5000), rng.randrange(1, 2000)
    cache, reasoning = rng.randrange(0, i), rng.randrange(0, o)
    content: dict[str, Any] = {
        "type": "ai",
        "id": f"run-{rng.getrandbits(64):x}",
        "content": "an answer",
        "response_metadata": {"model_name": model} if rng.random() < 0.7 else {"model": model},
    }
    metadata: dict[str, Any] = {"caller": caller}
    shape = rng.randrange(7)
    counts: tuple[int, ...]
    if shape == 0:  # deer-flow: LangChain's usage_metadata in metadata, with details
        metadata["usage"] = {
            "input_tokens": i,
            "output_tokens": o,
            "total_tokens": i + o,
            "input_token_details": {"cache_read": cache},
            "output_token_details": {"reasoning": reasoning},
        }
        counts = (i + o, i, o, cache, reasoning, 1, 0)
    elif shape == 1:  # the AIMessage dump's own usage_metadata, no total: input + output
        content["usage_metadata"] = {"input_tokens": i, "output_tokens": o}
        counts = (i + o, i, o, 0, 0, 1, 0)
    elif shape == 2:  # OpenAI's usage in content, a total of its own
        content["usage"] = {
            "prompt_tokens": i,
            "completion_tokens": o,
            "total_tokens": i + o + 7,
            "prompt_tokens_details": {"cached_tokens": cache},
            "completion_tokens_details": {"reasoning_tokens": reasoning},
        }
        counts = (i + o + 7, i, o, cache, reasoning, 1, 0)
    elif shape == 3:  # LangChain-OpenAI: response_metadata.token_usage
        content["response_metadata"]["token_usage"] = {"prompt_tokens": i, "completion_tokens": o}
        counts = (i + o, i, o, 0, 0, 1, 0)
    elif shape == 4:  # OpenAI's shape in metadata
        metadata["usage"] = {"prompt_tokens": i, "completion_tokens": o, "total_tokens": i + o}
        counts = (i + o, i, o, 0, 0, 1, 0)
    elif shape == 5:  # no usage at all: a call of unknown usage, not 0 tokens
        counts = (0, 0, 0, 0, 0, 1, 1)
    else:  # garbage: unknown too, and the consumer goes on
        metadata["usage"] = {"input_tokens": -3, "output_tokens": "many"}
        counts = (0, 0, 0, 0, 0, 1, 1)
    expected.add(thread, run, counts)
    return _event(thread, run, "llm.ai.response", "message", content, metadata)


def other_event(rng: random.Random, thread: str, run: str) -> dict[str, Any]:
    """A record that is no model call (it may even carry a usage-like dict: it must not count)."""
    kind = rng.randrange(3)
    if kind == 0:
        return _event(thread, run, "llm.human.input", "message", {"type": "human", "content": "hi"}, {})
    if kind == 1:
        return _event(thread, run, "llm.start", "trace", "step", {"usage": {"input_tokens": 99}})
    return _event(thread, run, "tool.result", "trace", {"ok": True}, {})


def _event(
    thread: str, run: str, event_type: str, category: str, content: Any, metadata: dict[str, Any]
) -> dict[str, Any]:
    return {
        "thread_id": thread,
        "run_id": run,
        "event_type": event_type,
        "category": category,
        "content": content,
        "metadata": metadata,
        "user_id": user_of(thread),
    }


def events(rng: random.Random, count: int, expected: Expected) -> list[dict[str, Any]]:
    """`count` events over `THREADS` threads and four runs each: about two in three are model calls."""
    made = []
    for _ in range(count):
        thread = thread_name(rng.randrange(THREADS))
        run = f"r{rng.randrange(4)}"
        made.append(
            model_call(rng, thread, run, expected) if rng.random() < 0.65 else other_event(rng, thread, run)
        )
    return made


async def publish(store: BusRunEventStore, rng: random.Random, count: int, expected: Expected) -> None:
    """Publish `count` events, in batches, and wait for the broker's acknowledgement."""
    for start in range(0, count, 500):
        await store.publish_batch(events(rng, min(500, count - start), expected))


async def thread_totals(url: str, schema: str = "public") -> dict[str, tuple[int, ...]]:
    """The consumer's per-thread totals, as `Expected.threads()` gives them."""
    connection = await asyncpg.connect(dsn(url))
    try:
        rows = await connection.fetch(THREAD_TOTALS.format(schema=schema))
    finally:
        await connection.close()
    return {row[0]: tuple(int(value) for value in row[1:]) for row in rows}
