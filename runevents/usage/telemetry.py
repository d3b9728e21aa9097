"""OpenTelemetry GenAI spans of the model calls a committed batch kept: a copy of the tables, best effort.

One span a call with known usage, named `chat {model}`, at the call's time, carrying the GenAI semantic
conventions' `gen_ai.usage.input_tokens`, `gen_ai.usage.output_tokens`, `gen_ai.response.model` and
`gen_ai.conversation.id` (the thread). Only the OpenTelemetry API is used (the `otel` extra): without
an SDK configured in the process (`opentelemetry-instrument`, or the program's own), the spans go
nowhere. Exported after the batch commits, so a crash in between loses them: the tables are the record.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

try:
    from opentelemetry import trace
except ImportError:  # the `otel` extra is not installed: nothing to export to
    trace = None  # type: ignore[assignment]


def available() -> bool:
    """Whether the OpenTelemetry API is installed."""
    return trace is not None


def export_calls(calls: Iterable[Mapping[str, Any]], tracer_provider: Any = None) -> None:
    """One GenAI span for each of `calls` (rows of token_usage_calls) whose usage is known.

    `tracer_provider`: an SDK's provider; None, the process's global one.
    """
    if trace is None:
        return
    tracer = trace.get_tracer("runevents.usage", tracer_provider=tracer_provider)
    for call in calls:
        if not call["usage_known"]:
            continue  # an unknown usage is no usage of 0 tokens: no span says otherwise
        at = int(call["created_at"].timestamp() * 1_000_000_000)
        attributes: dict[str, str | int] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.conversation.id": call["thread_id"],
            "runevents.run_id": call["run_id"],
        }
        if call["model"] is not None:
            attributes["gen_ai.response.model"] = call["model"]
        for name, column in (("input_tokens", "input_tokens"), ("output_tokens", "output_tokens")):
            if call[column] is not None:
                attributes[f"gen_ai.usage.{name}"] = call[column]
        span = tracer.start_span(
            f"chat {call['model'] or 'unknown'}",
            kind=trace.SpanKind.CLIENT,
            attributes=attributes,
            start_time=at,
        )
        span.end(end_time=at)
