"""How to reach S3: one immutable, picklable object, explicit arguments winning over the environment."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

MiB = 1 << 20
ENGINES = ("auto", "obstore", "boto3")


@dataclass(frozen=True)
class S3Config:
    """Settings for every S3 request s3pipes makes.

    A field left at ``None`` is read from the environment when the first client of a process is
    built, so DataLoader workers see the same environment as the main process:

    - ``region``: ``AWS_REGION``, ``AWS_DEFAULT_REGION``, the profile's region, then ``us-west-2``
      (the default of the Amazon S3 plugin for PyTorch).
    - ``endpoint_url``: ``S3_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``; unset means AWS.
    - ``path_style``: on for a custom endpoint (MinIO, Ceph, moto, nginx ...), off for AWS.
    - ``verify_ssl``: ``S3_VERIFY_SSL=0`` turns certificate checks off.

    Credentials come only from the standard chain of boto3 (environment, profile, SSO, instance role);
    ``anonymous=True`` sends unsigned requests for public buckets.

    ``connect_timeout`` and ``read_timeout`` (seconds; a read timeout is the longest wait for the next
    bytes, the first byte of an answer included) bound each attempt, and a request makes up to
    ``max_attempts``: an endpoint that accepts connections and never answers is an error after
    ``max_attempts * (connect_timeout + read_timeout)`` plus the backoff between attempts (under 110 s
    with the defaults, which are s3fs's), each retry logged at INFO on the ``s3pipes`` logger.

    ``engine`` picks what sends GETs: ``"obstore"`` (Rust; the GIL is released while a request waits),
    ``"boto3"`` (pure Python), or ``"auto"``: ``S3PIPES_ENGINE`` if set, else obstore when it is
    installed. Listing, HEAD and writes always go through boto3.

    >>> cfg = S3Config(endpoint_url="http://127.0.0.1:9000", max_concurrency=32)
    >>> cfg.replace(anonymous=True).anonymous
    True
    """

    region: str | None = None
    endpoint_url: str | None = None
    profile: str | None = None
    path_style: bool | None = None
    anonymous: bool = False
    requester_pays: bool = False
    verify_ssl: bool | None = None
    max_attempts: int = 5
    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    max_concurrency: int = 64
    part_size: int = 8 * MiB
    engine: str = "auto"

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {self.max_concurrency}")
        if self.part_size < 64 * 1024:
            raise ValueError(f"part_size must be at least 64 KiB, got {self.part_size}")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(map(repr, ENGINES))}, got {self.engine!r}")

    def replace(self, **changes: object) -> S3Config:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

