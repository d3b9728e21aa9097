"""How far a bus store cuts a content (kept whole in its blob store) so that its record fits the topic."""

from __future__ import annotations

from typing import Final

from runevents.bus.producer import EventProducer
from runevents.events import PreparedEvent
from runevents.lifecycle.offload import OVERSIZE_PREVIEW_BYTES, PreviewFor

# More than a record holds besides its content and metadata (four ids of at most 64 characters, the
# type, category, time and the envelope's keys, Kafka's framing): an event this far below the topic's
# limit is not encoded to know its size.
_ENVELOPE_BOUND: Final = 4096
# What a cut content's metadata gains: content_truncated, original_byte_length and the blob's reference.
_REFERENCE_BYTES: Final = 512


def preview_for(producer: EventProducer, limit: int) -> PreviewFor:
    """How far to cut an event's content so that its record fits in `limit` bytes (None: it fits)."""

    def preview(event: PreparedEvent) -> int | None:
        if len(event.content_json) + len(event.metadata_json) + _ENVELOPE_BOUND <= limit:
            return None  # far from the limit: not worth encoding to know
        size = producer.record_size(event)
        if size <= limit:
            return None
        # What the record keeps besides the content, and the blob's reference the metadata gains; a
        # preview's JSON can be twice its UTF-8 (quotes, backslashes, newlines escaped).
        room = limit - (size - len(event.content_json)) - _REFERENCE_BYTES
        return max(min(OVERSIZE_PREVIEW_BYTES, room // 2), 0)

    return preview
