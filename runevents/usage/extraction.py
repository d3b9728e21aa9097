"""Token usage out of one `llm.ai.response` record: LangChain's and OpenAI's shapes, in content or metadata.

Where it is looked for, first found wins:

1. `metadata["usage"]`: what deer-flow writes, LangChain's `usage_metadata` (or OpenAI's `usage`);
2. `content["usage_metadata"]`: the AIMessage dump's own;
3. `content["usage"]`: an OpenAI-format message;
4. `content["response_metadata"]["token_usage"]` (LangChain-OpenAI) or `["usage"]` (LangChain-Anthropic);
5. `metadata["token_usage"]`.

A record with none of these has no usage (`None`), which is not zero tokens. A usage whose counts are
negative or not integers is kept as a `Usage` with its `problem`: the call counts as one of unknown usage.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from runevents.events import AI_RESPONSE_EVENT_TYPES

# Keys any of the shapes carries: a dict with none of them is not a usage.
_COUNT_KEYS: Final = frozenset(
    {"input_tokens", "output_tokens", "total_tokens", "prompt_tokens", "completion_tokens"}
)
# Above this a count is taken for garbage: it would also overflow the table's bigint once summed, and
# JSON readers lose integers past 2**53.
MAX_COUNT: Final = 2**53
LEAD_AGENT: Final = "lead_agent"
SUBAGENT: Final = "subagent"
MIDDLEWARE: Final = "middleware"


class _BadCount(ValueError):
    """A count that is no non-negative integer; the message names it."""


@dataclass(frozen=True, slots=True)
class Usage:
    """The token counts of one model call; a count the record did not carry is None, never 0."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_creation_tokens: int | None = None
    reasoning_tokens: int | None = None
    # Why the usage the record carries cannot be believed (a negative or non-integer count): the call
    # then counts as one of unknown usage, and every count above is None.
    problem: str | None = None

    @property
    def known(self) -> bool:
        """Whether the counts can be believed."""
        return self.problem is None


def is_ai_response(event_type: str) -> bool:
    """Whether `event_type` is a model call's (deer-flow's `llm.ai.response`, the legacy `ai_message`)."""
    return event_type in AI_RESPONSE_EVENT_TYPES


def extract_usage(record: Mapping[str, Any]) -> Usage | None:
    """The token usage of a record (a stored record or a topic envelope), or None if it carries none."""
    metadata = record.get("metadata")
    return usage_of(record.get("content"), metadata if isinstance(metadata, Mapping) else {})


def usage_of(content: Any, metadata: Mapping[str, Any]) -> Usage | None:
    """The token usage in a record's `content` and `metadata`, or None if neither carries one."""
    found = _find(content, metadata)
    if found is None:
        return None
    where, usage = found
    if not isinstance(usage, Mapping):
        return Usage(problem=f"{where} is a {type(usage).__name__}, not an object")
    try:
        return _parse(usage, where)
    except _BadCount as error:
        return Usage(problem=str(error))


def model_of(content: Any, metadata: Mapping[str, Any]) -> str | None:
    """The model's name: `content.response_metadata.model_name` (or `.model`), else metadata's."""
    places: list[Any] = []
    if isinstance(content, Mapping):
        places.append(content.get("response_metadata"))
    places.append(metadata)
    for place in places:
        if isinstance(place, Mapping):
            for key in ("model_name", "model"):
                name = place.get(key)
                if isinstance(name, str) and name:
                    return name
    return None


def caller_of(metadata: Mapping[str, Any]) -> str | None:
    """`metadata["caller"]` as deer-flow writes it (`lead_agent`, `subagent:<name>`, `middleware:<tag>`)."""
    caller = metadata.get("caller")
    return None if caller is None else str(caller)


def caller_kind(caller: str | None) -> str:
    """deer-flow's caller buckets: `subagent:*` and `middleware:*` by prefix, anything else the lead agent."""
    if caller is not None:
        if caller.startswith(SUBAGENT + ":"):
            return SUBAGENT
        if caller.startswith(MIDDLEWARE + ":"):
            return MIDDLEWARE
    return LEAD_AGENT


def _find(content: Any, metadata: Mapping[str, Any]) -> tuple[str, Any] | None:
    """(where, value) of the first usage the record carries, in the order of the module's docstring."""
    places: list[tuple[str, Any, str]] = [("metadata.usage", metadata, "usage")]
    if isinstance(content, Mapping):
        places += [("content.usage_metadata", content, "usage_metadata"), ("content.usage", content, "usage")]
        response = content.get("response_metadata")
        if isinstance(response, Mapping):
            places += [
                ("content.response_metadata.token_usage", response, "token_usage"),
                ("content.response_metadata.usage", response, "usage"),
            ]
    places.append(("metadata.token_usage", metadata, "token_usage"))
    for where, holder, key in places:
        value = holder.get(key)
        if value is None:
            continue  # null is no usage, as absent is
        # An object without any count (an empty dict, some provider's other bookkeeping) is none either.
        if isinstance(value, Mapping) and not (_COUNT_KEYS & value.keys()):
            continue
        return where, value
    return None


def _parse(usage: Mapping[str, Any], where: str) -> Usage:
    """A usage dict of either shape as `Usage`; raise `_BadCount` on a count that is no count."""
    count = _counter(where)
    input_tokens = count(usage, "input_tokens", "prompt_tokens")
    output_tokens = count(usage, "output_tokens", "completion_tokens")
    total_tokens = count(usage, "total_tokens")
    if total_tokens is None and input_tokens is not None and output_tokens is not None:
        total_tokens = input_tokens + output_tokens
    input_details = _details(usage, where, "input_token_details", "prompt_tokens_details")
    output_details = _details(usage, where, "output_token_details", "completion_tokens_details")
    cache_read = count(input_details, "cache_read", "cached_tokens")
    if cache_read is None:
        cache_read = count(usage, "cache_read_input_tokens")  # Anthropic's own, at the top level
    cache_creation = count(input_details, "cache_creation")
    if cache_creation is None:
        cache_creation = count(usage, "cache_creation_input_tokens")
    return Usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        total_tokens=total_tokens,
        cache_read_tokens=cache_read,
        cache_creation_tokens=cache_creation,
        reasoning_tokens=count(output_details, "reasoning", "reasoning_tokens"),
    )


def _counter(where: str) -> Callable[..., int | None]:
    def count(holder: Mapping[str, Any], *keys: str) -> int | None:
        """The first of `keys` present in `holder` as a count; None if none is."""
        for key in keys:
            value = holder.get(key)
            if value is None:
                continue
            # bool is an int to Python, never a count; 12.0 is twelve, 12.5 and "12" are no count.
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int):
                raise _BadCount(f"{where}: {key} is {value!r}, not an integer")
            if value < 0:
                raise _BadCount(f"{where}: {key} is {value}, below 0")
            if value > MAX_COUNT:
                raise _BadCount(f"{where}: {key} is {value}, above {MAX_COUNT}")
            return value
        return None

    return count


def _details(usage: Mapping[str, Any], where: str, *keys: str) -> Mapping[str, Any]:
    """The first of the detail objects `keys` that is present, or an empty one."""
    for key in keys:
        value = usage.get(key)
        if value is None:
            continue
        if not isinstance(value, Mapping):
            raise _BadCount(f"{where}: {key} is a {type(value).__name__}, not an object")
        return value
    return {}
