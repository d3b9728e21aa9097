"""Blob stores named by URL: `file:///dir`, `table` (the store's own database) or `s3://bucket/prefix/`.

A URL is checked whole before any store is made (`parse_blob_url`), then opened (`BlobUrl.open`): the
blobs table is opened last, on the engine of the store whose database keeps it. Errors are
`InvalidBlobUrlError`s that show the URL by `shown_blob_url`, which prints no credential and no value
of an option it does not know.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

from runevents.errors import InvalidStoreUrlError
from runevents.lifecycle.blobs import BlobStore, FileBlobStore
from runevents.lifecycle.s3blobs import S3BlobStore
from runevents.masking import MASK, mask_secrets

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

# `table` is the blobs table beside the read tables; `postgresql`, the same, named for where it is.
TABLE_NAMES: Final = ("table", "postgresql")
FORMS: Final = (
    "file:///absolute/directory, table (the store's own PostgreSQL database) or s3://bucket/prefix/"
)
S3_OPTIONS: Final = ("endpoint_url", "region")
# Where a bus store keeps its blobs table: outside every projection's schema, since the topic's records
# point at the blobs and a replay into a new schema, a promotion or a dropped projection must keep them.
BUS_BLOB_SCHEMA: Final = "public"
# The blobs table's store lives with the read tables; named, not imported, as backends are by
# runevents.store.opener: the lifecycle layer imports no backend.
_TABLE_STORE: Final = ("runevents.tables.blobs", "PostgresBlobStore")
# S3's rule for bucket names (the dotted ones included), and region names as AWS and MinIO spell them.
_BUCKET: Final = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_REGION: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
# An option's name is shown only when it looks like one: a value given without `=` may be a secret.
_OPTION_NAME: Final = re.compile(r"[a-z_][a-z0-9_]{0,31}")


class InvalidBlobUrlError(InvalidStoreUrlError):
    """A blob store URL that cannot be opened as given; `problem` says what is wrong, never a secret."""

    def __init__(self, shown: str, problem: str) -> None:
        self.shown = shown
        self.problem = problem
        super().__init__(f"blob store {shown!r}: {problem}")


@dataclass(frozen=True, slots=True)
class BlobUrl:
    """A blob store URL, checked and not yet opened: which store it names, and where."""

    kind: Literal["file", "table", "s3"]
    shown: str
    directory: str = ""
    bucket: str = ""
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None

    def open(self, engine: AsyncEngine | None = None, *, schema: str | None = None) -> BlobStore:
        """The store the URL names; `table` needs the store's `engine`, and is in `schema` if given."""
        if self.kind == "file":
            return FileBlobStore(self.directory)
        if self.kind == "s3":
            return S3BlobStore(
                self.bucket, prefix=self.prefix, endpoint_url=self.endpoint_url, region=self.region
            )
        if engine is None:
            raise InvalidBlobUrlError(
                self.shown, "only a sql or bus store keeps blobs in its database; use file:// or s3:// here"
            )
        if engine.dialect.name != "postgresql":
            raise InvalidBlobUrlError(
                self.shown,
                f"the blobs table is kept in PostgreSQL only, not {engine.dialect.name}; "
                "use file:///absolute/directory",
            )
        module, name = _TABLE_STORE
        store: BlobStore = getattr(importlib.import_module(module), name)(engine, schema=schema)
        return store


def open_blob_store(url: str, *, engine: AsyncEngine | None = None, schema: str | None = None) -> BlobStore:
    """The blob store `url` names: `file:///dir`, `table` (on `engine`, in `schema`), `s3://bucket/prefix/`."""
    return parse_blob_url(url).open(engine, schema=schema)


def parse_blob_url(url: str) -> BlobUrl:
    """`url` checked: an `InvalidBlobUrlError` naming what is wrong, or what it names."""
    if not isinstance(url, str):
        raise InvalidStoreUrlError(f"a blob store URL is a str, got {type(url).__name__}")
    shown = shown_blob_url(url)
    if url.strip().lower() in TABLE_NAMES:
        return BlobUrl("table", shown)
    try:
        parts = urlsplit(url)
    except ValueError:
        raise InvalidBlobUrlError(shown, f"not a URL; expected {FORMS}") from None
    scheme = parts.scheme.lower()
    if scheme == "file":
        return BlobUrl("file", shown, directory=_directory(parts, shown))
    if scheme == "s3":
        return _s3(parts, shown)
    if scheme.split("+")[0] in ("postgresql", "postgres"):
        raise InvalidBlobUrlError(
            shown,
            "the blobs table is named `table`: it is kept in the store's own database, not in one named",
        )
    raise InvalidBlobUrlError(shown, f"unknown blob store; expected {FORMS}")


def _directory(parts: SplitResult, shown: str) -> str:
    if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
        raise InvalidBlobUrlError(
            shown, "a file URL names an absolute directory: file:///var/lib/runevents/blobs"
        )
    if parts.query or parts.fragment:
        raise InvalidBlobUrlError(shown, "a file URL takes no options")
    directory = unquote(parts.path)
    if directory.strip("/") == "":
        raise InvalidBlobUrlError(shown, "a file URL names a directory other than /")
    return directory


def _s3(parts: SplitResult, shown: str) -> BlobUrl:
    if "@" in parts.netloc:
        raise InvalidBlobUrlError(
            shown,
            "an s3 URL carries no credentials: boto3 reads them from AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, a profile (AWS_PROFILE) or a role",
        )
    if _BUCKET.fullmatch(parts.netloc) is None:
        raise InvalidBlobUrlError(
            shown,
            "an s3 URL names a bucket (3-63 lowercase letters, digits, dots, hyphens): s3://bucket/prefix/",
        )
    prefix = unquote(parts.path).lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"  # a URL's path is a folder: s3://bucket/runs holds runs/<sha256>
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(_shown_name(name) for name in options if name not in S3_OPTIONS)
    if unknown or parts.fragment:
        what = f"unknown option(s) {', '.join(unknown)}" if unknown else "a fragment"
        raise InvalidBlobUrlError(shown, f"{what}; an s3 URL takes {' and '.join(S3_OPTIONS)}")
    region = options.get("region")
    if region is not None and _REGION.fullmatch(region) is None:
        raise InvalidBlobUrlError(shown, "region must be a region name such as us-east-1")
    endpoint_url = options.get("endpoint_url")
    if endpoint_url is not None:
        _check_endpoint(endpoint_url, shown)
    return BlobUrl("s3", shown, bucket=parts.netloc, prefix=prefix, endpoint_url=endpoint_url, region=region)


def _check_endpoint(endpoint_url: str, shown: str) -> None:
    try:
        parts = urlsplit(endpoint_url)
        parts.port  # noqa: B018 - a port that is not a number raises here
    except ValueError:
        raise InvalidBlobUrlError(shown, "endpoint_url is not a URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidBlobUrlError(shown, "endpoint_url must be http://host[:port] or https://host[:port]")
    if "@" in parts.netloc or parts.query or parts.fragment:
        raise InvalidBlobUrlError(
            shown, "endpoint_url carries no credentials and no options (boto3 reads the credentials)"
        )


def shown_blob_url(url: str) -> str:
    """`url` as a message may show it: no credentials, and only the values of the options it knows."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return mask_secrets(url) if "@" not in url else MASK
    netloc = parts.netloc if "@" not in parts.netloc else f"{MASK}@{parts.netloc.rpartition('@')[2]}"
    shown = f"{parts.scheme}://{netloc}{parts.path}" if parts.scheme else parts.path
    fields = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == "endpoint_url":
            fields.append(f"{name}={shown_blob_url(value).partition('?')[0]}")
        elif name == "region" and _REGION.fullmatch(value):
            fields.append(f"{name}={value}")
        else:
            fields.append(f"{_shown_name(name)}={MASK}")
    if fields:
        shown += "?" + "&".join(fields)
    return mask_secrets(shown)


def _shown_name(name: str) -> str:
    return name if _OPTION_NAME.fullmatch(name) else MASK
