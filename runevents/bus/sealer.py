"""A bus store's encryption of its puts: each event's content and metadata sealed with its thread's key."""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from typing import Any

from cryptography.exceptions import InvalidTag

from runevents.crypto.keyring import NONCE_BYTES
from runevents.crypto.sealing import seal_put
from runevents.events import PreparedEvent
from runevents.lifecycle.blobs import BlobDamagedError, BlobMissingError
from runevents.lifecycle.offload import SEALED_BY
from runevents.tables.keys import ThreadKeys


def _blob_aad(key_id: str) -> bytes:
    return f"runevents-sealed-blob\0{key_id}".encode()


class Sealer:
    """Seals the puts of the categories it is given (all, by default) with their threads' live keys."""

    def __init__(self, keys: ThreadKeys, categories: Collection[str] | None = None) -> None:
        self.keys = keys
        self._categories = None if categories is None else frozenset(categories)

    def seals(self, category: str) -> bool:
        """Whether puts of `category` are sealed."""
        return self._categories is None or category in self._categories

    async def seal(self, events: Sequence[PreparedEvent], op: str) -> list[tuple[str, bytes] | None]:
        """Per event, its sealed value and its key's id, or None where its category stays clear."""
        sealing = [self.seals(event.category) for event in events]
        live = await self.keys.live(
            {event.thread_id for event, seals in zip(events, sealing, strict=True) if seals}
        )
        sealed: list[tuple[str, bytes] | None] = []
        for event, seals in zip(events, sealing, strict=True):
            if not seals:
                sealed.append(None)
                continue
            key_id, cipher = live[event.thread_id]
            sealed.append((key_id, seal_put(event, op, key_id, cipher)))
        return sealed

    async def seal_blobs(self, events: Sequence[PreparedEvent]) -> None:
        """Seal the whole contents (`full`) about to go to the blob store, with their threads' keys."""
        cut = [event for event in events if event.full is not None and self.seals(event.category)]
        if not cut:
            return
        live = await self.keys.live({event.thread_id for event in cut})
        for event in cut:
            assert event.full is not None
            key_id, cipher = live[event.thread_id]
            data, media_type = event.full
            nonce = os.urandom(NONCE_BYTES)
            event.full = (nonce + cipher.encrypt(nonce, data, _blob_aad(key_id)), media_type)
            event.full_sealed_by = key_id

    async def open_blob(self, pointer: dict[str, Any], data: bytes) -> bytes:
        """A sealed blob's bytes opened with the key its reference names."""
        key_id = str(pointer[SEALED_BY])
        cipher = await self.keys.cipher(key_id)
        if cipher is None:
            raise BlobMissingError(
                f"blob {pointer.get('sha256')} was erased: its data key {key_id} is destroyed"
            )
        try:
            return cipher.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], _blob_aad(key_id))
        except (InvalidTag, ValueError):
            raise BlobDamagedError(
                f"blob {pointer.get('sha256')} does not open with data key {key_id}"
            ) from None

    @staticmethod
    def clear_limit(limit: int) -> int:
        """What a record may take in the clear to fit in `limit` bytes once sealed (base64 grows 4/3)."""
        return (limit - 512) * 3 // 4
