"""S3Client: lists, sizes, checks, reads and writes S3 objects.

Listing, HEAD, streams' metadata and writes go through boto3; GETs through the engine
:func:`~.env.engine_for` picks (obstore or boto3), with one read strategy for both (:mod:`.engine`).
Every failure, from either, becomes the same exception through one table (:mod:`.errors`).
"""

from __future__ import annotations

import functools
import io
import shutil
from contextlib import contextmanager
from typing import IO, Any, Iterable, Iterator

import botocore.exceptions

from ..config import S3Config
from ..errors import BucketNotFoundError
from .._concurrent import Window
from . import engine, usage
from .env import boto_client, engine_for, pool, resolve
from .errors import Failure, from_botocore, translate
from .files import S3RawFile, S3Writer
from .retry import Breaks
from .url import ObjectInfo, S3Url


class S3Client:
    """Lists, sizes, checks, reads and writes S3 objects; safe to pickle and to share across threads.

    >>> s3 = S3Client(S3Config(endpoint_url="http://127.0.0.1:9000"))  # doctest: +SKIP
    >>> [o.url for o in s3.list("s3://bucket/train/")]                  # doctest: +SKIP
    ['s3://bucket/train/shard-000.tar', 's3://bucket/train/shard-001.tar']
    >>> s3.read_range("s3://bucket/train/shard-000.tar", 0, 512)        # doctest: +SKIP
    """

    def __init__(self, config: S3Config | None = None) -> None:
        self.config = config or S3Config()

    def __repr__(self) -> str:
        return f"S3Client({self.config!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, S3Client) and other.config == self.config

    def __hash__(self) -> int:
        return hash(self.config)

    @property
    def _s3(self) -> Any:
        return boto_client(self.config)

    def _extra(self) -> dict[str, str]:
        return {"RequestPayer": "requester"} if self.config.requester_pays else {}

    @contextmanager
    def _errors(self, url: str, action: str) -> Iterator[None]:
        try:
            yield
        except Exception as e:
            failure = e if isinstance(e, Failure) else from_botocore(e, self.config.max_attempts)
            if failure is None:
                raise
            if failure is not e:
                failure.__cause__ = e  # the chain shows botocore's own account
            r = resolve(self.config)
            raise translate(failure, url, action, r.endpoint_url, r.endpoint_setting) from failure

    @contextmanager
    def _reading(self, u: S3Url) -> Iterator[None]:
        try:
            with self._errors(str(u), "read the object"):
                yield
        except FileNotFoundError as e:
            self._raise_if_no_bucket(u, e)
            raise
        except ValueError as e:
            moved = e.__cause__
            if isinstance(moved, Failure) and moved.status == 301 and not moved.region:
                self.check_bucket(str(u))  # obstore does not report the bucket's region; boto3's HEAD does
            raise

    def _raise_if_no_bucket(self, u: S3Url, e: FileNotFoundError) -> None:
        """A 404 on a HEAD does not say whether the bucket or the key is missing: ask the bucket."""
        if not isinstance(e, BucketNotFoundError):
            self.check_bucket(str(u))

    def _breaks(self, u: S3Url) -> Breaks:
        return Breaks(u, self.config.max_attempts)

    # -- metadata

    def check_bucket(self, url: str) -> None:
        """Raise unless the bucket of ``url`` exists and these credentials may use it."""
        u = S3Url.parse(url)
        with self._errors(url, "check the bucket"):
            try:
                self._s3.head_bucket(Bucket=u.bucket, **self._extra())
            except botocore.exceptions.ClientError as e:
                if str(e.response.get("Error", {}).get("Code", "")) in ("404", "NotFound"):
                    e.response["Error"]["Code"] = "NoSuchBucket"  # HEAD has no body to say so
                raise

    def create_bucket(self, url: str) -> None:
        """Create the bucket of ``url`` in the configured region; one these credentials own already is fine."""
        u = S3Url.parse(url)
        region = resolve(self.config).region
        where = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
        with self._errors(url, "create the bucket"):
            try:
                self._s3.create_bucket(Bucket=u.bucket, **where)
            except botocore.exceptions.ClientError as e:
                if e.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                    raise

    def head(self, url: str) -> dict[str, Any]:
        """The object's metadata, as boto3's ``head_object`` returns it."""
        u = S3Url.parse(url)
        try:
            with self._errors(url, "read the object's metadata"):
                return self._s3.head_object(Bucket=u.bucket, Key=u.key, **self._extra())
        except FileNotFoundError as e:
            self._raise_if_no_bucket(u, e)
            raise

    def size(self, url: str) -> int:
        """The object's size in bytes."""
        return int(self.head(url)["ContentLength"])

    def exists(self, url: str) -> bool:
        """Whether the object exists; a missing bucket or denied access still raises."""
        try:
            self.head(url)
        except BucketNotFoundError:
            raise
        except FileNotFoundError:
            return False
        return True

    # -- listing

    def list(self, url: str) -> Iterator[ObjectInfo]:
        """Objects under a prefix, in key order, page by page as they are consumed.

        A URL that names an object yields that object alone; ``s3://b/dir`` with no such object lists
        ``s3://b/dir/``. Zero-byte ``dir/`` markers are skipped. A prefix with no objects raises
        ``FileNotFoundError``.
        """
        u = S3Url.parse(url)
        if not u.is_prefix:
            try:
                head = self.head(url)
            except BucketNotFoundError:
                raise
            except FileNotFoundError:
                u = u.child(u.key + "/")
            else:
                yield ObjectInfo(url, int(head["ContentLength"]), head.get("ETag"))
                return
        found = False
        pages = iter(self._s3.get_paginator("list_objects_v2").paginate(Bucket=u.bucket, Prefix=u.key, **self._extra()))
        while True:
            with self._errors(str(u), "list the prefix"):
                page = next(pages, None)
            if page is None:
                break
            for obj in page.get("Contents", ()):
                if obj["Key"].endswith("/"):
                    continue
                found = True
                yield ObjectInfo(f"s3://{u.bucket}/{obj['Key']}", int(obj["Size"]), obj.get("ETag"))
        if not found:
            if str(u) != url:
                raise FileNotFoundError(f"{url}: no such object, and no objects under {u}; check the key")
            raise FileNotFoundError(f"{url}: no objects under this prefix; check the bucket and prefix")

    # -- reads

    def read(self, url: str) -> bytes:
        """The whole object: the first GET asks for one ``part_size`` part, and the rest of a larger
        object comes as parallel ranged GETs pinned to its ETag."""
        return self._read_held(url)[0]

    def _read_held(self, url: str, budget: engine.Budget | None = None, ticket: int = 0) -> tuple[bytes, int]:
        """``read``, and the bytes of ``budget`` the object holds until it is consumed."""
        u = S3Url.parse(url)
        cfg = self.config
        with self._reading(u):
            return engine.read(engine_for(cfg, u.bucket, u.key), u.key, cfg.part_size,
                               functools.partial(self._breaks, u), pool(cfg.max_concurrency), budget, ticket)

    def range_buffers(self, u: S3Url, start: int, end: int, etag: str | None) -> list[Any]:
        """Bytes ``[start, end)``, pinned to ``etag`` if given, as buffers to join."""
        if end <= start:
            return []
        with self._reading(u):
            return engine.get(engine_for(self.config, u.bucket, u.key), u.key, start, end, etag, self._breaks(u))

    def read_range(self, url: str, start: int, end: int, etag: str | None = None) -> bytes:
        """Bytes ``[start, end)`` of the object; fewer only where the object ends before ``end``. With
        ``etag``, the GET is pinned to it (``If-Match``): another version raises ``ObjectChangedError``."""
        if start < 0 or end < start:
            raise ValueError(f"{url}: bad byte range [{start}, {end})")
        return b"".join(self.range_buffers(S3Url.parse(url), start, end, etag))

    def read_metadata(self, url: str) -> bytes:
        """A small object read through boto3, as listings are: the main process of a DataLoader reads
        a prefix's index this way, because obstore's runtime, once started, cannot follow the fork of
        its workers (they would fall back to boto3 for every GET)."""
        u = S3Url.parse(url)
        with self._errors(url, "read the object"):  # a GET's 404 says NoSuchKey or NoSuchBucket itself
            return self._s3.get_object(Bucket=u.bucket, Key=u.key, **self._extra())["Body"].read()

    def read_many(self, urls: Iterable[str], concurrency: int | None = None, ordered: bool = True,
                  max_bytes: int | None = None) -> Iterator[tuple[str, bytes]]:
        """``(url, bytes)`` for each URL, each object read in a thread, in input order unless
        ``ordered=False``. Objects in flight: at most ``concurrency``; by default (``None``) from
        ``config.max_concurrency`` up to four times that while the consumer waits on the reads and
        throughput still grows. Either way the count halves each time S3 throttles (503 SlowDown) and
        grows back by one a round (see :class:`~s3pipes._concurrent.Window`; ``-v`` logs it).

        URLs are pulled only as slots free up. Large objects arrive as parallel ranged parts, and the
        bodies fetched but not yet consumed stay under ``max_bytes`` (default 16 parts; the oldest
        object always passes). The first failure is raised; the rest are cancelled.
        """
        yield from engine.read_many(self._read_held, urls, self.window(concurrency), ordered,
                                    max_bytes or 16 * self.config.part_size)

    def window(self, concurrency: int | None = None) -> Window:
        """What a reader keeps in flight: at most ``concurrency`` objects, or by default from
        ``config.max_concurrency`` up to four times that; halved each time S3 throttles."""
        start = concurrency or self.config.max_concurrency
        return Window(start, concurrency or 4 * start, usage.throttled, "read_s3")

    def open(self, url: str, buffer_size: int = 1 << 20) -> io.BufferedReader:
        """A seekable, read-only file over the object that streams: read in order, it keeps two ranged
        GETs of ``part_size`` in flight and holds at most three parts (see :class:`S3RawFile`)."""
        return io.BufferedReader(S3RawFile(self, url), buffer_size=buffer_size)

    # -- writes

    def write(self, url: str, data: bytes | bytearray | memoryview | IO[bytes]) -> None:
        """Write ``data`` (bytes or a binary stream) to ``url`` through :meth:`open_write`: multipart in
        ``part_size`` pieces when large, uploaded in parallel, streamed without a temporary file. A failed
        upload is aborted, so nothing is left at the key."""
        with self.open_write(url) as f:
            if isinstance(data, (bytes, bytearray, memoryview)):
                f.write(data)
            else:
                shutil.copyfileobj(data, f, self.config.part_size)

    def open_write(self, url: str) -> S3Writer:
        """A write-only stream to ``url`` that uploads ``part_size`` parts while it is written, a few in
        flight, with no temporary file. The object appears only when the stream is closed; leaving a
        ``with`` block by an exception, or dropping the stream unclosed, aborts the upload instead, so a
        failed write never leaves a partial object at the key."""
        return S3Writer(self, url)

    def call(self, url: str, action: str, op: str, **kwargs: Any) -> dict[str, Any]:
        """boto3's ``op`` on the object of ``url``, its errors translated as failures to ``action``."""
        u = S3Url.parse(url)
        with self._errors(url, action):
            return getattr(self._s3, op)(Bucket=u.bucket, Key=u.key, **kwargs, **self._extra())
