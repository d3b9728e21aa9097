"""`runevents usage run --otel`: the GenAI spans of the calls a batch kept, received by a real SDK."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from runevents.usage import telemetry

AT = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)


def call(**overrides: Any) -> dict[str, Any]:
    """A `token_usage_calls` row as a committed batch hands it over."""
    return {
        "thread_id": "t1",
        "run_id": "r1",
        "model": "gpt-4o",
        "input_tokens": 120,
        "output_tokens": 30,
        "usage_known": True,
        "created_at": AT,
        **overrides,
    }


def test_each_call_with_known_usage_is_one_genai_span() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    rows = [
        call(),
        call(thread_id="t2", model=None, output_tokens=None),
        call(usage_known=False, input_tokens=None, output_tokens=None),  # unknown: no span claims 0
    ]
    telemetry.export_calls(rows, tracer_provider=provider)
    spans = exporter.get_finished_spans()
    assert [span.name for span in spans] == ["chat gpt-4o", "chat unknown"]
    assert dict(spans[0].attributes or {}) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.conversation.id": "t1",
        "runevents.run_id": "r1",
        "gen_ai.response.model": "gpt-4o",
        "gen_ai.usage.input_tokens": 120,
        "gen_ai.usage.output_tokens": 30,
    }
    assert "gen_ai.usage.output_tokens" not in (spans[1].attributes or {})
    assert spans[0].start_time == int(AT.timestamp()) * 1_000_000_000
