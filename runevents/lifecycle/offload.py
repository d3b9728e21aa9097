"""Large contents kept whole: a cut content's bytes go to a blob store, and the event says where.

An event whose content was cut to its preview (a trace over `max_trace_content`) keeps the preview as
its content, as without a blob store; with one, the whole content is written there first, and the
event's metadata gets `content_blob` (sha256, size, media type) beside `content_truncated` and
`original_byte_length`, so `get_full_content` finds it. The blob goes before the event: no event
points at a blob that is not there.

Beyond traces, a store can cut any category's content over a size of its own (`offload_over`), and
the bus cuts a content that would make its record larger than the topic takes, instead of refusing
the event: both only with a blob store, since without one the rest of the content would be lost.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

import orjson

from runevents.events import MAX_CATEGORY_LENGTH, Content, PreparedEvent
from runevents.events.prepared import JSON_MEDIA_TYPE, TEXT_MEDIA_TYPE, cut_to_preview
from runevents.lifecycle.blobs import BlobMissingError, BlobStore

BLOB_KEY: Final = "content_blob"
# In a blob's reference: the id of the data key its bytes are sealed with (runevents.crypto.sealing).
SEALED_BY: Final = "sealed_by"
# Opens a sealed blob's bytes, given its reference.
BlobOpener = Callable[[dict[str, Any], bytes], Awaitable[bytes]]
# The preview a content too large for its record keeps at most (deer-flow's trace cut).
OVERSIZE_PREVIEW_BYTES: Final = 10_240


def offload_sizes(over: Mapping[str, int] | None, blobs: BlobStore | None) -> dict[str, int] | None:
    """`over` (category: bytes past which its contents are kept whole), checked against `blobs`."""
    if not over:
        return None
    if blobs is None:
        raise ValueError("offload_over needs a blob store (blobs=): without one, what is cut is lost")
    checked = {}
    for category, size in over.items():
        if not isinstance(category, str) or not 0 < len(category) <= MAX_CATEGORY_LENGTH:
            raise ValueError(f"offload_over's keys are categories, got {category!r}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"offload_over[{category!r}] is a size in bytes of at least 1, got {size!r}")
        checked[category] = size
    return checked


# Given an event, the size of the preview it must be cut to so that it fits where it goes, or None.
PreviewFor = Callable[[PreparedEvent], int | None]


def _cut(event: PreparedEvent, over: Mapping[str, int] | None, fit: PreviewFor | None) -> PreparedEvent:
    """`event`, its content cut to a preview if it is over its category's size or will not `fit`."""
    limit = None if over is None else over.get(event.category)
    needed = None if fit is None else fit(event)
    if needed is not None:
        limit = needed if limit is None else min(limit, needed)
    # The JSON is at least as long as the UTF-8 of a str content: below the limit, nothing to look at.
    if limit is None or len(event.content_json) <= limit:
        return event
    return cut_to_preview(event, limit)


async def offload(
    events: Sequence[PreparedEvent],
    blobs: BlobStore | None,
    *,
    over: Mapping[str, int] | None = None,
    fit: PreviewFor | None = None,
    seal: Callable[[Sequence[PreparedEvent]], Awaitable[None]] | None = None,
) -> list[PreparedEvent]:
    """`events`, each whose content was cut (or is now: over its category's size in `over`, or cut to
    the preview `fit` asks for) pointing at the blob that holds it whole; `seal` seals the whole
    contents (`full`) in place before they are kept."""
    if blobs is None:
        return list(events)
    if over is not None or fit is not None:
        events = [_cut(event, over, fit) if event.full is None else event for event in events]
    if all(event.full is None for event in events):
        return list(events)
    if seal is not None:
        await seal(events)
    kept = []
    for event in events:
        if event.full is None:
            kept.append(event)
            continue
        data, media_type = event.full
        ref = await blobs.put(data, media_type)
        pointer: dict[str, Any] = ref.document()
        if event.full_sealed_by is not None:
            pointer[SEALED_BY] = event.full_sealed_by
        kept.append(event.with_metadata({**event.metadata, BLOB_KEY: pointer}))
    return kept


def blob_address(metadata: Mapping[str, Any]) -> str | None:
    """The address of the blob an event's `metadata` says holds its whole content, if any."""
    pointer = metadata.get(BLOB_KEY)
    if isinstance(pointer, dict) and isinstance(address := pointer.get("sha256"), str):
        return address
    return None


async def full_content(
    record: dict[str, Any], blobs: BlobStore | None, opener: BlobOpener | None = None
) -> Content:
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
    if SEALED_BY in pointer:
        if opener is None:
            raise BlobMissingError(
                f"blob {pointer['sha256']} is sealed with data key {pointer[SEALED_BY]}, and this store "
                "has no keyring to open it"
            )
        data = await opener(pointer, data)
    if pointer.get("media_type") == TEXT_MEDIA_TYPE:
        return data.decode()
    if pointer.get("media_type") == JSON_MEDIA_TYPE:
        whole: Content = orjson.loads(data)
        return whole
    raise BlobMissingError(f"blob {pointer['sha256']} holds {pointer.get('media_type')!r}, not a content")
