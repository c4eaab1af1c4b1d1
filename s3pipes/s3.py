"""The one place that talks to S3: URL parsing, clients, retries, errors, reads and writes.

Everything else in s3pipes calls :class:`S3Client`. A client holds only its :class:`S3Config`, so it
pickles to DataLoader workers; the boto3 client and the obstore stores behind it are built lazily, once
per process (keyed by pid), because neither is safe to share across ``fork``.

GETs go through one of two engines (``S3Config.engine``): obstore (:mod:`s3pipes._native`, Rust, the
default when installed) or boto3. Listing, HEAD, streams (``open``) and writes always use boto3; so do
GETs of keys that obstore cannot name (empty, "." or ".." path segments). Both engines raise the same
exceptions.
"""

from __future__ import annotations

import atexit
import functools
import io
import logging
import os
import shutil
import threading
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any, Callable, Iterable, Iterator, NamedTuple

import boto3
import botocore.config
import botocore.exceptions
import botocore.retries.standard as retries
from botocore import UNSIGNED

from ._concurrent import imap
from .config import S3Config, retry_delay
from .errors import BucketNotFoundError, ObjectChangedError

try:
    from . import _native
except ImportError:  # obstore is not installed: boto3 does everything
    _native = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

DEFAULT_REGION = "us-west-2"
_ENDPOINT_VARS = ("S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
_CREDENTIALS_HELP = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (after `aws configure` or "
    "`aws sso login`), or run where an instance/task role is attached; for a public bucket use "
    "S3Config(anonymous=True)"
)
# Parts an S3RawFile read in order keeps in flight after the one being read: three streamed a 1 GiB tar
# no faster than two here, and held 20 MiB more.
_AHEAD = 2
# Errors in the body of a response, after the status line: the request is repeated from the byte reached.
_BODY_ERRORS = (
    botocore.exceptions.IncompleteReadError,
    botocore.exceptions.ResponseStreamingError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectionClosedError,
    ConnectionError,
    TimeoutError,
)


# --------------------------------------------------------------------------------------------- URLs


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
    """One listed object: its URL and size in bytes."""

    url: str
    size: int


# ------------------------------------------------------------------------------------------ clients


@dataclass(frozen=True)
class _Resolved:
    region: str
    endpoint_url: str | None
    path_style: bool
    verify: bool


def _resolve(cfg: S3Config) -> _Resolved:
    endpoint = cfg.endpoint_url or next((os.environ[v] for v in _ENDPOINT_VARS if os.environ.get(v)), None)
    region = cfg.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region:
        try:
            region = boto3.session.Session(profile_name=cfg.profile).region_name
        except botocore.exceptions.ProfileNotFound as e:
            raise ValueError(f"AWS profile {cfg.profile!r} is not configured: {e}") from None
    path_style = cfg.path_style if cfg.path_style is not None else endpoint is not None
    verify = cfg.verify_ssl if cfg.verify_ssl is not None else os.environ.get("S3_VERIFY_SSL", "1") != "0"
    return _Resolved(region or DEFAULT_REGION, endpoint, path_style, verify)


def _engine(cfg: S3Config) -> str:
    """``"obstore"`` or ``"boto3"``: the config's choice, else ``S3PIPES_ENGINE``, else obstore if installed."""
    name = cfg.engine if cfg.engine != "auto" else os.environ.get("S3PIPES_ENGINE", "auto")
    if name == "auto":
        name = "obstore" if _native is not None else "boto3"
    if name not in ("obstore", "boto3"):
        raise ValueError(f"S3PIPES_ENGINE must be 'obstore', 'boto3' or 'auto', got {name!r}")
    if name == "obstore" and _native is None:
        raise ValueError("engine 'obstore' is not installed; pip install obstore, or use S3Config(engine='boto3')")
    if name == "obstore" and _native.forked_after_use:
        if not _warned_fork:
            _warned_fork.append(True)
            log.warning("pid %d was forked after obstore ran in its parent, where tokio cannot follow: reading "
                        "with boto3 here (start DataLoader workers before the first read, or use "
                        "multiprocessing_context='spawn' or 'forkserver', to keep obstore)", os.getpid())
        return "boto3"
    return name


_warned_fork: list[bool] = []


_lock = threading.Lock()
_clients: dict[tuple[Any, ...], Any] = {}  # (pid, config) -> boto3 client; (pid, config, bucket) -> store
_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}


def _after_fork() -> None:
    # A lock held by another thread at fork time would stay held forever in the child.
    global _lock
    _lock = threading.Lock()
    _clients.clear()
    _pools.clear()


os.register_at_fork(after_in_child=_after_fork)
atexit.register(_clients.clear)  # drop obstore stores while the interpreter can still run their finalizers


def reset_clients() -> None:
    """Forget this process's clients, so the next one reads the environment again: for a process that
    changes ``S3_ENDPOINT_URL`` or credentials after it has made requests (a notebook, the demo)."""
    with _lock:
        _clients.clear()


def _boto_client(cfg: S3Config) -> Any:
    key = (os.getpid(), cfg)
    client = _clients.get(key)
    if client is None:
        with _lock:  # boto3 sessions are not thread-safe
            client = _clients.get(key)
            if client is None:
                r = _resolve(cfg)
                bc = botocore.config.Config(
                    region_name=r.region,
                    signature_version=UNSIGNED if cfg.anonymous else None,
                    s3={"addressing_style": "path" if r.path_style else "auto"},
                    retries={"total_max_attempts": cfg.max_attempts, "mode": "standard"},
                    connect_timeout=cfg.connect_timeout,
                    read_timeout=cfg.read_timeout,
                    max_pool_connections=cfg.max_concurrency + 4,
                    tcp_keepalive=True,
                )
                client = _session(cfg).client("s3", endpoint_url=r.endpoint_url, config=bc, verify=r.verify)
                _install_retries(client, cfg.max_attempts)
                _clients[key] = client
                log.debug("built S3 client in pid %d: region=%s endpoint=%s", os.getpid(), r.region, r.endpoint_url)
    return client


class _Backoff(retries.BaseRetryBackoff):
    """:func:`~s3pipes.config.retry_delay` for botocore."""

    def __init__(self, detector: retries.ThrottlingErrorDetector) -> None:
        self._detector = detector

    def delay_amount(self, context: retries.RetryContext) -> float:
        return retry_delay(context.attempt_number, self._detector.is_throttling_error_from_context(context))


class _NoQuota:
    """botocore stops retrying once a per-client token bucket runs dry, which a burst of 503s across 64
    requests in flight does; a training job would then fail on a passing fault. Attempts bound retries."""

    def acquire_retry_quota(self, context: retries.RetryContext) -> bool:
        return True


def _install_retries(client: Any, max_attempts: int) -> None:
    """botocore's standard retry conditions (5xx, throttling, connection errors, timeouts) with our backoff."""
    adapter = retries.RetryEventAdapter()
    policy = retries.RetryPolicy(
        retry_checker=retries.StandardRetryConditions(max_attempts=max_attempts),
        retry_backoff=_Backoff(retries.ThrottlingErrorDetector(adapter)),
    )
    handler = retries.RetryHandler(policy, adapter, _NoQuota())
    client.meta.events.unregister("needs-retry.s3", unique_id="retry-config-s3")
    client.meta.events.register("needs-retry.s3", handler.needs_retry, unique_id="retry-config-s3")


def _session(cfg: S3Config) -> boto3.session.Session:
    try:
        return boto3.session.Session(profile_name=cfg.profile)
    except botocore.exceptions.ProfileNotFound as e:
        raise ValueError(f"AWS profile {cfg.profile!r} is not configured: {e}") from None


def _credentials(session: boto3.session.Session) -> Callable[[], tuple[str, str, str | None]]:
    """Boto3's credential chain as a callable for obstore: boto3 stays the one source of credentials,
    and refreshes role and SSO credentials itself."""
    lock = threading.Lock()

    def frozen() -> tuple[str, str, str | None]:
        with lock:
            creds = session.get_credentials()
            if creds is None:
                raise botocore.exceptions.NoCredentialsError()
            f = creds.get_frozen_credentials()
        return f.access_key, f.secret_key, f.token

    return frozen


def _store(cfg: S3Config, bucket: str) -> Any:
    key = (os.getpid(), cfg, bucket)
    store = _clients.get(key)
    if store is None:
        with _lock:
            store = _clients.get(key)
            if store is None:
                r = _resolve(cfg)
                creds = None if cfg.anonymous else _credentials(_session(cfg))
                store = _native.store(bucket, cfg, r.region, r.endpoint_url, r.path_style, r.verify, creds)
                _clients[key] = store
                log.debug("built obstore store for %s in pid %d", bucket, os.getpid())
    return store


def _pool(size: int) -> ThreadPoolExecutor:
    key = (os.getpid(), size)
    pool = _pools.get(key)
    if pool is None:
        with _lock:
            pool = _pools.setdefault(key, ThreadPoolExecutor(size, thread_name_prefix="s3pipes"))
    return pool


# ------------------------------------------------------------------------------------------- errors


def _attempts(e: BaseException) -> int:
    meta = getattr(e, "response", {}).get("ResponseMetadata", {}) if hasattr(e, "response") else {}
    return int(meta.get("RetryAttempts", 0)) + 1


def _translate(e: Exception, url: str, cfg: S3Config, action: str) -> Exception:
    """Map a botocore or obstore error to the built-in exception users catch, naming the URL and the fix."""
    native = _native is not None and isinstance(e, _native.Failure)
    attempts, detail = (e.attempts, e.detail) if native else (cfg.max_attempts, e)  # type: ignore[attr-defined]
    kind = e.kind if native else ""  # type: ignore[attr-defined]
    if kind == "credentials" or isinstance(
        e, (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError)
    ):
        return PermissionError(f"{url}: no AWS credentials found to {action}; {_CREDENTIALS_HELP}")
    if kind == "timeout" or isinstance(e, (botocore.exceptions.ConnectTimeoutError, botocore.exceptions.ReadTimeoutError)):
        return TimeoutError(
            f"{url}: timed out trying to {action} after {attempts} attempts ({detail}); check the "
            f"endpoint and network, or raise S3Config(read_timeout=..., max_attempts=...)"
        )
    if kind == "connect" or isinstance(
        e, (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectionError)
    ):
        return ConnectionError(
            f"{url}: cannot connect to the S3 endpoint to {action} after {attempts} attempts ({detail}); "
            f"check S3_ENDPOINT_URL / AWS_ENDPOINT_URL and the network"
        )
    if native:
        return _status_error(url, action, e.code, e.status, e.message, None, e.attempts)  # type: ignore[attr-defined]
    if isinstance(e, botocore.exceptions.ClientError):
        err = e.response.get("Error", {})
        meta = e.response.get("ResponseMetadata", {})
        region = err.get("Region") or meta.get("HTTPHeaders", {}).get("x-amz-bucket-region")
        return _status_error(url, action, str(err.get("Code", "")), meta.get("HTTPStatusCode"),
                             err.get("Message", e), region, _attempts(e))
    if isinstance(e, _BODY_ERRORS):
        return ConnectionError(f"{url}: the connection broke while trying to {action} ({e})")
    return e


def _status_error(url: str, action: str, code: str, status: int | None, message: object, region: str | None,
                  attempts: int) -> Exception:
    """The exception for S3's error ``code`` (an HTTP ``status`` where the body had none)."""
    bucket = S3Url.parse(url).bucket if url.startswith("s3://") else url
    if code == "NoSuchBucket":
        return BucketNotFoundError(
            f"{url}: bucket {bucket!r} does not exist; check the bucket name, the region and the endpoint"
        )
    if code in ("NoSuchKey", "404", "NotFound"):
        return FileNotFoundError(f"{url}: no such object; check the key (s3pipes.list_objects lists a prefix)")
    if code in ("PermanentRedirect", "AuthorizationHeaderMalformed", "301", "IllegalLocationConstraintException"):
        where = f"; the bucket is in {region}, set AWS_REGION={region}" if region else ""
        return ValueError(f"{url}: wrong region or endpoint for bucket {bucket!r}{where}")
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"):
        return PermissionError(f"{url}: the AWS credentials were rejected ({code}); {_CREDENTIALS_HELP}")
    if code in ("AccessDenied", "403", "Forbidden", "AllAccessDisabled"):
        return PermissionError(
            f"{url}: access denied to {action} ({code}); check that the credentials in use may read this "
            f"bucket, or set S3Config(requester_pays=True) for a requester-pays bucket"
        )
    if code in ("PreconditionFailed", "412"):
        return ObjectChangedError(f"{url}: the object changed while it was being read; read it again")
    if code == "InvalidRange":
        return ValueError(f"{url}: the byte range is outside the object")
    if (status or 0) >= 500 or code in ("SlowDown", "Throttling", "ThrottlingException", "RequestTimeout"):
        return ConnectionError(f"{url}: S3 answered {code or status} to {action} after {attempts} attempts: {message}")
    return OSError(f"{url}: S3 refused to {action}: {code or status}: {message}")


class _Breaks:
    """Counts broken response bodies of one read. A body that delivers ``_PROGRESS`` bytes before it
    breaks earns the attempts back, so a long stream survives scattered faults but not a dead server."""

    _PROGRESS = 1 << 20

    def __init__(self, url: object, attempts: int) -> None:
        self.url, self.attempts, self.left, self.mark = url, attempts, attempts, -1

    def broke(self, pos: int, cause: BaseException) -> None:
        if self.mark >= 0 and pos - self.mark >= self._PROGRESS:
            self.left = self.attempts
        self.mark = pos
        self.left -= 1
        if self.left <= 0:
            raise ConnectionError(
                f"{self.url}: the response body broke {self.attempts} times in a row, last at byte {pos}: {cause}"
            ) from cause
        log.info("%s: body broke at byte %d (%s); resuming", self.url, pos, cause)


# ------------------------------------------------------------------------------------------- client


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
        return _boto_client(self.config)

    def _extra(self) -> dict[str, str]:
        return {"RequestPayer": "requester"} if self.config.requester_pays else {}

    @contextmanager
    def _errors(self, url: str, action: str) -> Iterator[None]:
        try:
            yield
        except Exception as e:
            err = _translate(e, url, self.config, action)
            if err is e:
                raise
            if _native is not None and isinstance(e, _native.Failure) and e.status == 301:
                self.check_bucket(url)  # obstore does not report the bucket's region; boto3 reads it
            raise err from e

    @contextmanager
    def _reading(self, u: S3Url) -> Iterator[None]:
        try:
            with self._errors(str(u), "read the object"):
                yield
        except FileNotFoundError as e:
            self._raise_if_no_bucket(u, e)
            raise

    def _store_for(self, u: S3Url) -> Any:
        """The obstore store for ``u``'s bucket, or None where boto3 reads ``u``."""
        if _engine(self.config) == "obstore" and _native.representable(u.key):
            return _store(self.config, u.bucket)
        return None

    def _raise_if_no_bucket(self, u: S3Url, e: FileNotFoundError) -> None:
        """A 404 on a HEAD does not say whether the bucket or the key is missing: ask the bucket."""
        if not isinstance(e, BucketNotFoundError):
            self.check_bucket(str(u))

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
        region = _resolve(self.config).region
        where = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
        with self._errors(url, "create the bucket"):
            try:
                self._s3.create_bucket(Bucket=u.bucket, **where)
            except botocore.exceptions.ClientError as e:
                if e.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                    raise

    def head(self, url: str) -> dict[str, Any]:
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
                size = self.size(url)
            except BucketNotFoundError:
                raise
            except FileNotFoundError:
                u = u.child(u.key + "/")
            else:
                yield ObjectInfo(url, size)
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
                yield ObjectInfo(f"s3://{u.bucket}/{obj['Key']}", int(obj["Size"]))
        if not found:
            if str(u) != url:
                raise FileNotFoundError(f"{url}: no such object, and no objects under {u}; check the key")
            raise FileNotFoundError(f"{url}: no objects under this prefix; check the bucket and prefix")

    # -- reads

    def _get(self, u: S3Url, start: int = 0, end: int | None = None, etag: str | None = None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"Bucket": u.bucket, "Key": u.key}
        if start or end is not None:
            kwargs["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        if etag:
            kwargs["IfMatch"] = etag
        with self._reading(u):
            return self._s3.get_object(**kwargs, **self._extra())

    def _read_body(self, u: S3Url, resp: dict[str, Any], start: int, end: int) -> bytearray:
        """The bytes ``[start, end)`` from ``resp``'s body, re-requesting from the byte reached when the
        body breaks; the re-request is pinned to the ETag so a replaced object is an error, not a splice."""
        buf = bytearray(end - start)
        view = memoryview(buf)
        got, etag, breaks = 0, resp.get("ETag"), _Breaks(u, self.config.max_attempts)
        while True:
            try:
                raw = resp["Body"]
                while got < len(buf):
                    chunk = raw.read(min(len(buf) - got, 1 << 20))
                    if not chunk:
                        break
                    view[got : got + len(chunk)] = chunk
                    got += len(chunk)
                if got == len(buf):
                    return buf
                cause: Exception = EOFError(f"body ended after {got} of {len(buf)} bytes")
            except _BODY_ERRORS as e:
                cause = e
            finally:
                resp["Body"].close()
            breaks.broke(start + got, cause)
            resp = self._get(u, start + got, end, etag)

    def read(self, url: str) -> bytes:
        """The whole object. Large objects are fetched as parallel ranged GETs."""
        u = S3Url.parse(url)
        store = self._store_for(u)
        if store is not None:
            return self._read_native(u, store)[0]
        resp = self._get(u)
        size = int(resp["ContentLength"])
        part = self.config.part_size
        if size <= 2 * part:
            return bytes(self._read_body(u, resp, 0, size))
        first = self._read_body(u, resp, 0, part)  # reads one part, then drops the connection
        etag = resp.get("ETag")
        ranges = [(s, min(s + part, size)) for s in range(part, size, part)]
        parts = _pool(self.config.max_concurrency).map(lambda r: self._read_range(u, r[0], r[1], etag), ranges)
        return b"".join([first, *parts])

    def _read_native(self, u: S3Url, store: Any, budget: Any = None, ticket: int = 0) -> tuple[bytes, int]:
        """``read`` on the native engine: the object and the bytes of ``budget`` it holds."""
        breaks = functools.partial(_Breaks, u, self.config.max_attempts)
        with self._reading(u):
            return _native.read(store, u.key, self.config, breaks, _pool(self.config.max_concurrency), budget, ticket)

    def _read_held(self, url: str, budget: Any, ticket: int) -> tuple[bytes, int]:
        u = S3Url.parse(url)
        store = self._store_for(u)
        return self._read_native(u, store, budget, ticket) if store is not None else (self.read(url), 0)

    def _range_buffers(self, u: S3Url, start: int, end: int, etag: str | None) -> list[Any]:
        """Bytes ``[start, end)``, pinned to ``etag`` if given, as buffers to join."""
        if end <= start:
            return []
        store = self._store_for(u)
        if store is not None:
            with self._reading(u):
                breaks = _Breaks(u, self.config.max_attempts)
                return _native.get(store, u.key, start, end, etag, self.config.max_attempts, breaks)
        resp = self._get(u, start, end, etag)
        return [self._read_body(u, resp, start, start + int(resp["ContentLength"]))]

    def _read_range(self, u: S3Url, start: int, end: int, etag: str | None) -> bytes:
        return b"".join(self._range_buffers(u, start, end, etag))

    def read_range(self, url: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the object; fewer only where the object ends before ``end``."""
        if start < 0 or end < start:
            raise ValueError(f"{url}: bad byte range [{start}, {end})")
        return self._read_range(S3Url.parse(url), start, end, None)

    def read_many(self, urls: Iterable[str], concurrency: int | None = None, ordered: bool = True,
                  max_bytes: int | None = None) -> Iterator[tuple[str, bytes]]:
        """``(url, bytes)`` for each URL, with up to ``concurrency`` objects (default
        ``config.max_concurrency``) in flight, each in a thread, in input order unless ``ordered=False``.

        URLs are pulled only as slots free up. With obstore, large objects arrive as parallel ranged
        parts, and the bodies fetched but not yet consumed stay under ``max_bytes`` (default 16 parts;
        the oldest object always passes). The first failure is raised; the rest are cancelled.
        """
        window = concurrency or self.config.max_concurrency
        if _engine(self.config) != "obstore":
            yield from imap(self.read, urls, window, ordered)
        else:
            yield from _native.read_many(self._read_held, urls, window, ordered,
                                         max_bytes or 16 * self.config.part_size)

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


def _object_url(url: str) -> S3Url:
    u = S3Url.parse(url)
    if u.is_prefix:
        raise ValueError(f"{url!r} ends in '/'; name an object to write, e.g. 's3://bucket/dir/file.bin'")
    return u


def _object_call(client: S3Client, url: str, action: str, op: str, **kwargs: Any) -> dict[str, Any]:
    u = S3Url.parse(url)
    with client._errors(url, action):
        return getattr(client._s3, op)(Bucket=u.bucket, Key=u.key, **kwargs, **client._extra())


def _upload_part(client: S3Client, url: str, upload_id: str, number: int, data: bytes) -> dict[str, Any]:
    resp = _object_call(client, url, "write the object", "upload_part", UploadId=upload_id, PartNumber=number,
                        Body=data)
    return {"PartNumber": number, "ETag": resp["ETag"]}


_MIN_PART = 5 * 1024 * 1024  # S3 refuses a multipart part under 5 MiB, but for the last


class S3Writer(io.BufferedIOBase):
    """The stream of :meth:`S3Client.open_write`: a multipart upload completed by :meth:`close` and
    cancelled by :meth:`abort`. A write smaller than one part is a single PUT at close."""

    _IN_FLIGHT = 4  # parts uploading at once; memory is (this + 1) parts

    def __init__(self, client: S3Client, url: str) -> None:
        super().__init__()
        self._client, self._url = client, url
        self._buf = bytearray()
        self._written = 0
        self._upload_id: str | None = None
        self._parts: list[Future[dict[str, Any]]] = []
        _object_url(url)  # after the fields: __del__ runs on a stream whose __init__ raised, too

    @property
    def name(self) -> str:
        return self._url

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._written

    def write(self, b: Any) -> int:
        if self.closed:
            raise ValueError(f"{self._url}: write to a closed upload")
        n = memoryview(b).nbytes
        self._buf += b
        self._written += n
        part = max(self._client.config.part_size, _MIN_PART)
        while len(self._buf) >= part:
            self._send(bytes(self._buf[:part]))
            del self._buf[:part]
        return n

    def _call(self, action: str, op: str, **kwargs: Any) -> dict[str, Any]:
        return _object_call(self._client, self._url, action, op, **kwargs)

    def _send(self, data: bytes) -> None:
        if self._upload_id is None:
            self._upload_id = self._call("start the upload", "create_multipart_upload")["UploadId"]
        pending = [f for f in self._parts if not f.done()]
        if len(pending) >= self._IN_FLIGHT:
            wait(pending, return_when=FIRST_COMPLETED)
        for f in self._parts:
            if f.done() and f.exception() is not None:
                raise f.exception()  # type: ignore[misc]  # a failed part fails the write now, not at close
        # The part uploads hold no reference to this stream, so dropping it unclosed finalises it at once.
        number = len(self._parts) + 1
        self._parts.append(_pool(self._client.config.max_concurrency).submit(
            _upload_part, self._client, self._url, self._upload_id, number, data))

    def close(self) -> None:
        """Upload what is left and complete the object; on any error the upload is aborted."""
        if self.closed:
            return
        try:
            if self._upload_id is None:
                self._call("write the object", "put_object", Body=bytes(self._buf))
            else:
                if self._buf:
                    self._send(bytes(self._buf))
                parts = [f.result() for f in self._parts]
                self._call("complete the upload", "complete_multipart_upload", UploadId=self._upload_id,
                           MultipartUpload={"Parts": parts})
        except BaseException:
            self.abort()
            raise
        self._buf = bytearray()
        super().close()

    def abort(self) -> None:
        """Drop everything written: no object appears and no parts are kept."""
        if self.closed:
            return
        super().close()
        self._buf = bytearray()
        for f in self._parts:
            f.cancel()
        wait(self._parts)  # a part still uploading after the abort would be kept (and billed)
        if self._upload_id is not None:
            self._call("abort the upload", "abort_multipart_upload", UploadId=self._upload_id)
            log.info("%s: upload aborted", self._url)

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:
        # io's finaliser would close(), completing an upload that was abandoned half-written.
        if not self.closed:
            try:
                self.abort()
            except Exception:  # noqa: BLE001 - nothing can be raised from a finaliser
                log.warning("%s: could not abort an abandoned upload", self._url, exc_info=True)

    def __getstate__(self) -> None:
        raise TypeError(f"an open S3 upload ({self._url}) cannot be pickled")


class S3RawFile(io.RawIOBase):
    """A seekable raw file over one object, read as ranged GETs of ``part_size`` pinned to the ETag of
    its HEAD. Read in order, it keeps the next parts in flight, in parallel: one GET at a time
    streams at a fraction of what parallel GETs reach. A seek elsewhere drops them and reads one part
    from there, until reading goes on in order again (a zip's directory, then its members)."""

    def __init__(self, client: S3Client, url: str) -> None:
        super().__init__()
        self._client, self._url, self._u = client, url, S3Url.parse(url)
        self._size: int | None = None
        self._etag: str | None = None
        self._pos = 0
        self._buf, self._buf_start = memoryview(b""), 0
        self._ahead: deque[tuple[int, int, Future[list[Any]]]] = deque()  # parts after the buffer, in order

    @property
    def name(self) -> str:
        return self._url

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    @property
    def size(self) -> int:
        if self._size is None:
            head = self._client.head(self._url)
            self._size, self._etag = int(head["ContentLength"]), head.get("ETag")
        return self._size

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"bad whence {whence}")
        if pos < 0:
            raise OSError(f"{self._url}: seek to negative position {pos}")
        self._pos = pos
        return pos

    def readinto(self, b: Any) -> int:
        if self._pos >= self.size:
            return 0
        if not 0 <= self._pos - self._buf_start < len(self._buf):
            self._fill()
        off = self._pos - self._buf_start
        view = memoryview(b).cast("B")
        n = min(len(view), len(self._buf) - off)
        view[:n] = self._buf[off : off + n]
        self._pos += n
        return n

    def _fill(self) -> None:
        in_order = self._pos == self._buf_start + len(self._buf)
        if not in_order:
            self._drop()
        if not self._ahead:
            self._fetch(self._pos)
        while in_order and len(self._ahead) <= _AHEAD and self._ahead[-1][1] < self.size:
            self._fetch(self._ahead[-1][1])
        start, _, part = self._ahead.popleft()
        chunks = part.result()
        self._buf = memoryview(chunks[0] if len(chunks) == 1 else b"".join(chunks)).cast("B")
        self._buf_start = start

    def _fetch(self, start: int) -> None:
        end = min(start + self._client.config.part_size, self.size)
        pool = _pool(self._client.config.max_concurrency)
        self._ahead.append((start, end, pool.submit(self._client._range_buffers, self._u, start, end, self._etag)))

    def _drop(self) -> None:
        while self._ahead:
            self._ahead.popleft()[2].cancel()

    def close(self) -> None:
        self._drop()
        self._buf = memoryview(b"")
        super().close()

    def __getstate__(self) -> None:
        raise TypeError(f"an open S3 file ({self._url}) cannot be pickled; pass its URL instead")
