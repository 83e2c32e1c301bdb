"""The package store: a local folder by default, or S3 (`s3://bucket/prefix`) through boto3.

Keys are `<model>/<version>/<target>-<sha256[:12]>.tar.gz`. Devices download through the
fleet's HTTP API: a local file is served with range requests (an interrupted download
resumes); an S3 object is handed out as a presigned URL, which S3 serves with ranges too.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import urlparse

from edgefleet.errors import ServiceError


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def put(self, key: str, source: Path) -> None:
        dest = self.path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".partial")
        shutil.copyfile(source, tmp)
        os.replace(tmp, dest)

    def path(self, key: str) -> Path:
        return self.root / key

    def read(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def presigned_url(self, key: str, ttl_s: int) -> str | None:
        return None  # served by the API itself


class S3Store:
    def __init__(self, url: str, client=None) -> None:
        import boto3

        parsed = urlparse(url)
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        # AWS_ENDPOINT_URL (boto3 reads it) points at S3-compatible stores such as MinIO.
        self.client = client or boto3.client("s3")

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, source: Path) -> None:
        try:
            self.client.upload_file(str(source), self.bucket, self._key(key))
        except Exception as exc:  # botocore raises many types; all mean the same to the operator
            raise ServiceError(
                f"cannot upload to s3://{self.bucket}/{self._key(key)}: {exc}",
                "check the bucket, credentials and AWS_ENDPOINT_URL",
            ) from None

    def path(self, key: str) -> Path | None:
        return None

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def presigned_url(self, key: str, ttl_s: int) -> str:
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=int(ttl_s)
        )


def open_store(url: str) -> LocalStore | S3Store:
    if url.startswith("s3://"):
        return S3Store(url)
    if "://" in url:
        raise ServiceError(
            f"package store {url!r} is neither a folder nor s3://", "use a local folder or s3://bucket/prefix"
        )
    return LocalStore(Path(url))
