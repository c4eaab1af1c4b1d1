"""S3 URLs and listed objects: plain values, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


@dataclass(frozen=True)
class S3Url:
    """A parsed ``s3://bucket/key`` URL; a key that is empty or ends in ``/`` is a prefix."""

    bucket: str
    key: str

    @classmethod
    def parse(cls, url: str) -> S3Url:
        if not isinstance(url, str) or not url.startswith("s3://"):
            raise ValueError(f"{url!r} is not an S3 URL; expected 's3://bucket/key' or 's3://bucket/prefix/'")
        bucket, _, key = url[5:].partition("/")
        if not bucket or any(c in bucket for c in " \\?#") or bucket != bucket.strip():
            raise ValueError(f"{url!r} has no valid bucket name; expected 's3://bucket/key' or 's3://bucket/prefix/'")
        return cls(bucket, key)

    @property
    def is_prefix(self) -> bool:
        return self.key == "" or self.key.endswith("/")

    def child(self, key: str) -> S3Url:
        return S3Url(self.bucket, key)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def parse_url(url: str) -> S3Url:
    """Parse ``s3://bucket/key``; anything else is a ``ValueError`` quoting the string."""
    return S3Url.parse(url)


class ObjectInfo(NamedTuple):
    """One listed object: its URL, its size in bytes, and its ETag where the store has one."""

    url: str
    size: int
    etag: str | None = None
