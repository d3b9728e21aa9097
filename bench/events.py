"""The events the benchmarks write, shaped like deer-flow's, and the rows the store makes of them."""

from __future__ import annotations

from typing import Any, Final

from runevents.events import prepare_event
from runevents.tables.writes import ROW_COLUMNS, event_row

COLUMNS: Final = ROW_COLUMNS

Event = dict[str, Any]


# The shape of what deer-flow's journal writes: the human turn, the AI answer (a LangChain message's
# model_dump with its id), a subagent step (task_id in metadata) and a middleware trace.
def make_event(thread_id: str, run_id: str, index: int) -> Event:
    """One event of a run; four kinds in turn, half of them messages, each row about 600 bytes."""
    common = {"thread_id": thread_id, "run_id": run_id}
    kind = index % 4
    if kind == 0:
        content: Any = {
            "content": f"Q{index}: why did storage grow last quarter, which tenants drove most of it, and "
            "what would it cost to keep ninety days of run events instead of thirty for all of them? "
            "Please break it down by tenant and by table.",
            "additional_kwargs": {},
            "response_metadata": {},
            "type": "human",
            "name": None,
            "id": f"msg-{thread_id}-{index:07d}",
        }
        metadata: dict[str, Any] = {"caller": "lead_agent"}
        return {
            **common,
            "event_type": "llm.human.input",
            "category": "message",
            "content": content,
            "metadata": metadata,
        }
    if kind == 1:
        content = {
            "content": f"A{index}: storage grew 18% quarter over quarter, mostly event payloads of three "
            "tenants (acme, globex, initech); compaction was paused for two weeks during the migration. "
            "Ninety days of retention would roughly triple the event tables, about 310 GB at today's rate; "
            "acme alone would add 80 GB.",
            "additional_kwargs": {},
            "response_metadata": {"finish_reason": "stop", "model_name": "gpt-4o"},
            "type": "ai",
            "id": f"msg-{thread_id}-{index:07d}",
            "tool_calls": [],
        }
        metadata = {
            "caller": "lead_agent",
            "latency_ms": 812 + index % 97,
            "llm_call_index": index % 7,
            "usage": {"input_tokens": 1843, "output_tokens": 96},
        }
        return {
            **common,
            "event_type": "llm.ai.response",
            "category": "message",
            "content": content,
            "metadata": metadata,
        }
    if kind == 2:
        content = {
            "chain": "research_subagent",
            "step": index,
            "tool": "sql_query",
            "input": "SELECT tenant, sum(bytes) FROM usage WHERE quarter = '2026Q3' GROUP BY 1 ORDER BY 2",
            "output": "acme 41.2 GB; globex 18.7 GB; initech 9.9 GB; umbrella 7.1 GB; hooli 6.6 GB; "
            "stark 5.0 GB; wayne 4.8 GB; 208 others 30.4 GB (rows: 215, scanned 1.9 GB in 2.3 s)",
            "elapsed_ms": 233,
        }
        metadata = {"caller": "subagent:research", "task_id": f"task-{index // 20:05d}", "attempt": 1}
        return {
            **common,
            "event_type": "subagent.step",
            "category": "trace",
            "content": content,
            "metadata": metadata,
        }
    content = {
        "middleware": "summarization",
        "decision": "kept",
        "window_tokens": 12_288,
        "messages_in_window": 24,
        "note": "context under threshold, nothing summarized; memory store refreshed from last 3 turns",
        "kept_ids": [f"msg-{thread_id}-{max(index - n, 0):07d}" for n in (1, 2, 3, 5)],
    }
    metadata = {"caller": "middleware:summarization"}
    return {
        **common,
        "event_type": "middleware:summary",
        "category": "trace",
        "content": content,
        "metadata": metadata,
    }


def table_row(event: Event, seq: int) -> tuple[Any, ...]:
    """The `run_events` row the store writes for `event` at `seq`, built by the store's own `event_row`."""
    return event_row(prepare_event(event), seq)
