"""What only the S3 blob store does: its prefix, its collection by age, its optional boto3, and service
errors without secrets."""

from __future__ import annotations

import asyncio
import re
import sys
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from runevents.devstack.s3 import REGION, LocalS3
from runevents.lifecycle.blobs import BlobMissingError, address_of
from runevents.lifecycle.s3blobs import INSTALL_HINT, S3BlobStore, S3BlobStoreError, S3DependencyMissingError


def _store(server: LocalS3, prefix: str, bucket: str | None = None) -> S3BlobStore:
    return S3BlobStore(bucket or server.bucket, prefix=prefix, endpoint_url=server.endpoint, region=REGION)


async def test_objects_are_named_by_prefix_and_address_and_others_are_not_blobs(
    local_s3: LocalS3, s3_credentials: str
) -> None:
    prefix = f"runs-{uuid.uuid4().hex}/"
    store, neighbour = _store(local_s3, prefix), _store(local_s3, prefix + "nested/")
    try:
        ref = await store.put(b"a whole tool output", "text/plain")
        client = await asyncio.to_thread(store._client)
        listed = await asyncio.to_thread(client.list_objects_v2, Bucket=local_s3.bucket, Prefix=prefix)
        assert [entry["Key"] for entry in listed["Contents"]] == [prefix + ref.sha256]
        head = await asyncio.to_thread(client.head_object, Bucket=local_s3.bucket, Key=prefix + ref.sha256)
        assert head["ContentType"] == "text/plain"
        # Objects under the prefix that are no blob (another prefix's, a stray file) are passed over,
        # also when they fill whole pages of the listing.
        await neighbour.put(b"kept under a longer prefix", "text/plain")
        for n in range(5):
            await asyncio.to_thread(client.put_object, Bucket=local_s3.bucket, Key=f"{prefix}0-{n}", Body=b"")
        assert await store.addresses(limit=1) == [ref.sha256]
        assert await store.addresses() == [ref.sha256]
        assert await neighbour.addresses() == [address_of(b"kept under a longer prefix")]
    finally:
        await store.close()
        await neighbour.close()


async def test_a_bucket_that_is_not_there_is_named_in_an_error_without_a_secret(
    local_s3: LocalS3, s3_credentials: str
) -> None:
    store = _store(local_s3, "p/", bucket="no-such-bucket-here")
    try:
        with pytest.raises(
            S3BlobStoreError, match=re.escape("s3://no-such-bucket-here/p/ at http://127.0.0.1")
        ) as caught:
            await store.put(b"data", "text/plain")
        assert "NoSuchBucket" in str(caught.value)
        assert s3_credentials not in str(caught.value)
    finally:
        await store.close()


async def test_a_service_that_does_not_answer_is_an_error_naming_it(
    local_s3: LocalS3, s3_credentials: str, unused_tcp_port: int
) -> None:
    store = S3BlobStore("bucket", endpoint_url=f"http://127.0.0.1:{unused_tcp_port}", region=REGION)
    try:
        with pytest.raises(
            S3BlobStoreError, match=f"HEAD of blob .* at http://127.0.0.1:{unused_tcp_port} failed"
        ):
            await store.put(b"data", "text/plain")
    finally:
        await store.close()


def test_without_boto3_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # None in sys.modules: ImportError on import
    with pytest.raises(S3DependencyMissingError, match=re.escape(f"needs boto3: {INSTALL_HINT}")):
        S3BlobStore("bucket")
    assert INSTALL_HINT == "pip install 'runevents[s3]'"


async def test_a_blob_is_collected_only_when_older_than_asked_and_a_put_again_makes_it_young(
    local_s3: LocalS3, s3_credentials: str
) -> None:
    store = _store(local_s3, f"collect-{uuid.uuid4().hex}/")
    try:
        ref = await store.put(b"an unreferenced blob", "text/plain")
        assert not await store.collect(ref.sha256, written_before=datetime.now(UTC) - timedelta(hours=1))
        await asyncio.sleep(1.1)  # S3 keeps whole seconds
        cutoff = datetime.now(UTC).replace(microsecond=0)
        await store.put(b"an unreferenced blob", "text/plain")  # a new event points at it
        assert not await store.collect(ref.sha256, written_before=cutoff)
        assert await store.get(ref.sha256) == b"an unreferenced blob"
        assert await store.collect(ref.sha256, written_before=datetime.now(UTC) + timedelta(minutes=1))
        assert not await store.collect(ref.sha256, written_before=datetime.now(UTC) + timedelta(minutes=1))
        with pytest.raises(BlobMissingError):
            await store.get(ref.sha256)
    finally:
        await store.close()
