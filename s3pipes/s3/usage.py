"""The S3 requests this process has sent, counted where they are sent: boto3's ``before-send`` event
(:func:`on_send`, registered on every client :mod:`.env` builds), obstore's GET attempts, every retry
(:func:`~.retry.log_retry`) and every GET body consumed (:func:`~.retry.body`). :class:`Usage` is the
value read out, with S3 Standard's request prices for an estimate of what it cost.

Counting is one locked add per request (well under a microsecond), so it is always on.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import astuple, dataclass, fields

# Index of each counter in _counts, in the order of Usage's fields.
LIST, HEAD, GET, PUT, DELETE, OTHER, BYTES_IN, BYTES_OUT, RETRIES, THROTTLED = range(10)

# botocore's operation names by the class of request S3 bills them as (anything else is OTHER).
_KINDS = {
    **dict.fromkeys(("ListObjectsV2", "ListObjects", "ListObjectVersions", "ListParts",
                     "ListMultipartUploads", "ListBuckets"), LIST),
    **dict.fromkeys(("HeadObject", "HeadBucket"), HEAD),
    "GetObject": GET,
    **dict.fromkeys(("PutObject", "CreateMultipartUpload", "UploadPart", "UploadPartCopy",
                     "CompleteMultipartUpload", "CopyObject", "CreateBucket"), PUT),
    # DELETE and CANCEL requests, which S3 does not charge for
    **dict.fromkeys(("DeleteObject", "DeleteObjects", "AbortMultipartUpload"), DELETE),
}
_WITH_BODY = frozenset({"PutObject", "UploadPart"})  # the requests whose body is the object's bytes
_EVENT = len("before-send.s3.")


@dataclass(frozen=True)
class Prices:
    """Dollars per 1,000 requests of each class. The defaults are S3 Standard's (us-east-1): replace
    them for another storage class or region, e.g. ``Prices(put=0.01, get=0.001, name="S3 Standard-IA")``.

    Args:
        put: PUT, COPY, POST and LIST requests.
        get: GET, HEAD and all other requests.
        delete: DELETE and CANCEL (abort of a multipart upload) requests.
        name: what the prices are, shown after an estimate.
    """

    put: float = 0.005
    get: float = 0.0004
    delete: float = 0.0
    name: str = "S3 Standard"


S3_STANDARD = Prices()


@dataclass(frozen=True)
class Usage:
    """Counts of S3 requests (every attempt sent, so a retried GET counts twice) and bytes.

    Args:
        list: LIST requests (a listing's pages).
        head: HEAD requests.
        get: GET requests, ranged parts and retries included.
        put: PUT-class requests: PutObject, CreateMultipartUpload, UploadPart, CompleteMultipartUpload,
            CopyObject, CreateBucket.
        delete: DeleteObject(s) and AbortMultipartUpload.
        other: any other request.
        bytes_in: bytes of GET bodies received.
        bytes_out: bytes of PUT and UploadPart bodies sent.
        retries: attempts that failed and were sent again.
        throttled: those of the retries that S3 throttled (503 SlowDown and the like).

    Example:
        >>> u = Usage(list=3, get=120, bytes_in=4_200_000)
        >>> print(u)
        LIST 3 · HEAD 0 · GET 120 · PUT 0 · 4.2 MB in · 0 B out · 0 retries · 0 throttled · ≈$0.00006 (S3 Standard prices)
        >>> (u + u).get, (u - u).requests, round(u.cost(Prices(put=0.01, get=0.001)), 6)
        (240, 0, 0.00015)
    """

    list: int = 0
    head: int = 0
    get: int = 0
    put: int = 0
    delete: int = 0
    other: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    retries: int = 0
    throttled: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(*(a + b for a, b in zip(astuple(self), astuple(other))))

    def __sub__(self, other: Usage) -> Usage:
        return Usage(*(a - b for a, b in zip(astuple(self), astuple(other))))

    @property
    def requests(self) -> int:
        """All requests sent."""
        return self.list + self.head + self.get + self.put + self.delete + self.other

    def cost(self, prices: Prices = S3_STANDARD) -> float:
        """What the requests cost in dollars at ``prices`` (storage and transfer not included).

        Args:
            prices: dollars per 1,000 requests of each class (default S3 Standard's).
        """
        return ((self.list + self.put) * prices.put + (self.get + self.head + self.other) * prices.get
                + self.delete * prices.delete) / 1000

    def __str__(self) -> str:
        extra = "".join(f" · {name.upper()} {n}" for name, n in (("delete", self.delete), ("other", self.other)) if n)
        return (f"LIST {self.list} · HEAD {self.head} · GET {self.get} · PUT {self.put}{extra} · "
                f"{human_bytes(self.bytes_in)} in · {human_bytes(self.bytes_out)} out · {self.retries} retries · "
                f"{self.throttled} throttled · ≈{_dollars(self.cost())} ({S3_STANDARD.name} prices)")


def human_bytes(n: float) -> str:
    """``n`` bytes in decimal units: ``"0 B"``, ``"4.2 MB"``."""
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("KB", "MB", "GB"):
        n /= 1000
        if n < 1000:
            return f"{n:.1f} {unit}"
    return f"{n / 1000:.1f} TB"


def _dollars(x: float) -> str:
    if x <= 0:
        return "$0"
    if x >= 0.01:
        return f"${x:,.2f}"
    return f"${x:.{-math.floor(math.log10(x))}f}"  # one significant digit: an estimate, not a bill


_lock = threading.Lock()
_counts = [0] * len(fields(Usage))


def add(kind: int, n: int = 1) -> None:
    """Add ``n`` to counter ``kind`` (``GET``, ``BYTES_IN``, ...)."""
    with _lock:
        _counts[kind] += n


def retried(throttled: bool) -> None:
    """Count a retry, and whether S3 throttled the attempt that failed."""
    with _lock:
        _counts[RETRIES] += 1
        _counts[THROTTLED] += throttled


def on_send(request: object, event_name: str, **_: object) -> None:
    """botocore's ``before-send.s3`` handler: one request of the operation that ``event_name`` ends
    with, about to go out (once per attempt)."""
    op = event_name[_EVENT:]
    sent = 0
    if op in _WITH_BODY:
        headers = request.headers  # type: ignore[attr-defined]
        # A body sent aws-chunked (with a trailing checksum) says its own size apart from the framing.
        sent = int(headers.get("X-Amz-Decoded-Content-Length") or headers.get("Content-Length") or 0)
    kind = _KINDS.get(op, OTHER)
    with _lock:
        _counts[kind] += 1
        _counts[BYTES_OUT] += sent


def process_usage() -> Usage:
    """What this process has sent since it started (a forked process: since the fork)."""
    with _lock:
        return Usage(*_counts)


def _after_fork() -> None:
    # The child's requests are its own; and a lock held by another thread at fork would stay held.
    global _lock
    _lock = threading.Lock()
    _counts[:] = [0] * len(_counts)


os.register_at_fork(after_in_child=_after_fork)


def throttled() -> int:
    """Attempts S3 has throttled in this process so far (read without the lock: one int)."""
    return _counts[THROTTLED]
