"""The projector: consumes the topic and writes the read tables, exactly once in effect.

Kafka delivers at least once; the projection is exactly once because every batch is one PostgreSQL
transaction that also moves the partition's stored offset, and commits only if that offset is still
where the batch began (a consumer that lost its partition in a rebalance cannot write a stale batch).
On assignment the projector seeks to the stored offsets; Kafka's own committed offsets are never used.
A second copy of an `event_id` is skipped. seq comes from the thread's counter row: a thread's
records are all in one partition, so one projector at a time numbers them, in log order. Deletes and
put_if_absent are applied in log order between the puts around them, and their outcomes are stored
for the writer waiting on them. A record that cannot be decoded goes to the dead-letter topic and
table with its reason, and the partition moves on.

`loop` runs the projector; `offsets` holds the stored offsets and the fence; `batch` applies one
batch; `decoding` turns a record into what the batch applies; `dead_letters` sets aside the rest.
"""

from runevents.bus.projector.loop import Projector

__all__ = ["Projector"]
