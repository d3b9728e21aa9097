"""A consumer record as what a batch applies (a put, a put-if-absent or a delete), or why it cannot be."""

from __future__ import annotations

from aiokafka.structs import ConsumerRecord
from sqlalchemy.ext.asyncio import AsyncConnection

from runevents.bus.projector.offsets import Owned
from runevents.crypto.keyring import KeyUnavailableError
from runevents.crypto.sealing import DataKeys, decode_sealed, sealed_key
from runevents.events import PreparedEvent, UndecodableRecordError, decode_record
from runevents.events.envelope import Ops
from runevents.tables.keys import ThreadKeys

# What a record other than a plain put applies: a delete, an expiry, a thread's retention policy, or
# `(PUT_IF_ABSENT, prepared)`.
Op = Ops | tuple[str, PreparedEvent]


def decode_consumer_record(
    record: ConsumerRecord, *, max_trace_content: int | None, keys: DataKeys | None = None
) -> PreparedEvent | Op:
    """The record's value decoded (a sealed one opened with `keys`); raise `UndecodableRecordError` if it
    is not keyed by its thread id."""
    # Only a batch that named a key holds sealed records: the others' headers are not looked at again.
    if keys and sealed_key(record.headers) is not None:
        if record.value is None:
            raise UndecodableRecordError("the record has no value")
        decoded: PreparedEvent | Op = decode_sealed(record.value, keys, max_trace_content=max_trace_content)
    else:
        decoded = decode_record(record.value, max_trace_content=max_trace_content)
    thread_id = (decoded[1] if isinstance(decoded, tuple) else decoded).thread_id
    if record.key != thread_id.encode():
        # Keyed otherwise, a thread's records could sit in two partitions, numbered twice.
        raise UndecodableRecordError(f"the record's key {record.key!r} is not its thread id {thread_id!r}")
    return decoded


async def data_keys(
    keys: ThreadKeys | None, connection: AsyncConnection, owned: Owned, topic: str
) -> DataKeys:
    """The ciphers of the data keys a batch's sealed records name, read in the batch's transaction.

    Never cached: a key destroyed (its thread erased) opens nothing from the next batch on.
    """
    named = {key for _, records, _, _ in owned for record in records if (key := sealed_key(record.headers))}
    if not named:
        return {}
    if keys is None:
        # Not a dead letter: a consumer given no keyring must stop, not discard what it cannot read.
        raise KeyUnavailableError(
            f"{len(named)} data keys name sealed records of {topic!r}, and this consumer has no keyring: "
            "give it the KEK (RUNEVENTS_KEK or RUNEVENTS_KEK_FILE)"
        )
    return await keys.ciphers(connection, named)
