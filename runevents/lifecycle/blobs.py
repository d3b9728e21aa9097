"""Blob stores: large contents kept whole outside the rows and the topic, addressed by their sha256.

A blob is written before the event that points at it, so no event ever points at a missing blob; the
same bytes written twice are one blob. Reading one checks its bytes against its address, so a blob
damaged on disk (or in the table) is an error, never a wrong content. Blobs no event refers to any more
are removed by the retention job (`delete`).

One interface, two stores: a directory of files here (the JSONL and single-node sql backends), and a
PostgreSQL table (`runevents.tables.blobs`: the sql and bus backends, with no infrastructure of their own).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import hashlib
import os
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

from runevents.errors import RunEventsError

_SHA256: Final = re.compile(r"[0-9a-f]{64}")


class BlobMissingError(RunEventsError, LookupError):
    """No blob has the asked address (never written, or collected since)."""


class BlobDamagedError(RunEventsError):
    """A stored blob's bytes do not hash to its address: it was damaged where it is kept."""


@dataclass(frozen=True, slots=True)
class BlobRef:
    """Where a blob is and what it holds: its sha256 (hex), its size in bytes and its media type."""

    sha256: str
    size: int
    media_type: str

    def document(self) -> dict[str, str | int]:
        """The reference as JSON values, as events carry it."""
        return {"sha256": self.sha256, "size": self.size, "media_type": self.media_type}


def address_of(data: bytes) -> str:
    """The address of `data`: its sha256, in hex."""
    return hashlib.sha256(data).hexdigest()


def check_address(sha256: str) -> str:
    """`sha256` if it is a blob address (64 lowercase hex digits); else `BlobMissingError`."""
    if not isinstance(sha256, str) or _SHA256.fullmatch(sha256) is None:
        raise BlobMissingError(f"{sha256!r} is not a blob address (64 lowercase hex digits)")
    return sha256


def _checked(sha256: str, data: bytes) -> bytes:
    if address_of(data) != sha256:
        raise BlobDamagedError(f"blob {sha256} is damaged: its {len(data)} bytes hash to something else")
    return data


class BlobStore(abc.ABC):
    """Keeps blobs by their sha256."""

    async def put(self, data: bytes, media_type: str) -> BlobRef:
        """Keep `data` (once, however often it is put); return its reference."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"a blob is bytes, got {type(data).__name__}")
        data = bytes(data)
        ref = BlobRef(address_of(data), len(data), media_type)
        await self._put(ref, data)
        return ref

    async def get(self, sha256: str) -> bytes:
        """The bytes of the blob at `sha256`; `BlobMissingError` if there is none."""
        return _checked(sha256, await self._get(check_address(sha256)))

    async def delete(self, sha256: str) -> bool:
        """Remove the blob at `sha256`; whether there was one."""
        return await self._delete(check_address(sha256))

    async def collect(self, sha256: str, *, written_before: datetime) -> bool:
        """Remove the blob at `sha256` unless it was written (or put again) at or after `written_before`;
        whether it went. The retention job's way: a blob put again for a new event is not collected."""
        return await self._collect(check_address(sha256), written_before)

    async def addresses(self, *, after: str | None = None, limit: int = 1000) -> list[str]:
        """The addresses of the blobs kept, ascending, after `after` (for collecting unreferenced ones)."""
        return await self._addresses(after, limit)

    @abc.abstractmethod
    async def _put(self, ref: BlobRef, data: bytes) -> None:
        """Keep `data` at `ref.sha256` unless a blob is there already."""

    @abc.abstractmethod
    async def _get(self, sha256: str) -> bytes:
        """The stored bytes at a checked address, not yet checked themselves."""

    @abc.abstractmethod
    async def _delete(self, sha256: str) -> bool:
        """Remove the blob at a checked address; whether there was one."""

    @abc.abstractmethod
    async def _addresses(self, after: str | None, limit: int) -> list[str]:
        """`addresses` of checked arguments."""

    async def _collect(self, sha256: str, written_before: datetime) -> bool:
        """`collect` of a checked address."""
        raise NotImplementedError(f"{type(self).__name__} cannot collect blobs")


class FileBlobStore(BlobStore):
    """Blobs as files `<directory>/<first two hex digits>/<sha256>`, each written whole and durably."""

    def __init__(self, directory: str | Path, *, fsync: bool = True) -> None:
        self.directory = Path(directory)
        self._fsync = fsync

    def _path(self, sha256: str) -> Path:
        return self.directory / sha256[:2] / sha256

    async def _put(self, ref: BlobRef, data: bytes) -> None:
        await asyncio.to_thread(self._write, self._path(ref.sha256), data)

    def _write(self, path: Path, data: bytes) -> None:
        if path.exists():
            # Content-addressed: what is there holds these very bytes (get checks it). Touched: a blob
            # put again for a new event is as young as that event to the retention job's collection.
            with contextlib.suppress(FileNotFoundError):
                os.utime(path)
                return
        path.parent.mkdir(parents=True, exist_ok=True)
        aside = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        with open(aside, "wb") as file:
            file.write(data)
            file.flush()
            if self._fsync:
                os.fsync(file.fileno())
        # Renamed into place whole: a reader sees no blob or all of it, never a part.
        os.replace(aside, path)
        if self._fsync:
            directory = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)

    async def _get(self, sha256: str) -> bytes:
        try:
            return await asyncio.to_thread(self._path(sha256).read_bytes)
        except FileNotFoundError:
            raise BlobMissingError(f"no blob {sha256} in {self.directory}") from None

    async def _delete(self, sha256: str) -> bool:
        path = self._path(sha256)
        try:
            await asyncio.to_thread(path.unlink)
        except FileNotFoundError:
            return False
        return True

    async def _addresses(self, after: str | None, limit: int) -> list[str]:
        return await asyncio.to_thread(self._list, after, limit)

    async def _collect(self, sha256: str, written_before: datetime) -> bool:
        return await asyncio.to_thread(self._remove_if_older, self._path(sha256), written_before.timestamp())

    @staticmethod
    def _remove_if_older(path: Path, before: float) -> bool:
        try:
            if path.stat().st_mtime >= before:
                return False
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def _list(self, after: str | None, limit: int) -> list[str]:
        if not self.directory.is_dir():
            return []
        found: list[str] = []
        for prefix in sorted(entry.name for entry in self.directory.iterdir() if len(entry.name) == 2):
            if after is not None and prefix < after[:2]:
                continue
            names = sorted(
                entry.name
                for entry in (self.directory / prefix).iterdir()
                if _SHA256.fullmatch(entry.name) and (after is None or entry.name > after)
            )
            found += names[: limit - len(found)]
            if len(found) >= limit:
                break
        return found
