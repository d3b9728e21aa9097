"""The usage consumer's stored offsets: the projector's positions and fence, on a table of the usage group's.

The rule is the projector's (runevents/bus/projector/offsets.py): each partition's next offset is a row,
read and sought to on assignment, and moved in the transaction that writes the batch's usage rows,
only if it still is where the batch began. Kafka's committed offsets are never used. The rows live in
`token_usage_offsets`, keyed by the consumer group, so the projector's offsets are never touched.
"""

from __future__ import annotations

from typing import Final

from runevents.bus.projector.offsets import OffsetTable
from runevents.tables.schema import token_usage_offsets

# No NOTIFY: nobody waits on usage.
USAGE_OFFSETS: Final = OffsetTable(token_usage_offsets, "consumer_group", "usage group", notify=False)
