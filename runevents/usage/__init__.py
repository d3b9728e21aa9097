"""Token usage off the topic: a second kind of consumer, beside the projector, that anyone can run.

`runevents usage run` (or `UsageConsumer` in a program of your own) reads the run-events topic in a
consumer group of its own and keeps one row a model call (`llm.ai.response`) in `token_usage_calls`,
exactly once in effect by the projector's rule: the group's offsets live in `token_usage_offsets` and
move in the transaction that writes the rows. `UsageReader` sums them per thread, model, caller and run.

`extraction` finds the usage in a record; `offsets` keeps the group's offsets; `batch` applies a batch;
`consumer` runs the loop; `reader` reads the sums back. docs/usage.md has the details.
"""

from runevents.usage.consumer import DEFAULT_GROUP, UsageConsumer
from runevents.usage.extraction import Usage, caller_kind, extract_usage, usage_of
from runevents.usage.reader import UsageReader, summarize

__all__ = [
    "DEFAULT_GROUP",
    "Usage",
    "UsageConsumer",
    "UsageReader",
    "caller_kind",
    "extract_usage",
    "summarize",
    "usage_of",
]
