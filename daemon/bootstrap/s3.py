"""Writing the bootstrap's CSV files to S3 with aiobotocore: one PUT for a small file, multipart for a large one.

Room in the design: bootstrap step 3, the "-> S3" arrow. The client is opened like the daemon's other clients
(botocore retries off, `daemon.aws`), with path-style addressing when an `s3_endpoint` is configured (local
stand-ins such as moto answer on an IP address, where virtual-host buckets cannot work). Calls are retried by
`daemon.bootstrap.retry`; a multipart upload that fails is aborted, so no half-written object is left behind.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession

from daemon.aws import error_code
from daemon.bootstrap.records import BootstrapConfigError
from daemon.bootstrap.retry import with_retries

MIN_PART_BYTES = 5 * 1024 * 1024  # S3's floor for every part but the last


async def open_s3_client(
    stack: AsyncExitStack,
    *,
    endpoint: str | None,
    region: str,
    profile: str | None = None,
    timeout_seconds: float = 120.0,
    max_connections: int = 10,
) -> Any:
    """An aiobotocore S3 client bound to `stack`, botocore retries off."""
    session = AioSession(profile=profile)
    config = AioConfig(
        retries={"total_max_attempts": 1},
        connect_timeout=min(timeout_seconds, 10.0),
        read_timeout=timeout_seconds,
        max_pool_connections=max_connections,
        s3={"addressing_style": "path"} if endpoint else None,
    )
    return await stack.enter_async_context(
        session.create_client("s3", endpoint_url=endpoint, region_name=region, config=config)
    )


class S3Writer:
    """Puts objects under one bucket; `put` chooses a single PUT or a multipart upload by size."""

    def __init__(self, client: Any, bucket: str, *, part_bytes: int = 16 * 1024 * 1024, part_concurrency: int = 4):
        self.client = client
        self.bucket = bucket
        self.part_bytes = max(part_bytes, MIN_PART_BYTES)
        self._part_slots = asyncio.Semaphore(part_concurrency)
        self.multipart_uploads = 0

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    async def check_bucket(self) -> None:
        """Fail early, with the reason, when the bucket cannot be written."""
        try:
            await with_retries(lambda: self.client.head_bucket(Bucket=self.bucket), what="s3 head_bucket")
        except Exception as exc:
            code = error_code(exc)
            status = getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("404", "NoSuchBucket") or status == 404:
                raise BootstrapConfigError(f"bootstrap.s3_bucket: bucket {self.bucket!r} does not exist") from exc
            if code in ("403", "AccessDenied") or status == 403:
                raise BootstrapConfigError(
                    f"bootstrap.s3_bucket: access to bucket {self.bucket!r} denied for the daemon's credentials"
                ) from exc
            raise

    async def put(self, key: str, data: bytes) -> None:
        if len(data) <= self.part_bytes:
            await with_retries(
                lambda: self.client.put_object(Bucket=self.bucket, Key=key, Body=data), what=f"s3 put {key}"
            )
        else:
            await self._multipart(key, data)

    async def _multipart(self, key: str, data: bytes) -> None:
        created = await with_retries(
            lambda: self.client.create_multipart_upload(Bucket=self.bucket, Key=key), what=f"s3 multipart {key}"
        )
        upload_id = created["UploadId"]
        self.multipart_uploads += 1
        try:
            starts = range(0, len(data), self.part_bytes)
            etags = await asyncio.gather(
                *(
                    self._part(key, upload_id, n, data[start : start + self.part_bytes])
                    for n, start in enumerate(starts, 1)
                )
            )
            parts = [{"ETag": etag, "PartNumber": n} for n, etag in enumerate(etags, 1)]
            await with_retries(
                lambda: self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                ),
                what=f"s3 complete {key}",
            )
        except BaseException:
            try:
                await self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except Exception:
                pass
            raise

    async def _part(self, key: str, upload_id: str, number: int, body: bytes) -> str:
        async with self._part_slots:
            response = await with_retries(
                lambda: self.client.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
                ),
                what=f"s3 part {number} of {key}",
            )
        return str(response["ETag"])

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix`; returns how many."""
        deleted = 0
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            page = await with_retries(lambda kw=kwargs: self.client.list_objects_v2(**kw), what="s3 list")
            keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
            if keys:
                await with_retries(
                    lambda k=keys: self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": k}),
                    what="s3 delete",
                )
                deleted += len(keys)
            token = page.get("NextContinuationToken")
            if not token:
                return deleted
