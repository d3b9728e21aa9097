"""`extract_usage` on every shape the producers write: LangChain's and OpenAI's, in content or metadata."""

from __future__ import annotations

from typing import Any

import pytest

from runevents.usage import Usage, caller_kind, extract_usage
from runevents.usage.extraction import MAX_COUNT, model_of

LANGCHAIN = {
    "input_tokens": 120,
    "output_tokens": 30,
    "total_tokens": 150,
    "input_token_details": {"cache_read": 100, "cache_creation": 5, "audio": 0},
    "output_token_details": {"reasoning": 12, "audio": 0},
}
OPENAI = {
    "prompt_tokens": 120,
    "completion_tokens": 30,
    "total_tokens": 150,
    "prompt_tokens_details": {"cached_tokens": 100},
    "completion_tokens_details": {"reasoning_tokens": 12},
}
FULL = Usage(120, 30, 150, 100, 5, 12)
OPENAI_FULL = Usage(120, 30, 150, 100, None, 12)


def record(content: Any = "", **metadata: Any) -> dict[str, Any]:
    """A stored record's fields that matter here."""
    return {"event_type": "llm.ai.response", "content": content, "metadata": metadata}


SHAPES: list[tuple[str, dict[str, Any], Usage | None]] = [
    ("deer-flow: LangChain in metadata", record(usage=LANGCHAIN), FULL),
    ("LangChain in content.usage_metadata", record({"type": "ai", "usage_metadata": LANGCHAIN}), FULL),
    ("OpenAI in content.usage", record({"role": "assistant", "usage": OPENAI}), OPENAI_FULL),
    ("OpenAI in metadata.usage", record(usage=OPENAI), OPENAI_FULL),
    (
        "LangChain-OpenAI: response_metadata.token_usage",
        record({"type": "ai", "response_metadata": {"token_usage": OPENAI, "model_name": "gpt-4o"}}),
        OPENAI_FULL,
    ),
    (
        "Anthropic: response_metadata.usage with its cache keys",
        record(
            {
                "response_metadata": {
                    "usage": {
                        "input_tokens": 10,
                        "output_tokens": 2,
                        "cache_read_input_tokens": 7,
                        "cache_creation_input_tokens": 3,
                    }
                }
            }
        ),
        Usage(10, 2, 12, 7, 3, None),
    ),
    (
        "metadata.token_usage",
        record(token_usage={"prompt_tokens": 4, "completion_tokens": 1}),
        Usage(4, 1, 5),
    ),
    ("no total: input + output", record(usage={"input_tokens": 7, "output_tokens": 3}), Usage(7, 3, 10)),
    ("only output: no total made up", record(usage={"output_tokens": 3}), Usage(None, 3, None)),
    (
        "zero is a count, not a missing one",
        record(usage={"input_tokens": 0, "output_tokens": 0}),
        Usage(0, 0, 0),
    ),
    (
        "details null",
        record(usage={**LANGCHAIN, "input_token_details": None}),
        Usage(120, 30, 150, None, None, 12),
    ),
    ("a whole float is a count", record(usage={"input_tokens": 12.0, "output_tokens": 1}), Usage(12, 1, 13)),
    (
        "metadata first, then content",
        record({"usage_metadata": {"input_tokens": 1, "output_tokens": 1}}, usage=LANGCHAIN),
        FULL,
    ),
    ("no usage anywhere", record({"type": "ai", "content": "hi"}, caller="lead_agent"), None),
    ("usage null", record(usage=None), None),
    ("usage without a count", record(usage={"model": "x"}), None),
    ("string content", record("just text"), None),
    ("list content", record([{"type": "text", "text": "hi"}]), None),
    (
        "no metadata at all",
        {"content": {"usage_metadata": {"input_tokens": 2, "output_tokens": 2}}},
        Usage(2, 2, 4),
    ),
]


@pytest.mark.parametrize(("shape", "given", "expected"), SHAPES, ids=[shape[0] for shape in SHAPES])
def test_each_shape(shape: str, given: dict[str, Any], expected: Usage | None) -> None:
    assert extract_usage(given) == expected


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("negative", record(usage={"input_tokens": -1, "output_tokens": 3}), "input_tokens is -1, below 0"),
    (
        "a string",
        record(usage={"input_tokens": "12", "output_tokens": 3}),
        "input_tokens is '12', not an integer",
    ),
    ("a fraction", record(usage={"input_tokens": 1.5, "output_tokens": 3}), "not an integer"),
    ("a bool", record(usage={"input_tokens": True, "output_tokens": 3}), "not an integer"),
    ("too large", record(usage={"input_tokens": MAX_COUNT + 1, "output_tokens": 3}), "above"),
    (
        "bad details",
        record(usage={**LANGCHAIN, "output_token_details": {"reasoning": -2}}),
        "reasoning is -2",
    ),
    ("details not an object", record(usage={**LANGCHAIN, "input_token_details": [1]}), "not an object"),
    ("usage not an object", record(usage="150 tokens"), "metadata.usage is a str, not an object"),
    ("OpenAI in content, negative", record({"usage": {**OPENAI, "total_tokens": -150}}), "content.usage"),
]


@pytest.mark.parametrize(("case", "given", "problem"), BAD, ids=[case[0] for case in BAD])
def test_a_bad_count_makes_the_call_unknown_not_a_crash(
    case: str, given: dict[str, Any], problem: str
) -> None:
    usage = extract_usage(given)
    assert usage is not None
    assert not usage.known
    assert problem in (usage.problem or "")
    # Nothing of a call with a bad count is believed.
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (None, None, None)


@pytest.mark.parametrize(
    ("content", "metadata", "model"),
    [
        ({"response_metadata": {"model_name": "gpt-4o", "model": "other"}}, {}, "gpt-4o"),
        ({"response_metadata": {"model": "claude-sonnet-4"}}, {}, "claude-sonnet-4"),
        ({"response_metadata": {}}, {"model_name": "from-metadata"}, "from-metadata"),
        ("text", {}, None),
        ({"response_metadata": {"model_name": ""}}, {}, None),
    ],
)
def test_the_model_name(content: Any, metadata: dict[str, Any], model: str | None) -> None:
    assert model_of(content, metadata) == model


@pytest.mark.parametrize(
    ("caller", "kind"),
    [
        ("lead_agent", "lead_agent"),
        ("subagent:research", "subagent"),
        ("middleware:title", "middleware"),
        (None, "lead_agent"),
        ("subagentish", "lead_agent"),
        ("something-else", "lead_agent"),
    ],
)
def test_callers_fall_into_deer_flows_three_buckets(caller: str | None, kind: str) -> None:
    assert caller_kind(caller) == kind
