"""Blobs in an S3-protocol bucket (AWS S3, MinIO, Ceph, ...): objects `<prefix><sha256>`, on boto3.

boto3 is an optional dependency (`pip install 'runevents[s3]'`): it is imported when the first request
is made, never when runevents is. Credentials come from boto3's own chain (`AWS_ACCESS_KEY_ID` and
`AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE` and the shared files, an instance role), never from a URL or an
argument here, so no message of this module can hold one.
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
import sys
import threading
import weakref
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final, TypeVar

from runevents.errors import RunEventsError
from runevents.lifecycle.blobs import BlobMissingError, BlobRef, BlobStore
from runevents.masking import error_line, mask_secrets

INSTALL_HINT: Final = "pip install 'runevents[s3]'"
_SHA256: Final = re.compile(r"[0-9a-f]{64}")
# The default executor runs up to 32 threads: a connection each, so none is opened and thrown away.
_MAX_CONNECTIONS: Final = 32
_NOT_FOUND: Final = frozenset({"404", "NoSuchKey", "NotFound"})

T = TypeVar("T")


class S3DependencyMissingError(RunEventsError, ImportError):
    """boto3, which the S3 blob store runs on, is not installed."""


class S3BlobStoreError(RunEventsError):
    """The S3 service refused or did not answer a blob request; the message names the bucket and the call."""


def boto3_installed() -> bool:
    """Whether boto3 can be imported (without importing it)."""
    if "boto3" in sys.modules:
        return sys.modules["boto3"] is not None  # None: importing it is refused
    return importlib.util.find_spec("boto3") is not None


class S3BlobStore(BlobStore):
    """Blobs as objects `<prefix><sha256>` in one bucket; every boto3 call runs in a worker thread."""

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
    ) -> None:
        """`endpoint_url`: a service other than AWS's (MinIO, a local server); `region`: else boto3's."""
        if not boto3_installed():
            raise S3DependencyMissingError(f"the S3 blob store needs boto3: {INSTALL_HINT}")
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        self.region = region
        self._client_made: Any = None
        self._closer: weakref.finalize[Any, Any] | None = None
        self._client_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"S3BlobStore(s3://{self.bucket}/{self.prefix})"

    async def close(self) -> None:
        """Close the client's connections (a store not closed has them closed when it is collected)."""
        with self._client_lock:
            closer, self._closer, self._client_made = self._closer, None, None
        if closer is not None:
            await asyncio.to_thread(closer)

    def _client(self) -> Any:
        # Made on first use, in a worker thread: boto3 loads its service models from disk.
        with self._client_lock:
            if self._client_made is None:
                import boto3
                from botocore.config import Config

                # A session of its own: boto3's default one is not safe to share between threads.
                client = boto3.session.Session().client(
                    "s3",
                    endpoint_url=self.endpoint_url,
                    region_name=self.region,
                    config=Config(max_pool_connections=_MAX_CONNECTIONS, retries={"mode": "standard"}),
                )
                self._closer = weakref.finalize(self, client.close)
                self._client_made = client
            return self._client_made

    def _key(self, sha256: str) -> str:
        return f"{self.prefix}{sha256}"

    async def _call(self, what: str, call: Callable[[Any], T]) -> T:
        return await asyncio.to_thread(self._run, what, call)

    def _run(self, what: str, call: Callable[[Any], T]) -> T:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return call(self._client())
        except ClientError as error:
            if _not_found(error):
                raise
            raise self._error(what, error) from None
        except BotoCoreError as error:
            raise self._error(what, error) from None

    def _error(self, what: str, error: BaseException) -> S3BlobStoreError:
        where = f"s3://{self.bucket}/{self.prefix}"
        if self.endpoint_url:
            where += f" at {mask_secrets(self.endpoint_url)}"
        return S3BlobStoreError(f"{what} in {where} failed: {error_line(error)}")

    async def _exists(self, sha256: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            await self._call(
                f"HEAD of blob {sha256}",
                lambda client: client.head_object(Bucket=self.bucket, Key=self._key(sha256)),
            )
        except ClientError:  # only a 404 gets here (_run)
            return False
        return True

    async def _put(self, ref: BlobRef, data: bytes) -> None:
        if await self._exists(ref.sha256):
            # Content-addressed: what is there holds these very bytes (get checks it). Copied onto itself
            # (no bytes sent): a blob put again for a new event is as young as that event to the
            # retention job's collection.
            await self._call(
                f"touch of blob {ref.sha256}",
                lambda client: client.copy_object(
                    Bucket=self.bucket,
                    Key=self._key(ref.sha256),
                    CopySource={"Bucket": self.bucket, "Key": self._key(ref.sha256)},
                    MetadataDirective="REPLACE",
                    ContentType=ref.media_type,
                ),
            )
            return
        # One PUT is atomic in S3: a reader sees no object or all of it.
        await self._call(
            f"PUT of blob {ref.sha256}",
            lambda client: client.put_object(
                Bucket=self.bucket, Key=self._key(ref.sha256), Body=data, ContentType=ref.media_type
            ),
        )

    async def _get(self, sha256: str) -> bytes:
        from botocore.exceptions import ClientError

        def read(client: Any) -> bytes:
            body = client.get_object(Bucket=self.bucket, Key=self._key(sha256))["Body"]
            with body:
                return bytes(body.read())

        try:
            return await self._call(f"GET of blob {sha256}", read)
        except ClientError:  # only a 404 gets here (_run)
            raise BlobMissingError(f"no blob {sha256} in s3://{self.bucket}/{self.prefix}") from None

    async def _delete(self, sha256: str) -> bool:
        # S3 answers a DELETE the same whether the object was there: HEAD says whether it was.
        if not await self._exists(sha256):
            return False
        await self._call(
            f"DELETE of blob {sha256}",
            lambda client: client.delete_object(Bucket=self.bucket, Key=self._key(sha256)),
        )
        return True

    async def _collect(self, sha256: str, written_before: datetime) -> bool:
        from botocore.exceptions import ClientError

        try:
            head = await self._call(
                f"HEAD of blob {sha256}",
                lambda client: client.head_object(Bucket=self.bucket, Key=self._key(sha256)),
            )
        except ClientError:  # only a 404 gets here (_run)
            return False
        # Not one request, as the table's is: a put again between the look and the delete (a window
        # of one round trip, after the blob went unreferenced for the whole grace) would be lost.
        if head["LastModified"] >= written_before:
            return False
        await self._call(
            f"DELETE of blob {sha256}",
            lambda client: client.delete_object(Bucket=self.bucket, Key=self._key(sha256)),
        )
        return True

    async def _addresses(self, after: str | None, limit: int) -> list[str]:
        return await self._call("listing of blobs", lambda client: self._list(client, after, limit))

    def _list(self, client: Any, after: str | None, limit: int) -> list[str]:
        found: list[str] = []
        options: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix}
        if after is not None:
            options["StartAfter"] = self._key(after)
        # Keys come in UTF-8 byte order, which is address order under one prefix; other objects under the
        # prefix are passed over, so a page may take more than one request.
        while len(found) < limit:
            page = client.list_objects_v2(**options, MaxKeys=min(1000, limit - len(found)))
            for entry in page.get("Contents", []):
                name = str(entry["Key"])[len(self.prefix) :]
                if _SHA256.fullmatch(name):
                    found.append(name)
            if not page.get("IsTruncated"):
                break
            options["ContinuationToken"] = page["NextContinuationToken"]
        return found


def _not_found(error: Any) -> bool:
    return str(error.response.get("Error", {}).get("Code", "")) in _NOT_FOUND
