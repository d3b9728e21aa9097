"""A consumer record as what a batch applies (a put, a put-if-absent or a delete), or why it cannot be."""

from __future__ import annotations

from aiokafka.structs import ConsumerRecord

from runevents.events import PreparedEvent, UndecodableRecordError, decode_record
from runevents.events.envelope import Ops

# What a record other than a plain put applies: a delete, an expiry, a thread's retention policy, or
# `(PUT_IF_ABSENT, prepared)`.
Op = Ops | tuple[str, PreparedEvent]


def decode_consumer_record(record: ConsumerRecord, *, max_trace_content: int | None) -> PreparedEvent | Op:
    """The record's value decoded; raise `UndecodableRecordError` if it is not keyed by its thread id."""
    decoded = decode_record(record.value, max_trace_content=max_trace_content)
    thread_id = (decoded[1] if isinstance(decoded, tuple) else decoded).thread_id
    if record.key != thread_id.encode():
        # Keyed otherwise, a thread's records could sit in two partitions, numbered twice.
        raise UndecodableRecordError(f"the record's key {record.key!r} is not its thread id {thread_id!r}")
    return decoded
