"""Large contents kept whole: a cut content's bytes go to a blob store, and the event says where.

An event whose content was cut to its preview (a trace over `max_trace_content`) keeps the preview as
its content, as without a blob store; with one, the whole content is written there first, and the
event's metadata gets `content_blob` (sha256, size, media type) beside `content_truncated` and
`original_byte_length`, so `get_full_content` finds it. The blob goes before the event: no event
points at a blob that is not there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import orjson

from runevents.events import Content, PreparedEvent
from runevents.events.prepared import JSON_MEDIA_TYPE, TEXT_MEDIA_TYPE
from runevents.lifecycle.blobs import BlobMissingError, BlobStore

BLOB_KEY: Final = "content_blob"


async def offload(events: Sequence[PreparedEvent], blobs: BlobStore | None) -> list[PreparedEvent]:
    """`events`, those whose content was cut pointing at the blob now holding it whole."""
    if blobs is None or all(event.full is None for event in events):
        return list(events)
    kept = []
    for event in events:
        if event.full is None:
            kept.append(event)
            continue
        data, media_type = event.full
        ref = await blobs.put(data, media_type)
        kept.append(event.with_metadata({**event.metadata, BLOB_KEY: ref.document()}))
    return kept


async def full_content(record: dict[str, Any], blobs: BlobStore | None) -> Content:
    """A record's whole content: from its blob if it was cut and kept whole, else its content."""
    metadata = record["metadata"]
    pointer = metadata.get(BLOB_KEY)
    if not isinstance(pointer, dict) or not isinstance(pointer.get("sha256"), str):
        if metadata.get("content_truncated") is True:
            raise BlobMissingError(
                f"event {record['event_id']} was cut to its preview and its whole content was not kept "
                "(no blob store when it was written)"
            )
        content: Content = record["content"]
        return content
    if blobs is None:
        raise BlobMissingError(
            f"event {record['event_id']} keeps its whole content in blob {pointer['sha256']}, "
            "but this store has no blob store"
        )
    data = await blobs.get(pointer["sha256"])
    if pointer.get("media_type") == TEXT_MEDIA_TYPE:
        return data.decode()
    if pointer.get("media_type") == JSON_MEDIA_TYPE:
        whole: Content = orjson.loads(data)
        return whole
    raise BlobMissingError(f"blob {pointer['sha256']} holds {pointer.get('media_type')!r}, not a content")
