"""Blob stores (files, PostgreSQL, S3): content-addressed, written whole, checked on every read."""

from __future__ import annotations

import asyncio
import hashlib
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import update

from runevents.devstack.s3 import REGION, LocalS3
from runevents.lifecycle.blobs import BlobDamagedError, BlobMissingError, BlobStore, FileBlobStore
from runevents.lifecycle.s3blobs import S3BlobStore
from runevents.tables.blobs import PostgresBlobStore
from runevents.tables.migrate import upgrade_async
from runevents.tables.schema import blobs
from runevents.tables.sql import engine_for


@pytest.fixture(params=["files", "postgresql", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path, pg_database: str) -> AsyncIterator[BlobStore]:
    """A blob store of each kind, empty."""
    if request.param == "files":
        yield FileBlobStore(tmp_path / "blobs")
        return
    if request.param == "s3":
        request.getfixturevalue("s3_credentials")
        server: LocalS3 = request.getfixturevalue("local_s3")
        # A prefix of each test's own in the session's bucket: empty, whatever other tests left.
        s3 = S3BlobStore(
            server.bucket, prefix=f"test-{uuid.uuid4().hex}/", endpoint_url=server.endpoint, region=REGION
        )
        yield s3
        await s3.close()
        return
    await upgrade_async(pg_database)
    engine = engine_for(pg_database)
    try:
        yield PostgresBlobStore(engine)
    finally:
        await engine.dispose()


async def test_a_blob_is_kept_once_by_its_sha256_and_read_back_whole(store: BlobStore) -> None:
    data = b"x" * 300_000 + "é".encode()
    ref = await store.put(data, "text/plain; charset=utf-8")
    assert ref.sha256 == hashlib.sha256(data).hexdigest()
    assert (ref.size, ref.media_type) == (300_002, "text/plain; charset=utf-8")
    media = "text/plain; charset=utf-8"
    assert ref.document() == {"sha256": ref.sha256, "size": 300_002, "media_type": media}
    assert await store.get(ref.sha256) == data
    # The same bytes again, even at once from many writers: one blob.
    refs = await asyncio.gather(*(store.put(data, "text/plain; charset=utf-8") for _ in range(8)))
    assert set(refs) == {ref}
    assert await store.addresses() == [ref.sha256]


async def test_a_missing_or_malformed_address_is_a_missing_blob(store: BlobStore) -> None:
    with pytest.raises(BlobMissingError, match="no blob " + "0" * 64):
        await store.get("0" * 64)
    with pytest.raises(BlobMissingError, match=re.escape("'../etc/passwd' is not a blob address")):
        await store.get("../etc/passwd")
    with pytest.raises(TypeError, match="a blob is bytes, got str"):
        await store.put("text", "text/plain")  # type: ignore[arg-type]


async def test_a_blob_damaged_where_it_is_kept_is_an_error_not_a_wrong_content(
    store: BlobStore, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    ref = await store.put(b"the whole tool output", "text/plain")
    if isinstance(store, FileBlobStore):
        (store.directory / ref.sha256[:2] / ref.sha256).write_bytes(b"the whole tool outpux")
    elif isinstance(store, S3BlobStore):
        client = await asyncio.to_thread(store._client)
        key, damaged = store.prefix + ref.sha256, b"the whole tool outpux"
        await asyncio.to_thread(client.put_object, Bucket=store.bucket, Key=key, Body=damaged)
    else:
        assert isinstance(store, PostgresBlobStore)
        async with store._engine.begin() as connection:
            await connection.execute(update(blobs).values(data=b"the whole tool outpux"))
    with pytest.raises(BlobDamagedError, match=f"blob {ref.sha256} is damaged"):
        await store.get(ref.sha256)


async def test_blobs_are_listed_in_address_order_a_page_at_a_time_and_deleted(store: BlobStore) -> None:
    refs = [await store.put(f"blob {n}".encode(), "text/plain") for n in range(7)]
    ordered = sorted(ref.sha256 for ref in refs)
    assert await store.addresses(limit=3) == ordered[:3]
    assert await store.addresses(after=ordered[2], limit=3) == ordered[3:6]
    assert await store.addresses(after=ordered[5]) == ordered[6:]
    assert await store.delete(ordered[0]) is True
    assert await store.delete(ordered[0]) is False
    assert await store.addresses() == ordered[1:]
    with pytest.raises(BlobMissingError):
        await store.get(ordered[0])


async def test_files_are_renamed_into_place_whole(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path / "blobs")
    ref = await store.put(b"a" * 1_000_000, "application/octet-stream")
    written = sorted(path.relative_to(tmp_path) for path in (tmp_path / "blobs").rglob("*") if path.is_file())
    assert written == [Path("blobs") / ref.sha256[:2] / ref.sha256]  # no temporary file left
