"""Blob stores named by URL, alone, as a store URL's `blobs=` option, and as the setting RUNEVENTS_BLOBS."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from runevents.bus.projector import Projector
from runevents.bus.topic import create_topic
from runevents.devstack.s3 import REGION, LocalS3
from runevents.errors import InvalidStoreUrlError
from runevents.lifecycle.blob_urls import open_blob_store
from runevents.lifecycle.blobs import BlobStore, FileBlobStore
from runevents.lifecycle.s3blobs import S3BlobStore
from runevents.settings import SettingsError, load_settings
from runevents.store import RunEventStore
from runevents.store.opener import open_store
from runevents.tables.blobs import PostgresBlobStore
from runevents.tables.migrate import upgrade_async
from runevents.tables.sql import engine_for
from tests.bus.conftest import running

SECRET = "sEcReT-9f3a"
LIMIT = 1000
WHOLE_TEXT = "step output " * 2000  # 24,000 bytes: cut to LIMIT, kept whole in the blob store


async def _round_trip(store: BlobStore) -> None:
    data = uuid.uuid4().bytes * 1000
    ref = await store.put(data, "application/octet-stream")
    assert await store.get(ref.sha256) == data
    assert ref.sha256 in await store.addresses()


async def test_a_file_url_opens_a_directory_of_files(tmp_path: Path) -> None:
    store = open_blob_store(f"file://{tmp_path}/blobs%20here")
    assert isinstance(store, FileBlobStore)
    assert store.directory == tmp_path / "blobs here"
    await _round_trip(store)


@pytest.mark.parametrize("name", ["table", "postgresql"])
async def test_table_opens_the_blobs_table_of_the_engine_given(name: str, pg_database: str) -> None:
    await upgrade_async(pg_database)
    engine = engine_for(pg_database)
    try:
        store = open_blob_store(name, engine=engine)
        assert isinstance(store, PostgresBlobStore)
        assert store._engine is engine
        await _round_trip(store)
    finally:
        await engine.dispose()


async def test_an_s3_url_opens_a_bucket_and_prefix(local_s3: LocalS3, s3_credentials: str) -> None:
    prefix = f"runs-{uuid.uuid4().hex}"
    endpoint = quote(local_s3.endpoint, safe="")
    store = open_blob_store(f"s3://{local_s3.bucket}/{prefix}?endpoint_url={endpoint}&region={REGION}")
    assert isinstance(store, S3BlobStore)
    try:
        assert (store.bucket, store.prefix) == (local_s3.bucket, prefix + "/")  # the path is a folder
        assert (store.endpoint_url, store.region) == (local_s3.endpoint, REGION)
        await _round_trip(store)
    finally:
        await store.close()


BAD_URLS = [
    ("file://relative/dir", "a file URL names an absolute directory"),
    ("file:///var/blobs?fsync=no", "a file URL takes no options"),
    ("file:///", "a directory other than /"),
    ("ftp://host/blobs", "unknown blob store; expected file:///absolute/directory, table"),
    ("s3://Not_A_Bucket/p/", "an s3 URL names a bucket"),
    (f"s3://AKIAEXAMPLE:{SECRET}@bucket/p/", "an s3 URL carries no credentials"),
    (f"s3://bucket/p/?aws_secret_access_key={SECRET}", "unknown option(s) aws_secret_access_key"),
    (f"s3://bucket/p/?{SECRET}", "unknown option(s) ***"),
    (f"s3://bucket/p/?endpoint_url=http://minio:{SECRET}@minio:9000", "endpoint_url carries no credentials"),
    ("s3://bucket/p/?endpoint_url=ftp://minio", "endpoint_url must be http://host"),
    ("s3://bucket/p/?endpoint_url=http://minio:port", "endpoint_url is not a URL"),
    ("s3://bucket/p/?region=us%20east", "region must be a region name"),
    (f"postgresql://carol:{SECRET}@db/events", "the blobs table is named `table`"),
    ("table", "only a sql or bus store keeps blobs in its database"),
]


@pytest.mark.parametrize(("url", "problem"), BAD_URLS, ids=[url for url, _ in BAD_URLS])
def test_a_bad_url_is_named_with_what_is_wrong_and_no_secret(url: str, problem: str) -> None:
    with pytest.raises(InvalidStoreUrlError, match=re.escape(problem)) as caught:
        open_blob_store(url)
    assert SECRET not in str(caught.value)
    assert str(caught.value).startswith("blob store '")


async def test_the_blobs_table_is_refused_on_sqlite(tmp_path: Path) -> None:
    engine = engine_for(f"sqlite+aiosqlite:///{tmp_path / 'read.db'}")
    try:
        with pytest.raises(
            InvalidStoreUrlError, match="the blobs table is kept in PostgreSQL only, not sqlite"
        ):
            open_blob_store("table", engine=engine)
    finally:
        await engine.dispose()


def _nested(url: str) -> str:
    return quote(url, safe="")


@pytest.mark.parametrize(
    ("store_url", "problem"),
    [
        ("jsonl:///tmp/x?blobs=table", "only a sql or bus store keeps blobs in its database"),
        ("sqlite+aiosqlite:///tmp/x.db?blobs=table", "the blobs table is kept in PostgreSQL only"),
        (f"jsonl:///tmp/x?blobs={_nested(f's3://b-1/?aws_secret_access_key={SECRET}')}", "unknown option"),
        # The outer URL's own error shows the nested blob URL by the blob URLs' rule, masked too.
        (
            f"jsonl:///tmp/x?max_trace_content=lots&blobs={_nested(f's3://b-1/?secret_key={SECRET}')}",
            "a number",
        ),
        (f"jsonl:///tmp/x?color=red&blobs={_nested(f's3://k:{SECRET}@b-1/')}", "carries no credentials"),
        (
            f"kafka://broker:9092/t?blobs={_nested(f's3://b-1/?aws_secret_access_key={SECRET}')}",
            "names the brokers",
        ),
        (f"jsonl:///tmp/x?color=red&blobs={_nested('file:///tmp/blobs')}", "unknown option(s) color"),
    ],
)
def test_a_bad_blobs_option_of_a_store_url_is_refused_without_a_secret(store_url: str, problem: str) -> None:
    with pytest.raises(InvalidStoreUrlError, match=re.escape(problem)) as caught:
        open_store(store_url)
    assert SECRET not in str(caught.value)


def _trace(content: Any) -> dict[str, Any]:
    return {"thread_id": "t1", "run_id": "r1", "event_type": "tool.result", "category": "trace",
            "content": content}  # fmt: skip


async def _keeps_a_long_trace_whole(store: RunEventStore, blobs: BlobStore) -> None:
    """`store` cuts a long trace to its preview and `blobs` (opened apart) holds the whole of it."""
    record = await store.put(**_trace(WHOLE_TEXT))
    assert record["content"] == WHOLE_TEXT[:LIMIT]
    assert await store.get_full_content("t1", record["event_id"]) == WHOLE_TEXT
    assert await blobs.get(record["metadata"]["content_blob"]["sha256"]) == WHOLE_TEXT.encode()


async def test_a_jsonl_store_url_with_blobs_keeps_a_long_trace_whole(tmp_path: Path) -> None:
    store = open_store(f"jsonl://{tmp_path}/runs?max_trace_content={LIMIT}&blobs=file://{tmp_path}/other")
    try:
        await _keeps_a_long_trace_whole(store, FileBlobStore(tmp_path / "other"))
    finally:
        await store.close()


async def test_a_jsonl_store_url_with_s3_blobs_keeps_a_long_trace_whole(
    tmp_path: Path, local_s3: LocalS3, s3_credentials: str
) -> None:
    prefix = f"runs-{uuid.uuid4().hex}/"
    blobs = f"s3://{local_s3.bucket}/{prefix}?endpoint_url={local_s3.endpoint}&region={REGION}"
    store = open_store(f"jsonl://{tmp_path}/runs?max_trace_content={LIMIT}&blobs={_nested(blobs)}")
    apart = S3BlobStore(local_s3.bucket, prefix=prefix, endpoint_url=local_s3.endpoint, region=REGION)
    try:
        await _keeps_a_long_trace_whole(store, apart)
    finally:
        await store.close()
        await apart.close()
        await _closed(store)


async def test_a_sqlite_store_url_with_blobs_keeps_a_long_trace_whole(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'read.db'}"
    await upgrade_async(url)
    store = open_store(f"{url}?max_trace_content={LIMIT}&blobs={_nested(f'file://{tmp_path}/other')}")
    try:
        await _keeps_a_long_trace_whole(store, FileBlobStore(tmp_path / "other"))
    finally:
        await store.close()


@pytest.fixture
async def pg_blobs(pg_database: str) -> AsyncIterator[BlobStore]:
    """The blobs table of a fresh, upgraded database, read apart from any store."""
    await upgrade_async(pg_database)
    engine = engine_for(pg_database)
    yield PostgresBlobStore(engine)
    await engine.dispose()


async def test_a_postgresql_store_url_with_blobs_table_keeps_a_long_trace_whole(
    pg_database: str, pg_blobs: BlobStore
) -> None:
    store = open_store(f"{pg_database}?max_trace_content={LIMIT}&blobs=table")
    try:
        await _keeps_a_long_trace_whole(store, pg_blobs)
        # The table is read through the store's own engine: one pool, disposed with the store.
        assert isinstance(store._blob_store(), PostgresBlobStore)
        assert store._blob_store()._engine is store.engine  # type: ignore[union-attr, attr-defined]
    finally:
        await store.close()


async def test_a_bus_store_url_with_blobs_table_keeps_a_long_trace_whole(
    pg_database: str, pg_blobs: BlobStore, kafka_bootstrap: str
) -> None:
    topic = f"blob-urls-{uuid.uuid4().hex[:12]}"
    assert await create_topic(kafka_bootstrap, topic, partitions=1)
    url = f"kafka://{kafka_bootstrap}/{topic}?database={_nested(pg_database)}&max_trace_content={LIMIT}&blobs=table"
    store = open_store(url)
    try:
        async with running(Projector(kafka_bootstrap, pg_database, topic=topic, partitions=[0])):
            await _keeps_a_long_trace_whole(store, pg_blobs)
        kept = store._blob_store()
        assert isinstance(kept, PostgresBlobStore)
        assert kept._engine.get_execution_options()["schema_translate_map"][None] == "public"
    finally:
        await store.close()


def test_the_blobs_setting_is_checked_at_load_without_showing_its_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RUNEVENTS_BLOBS", f"s3://bucket/p/?aws_secret_access_key={SECRET}")
    with pytest.raises(
        SettingsError, match=r"setting blobs \(env RUNEVENTS_BLOBS\): unknown option"
    ) as caught:
        load_settings()
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize("blobs", ["table", "file:///var/lib/runevents/blobs"])
async def test_the_blobs_setting_gives_a_bus_store_its_blob_store(
    blobs: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNEVENTS_BLOBS", blobs)
    settings = load_settings(
        {"kafka": "broker:9092", "database_url": "postgresql://carol@db/events"}
    ).settings
    assert settings.blobs == blobs
    store = settings.bus_store()  # nothing is reached until the store is used
    try:
        kept = store._blob_store()
        if blobs == "table":
            # On the store's own pool, in a schema no projection lives in.
            assert isinstance(kept, PostgresBlobStore)
            assert kept._engine.sync_engine.pool is store._engine.sync_engine.pool
            assert kept._engine.get_execution_options()["schema_translate_map"][None] == "public"
        else:
            assert isinstance(kept, FileBlobStore)
            assert kept.directory == Path("/var/lib/runevents/blobs")
    finally:
        await store.close()


async def _closed(store: RunEventStore) -> None:
    blobs = store._blob_store()
    if isinstance(blobs, S3BlobStore):
        await blobs.close()
