"""The native GET engine: obstore (Rust's object_store on tokio) for GET and ranged GET.

Only :mod:`s3pipes.s3` calls this module: it owns URLs, configuration, credentials and the exceptions
users see, and gets failed requests back as :class:`Failure`, which it maps like botocore's errors.
Each request is a blocking call that releases the GIL while tokio does the I/O, made from a pool of
threads. Measured on 2 cores against nginx, that costs half the CPU per object of the same requests as
asyncio coroutines, where each finished future wakes the event loop thread through its self-pipe.
object_store's own retries are off so that retries, the resume of a broken body (a Range pinned with
If-Match) and the messages are the same for both engines.
"""

from __future__ import annotations

import os
import re
import threading
import time
from concurrent.futures import CancelledError, Executor
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Iterator

import obstore
from obstore.exceptions import BaseError, PreconditionError
from obstore.store import S3Store

from ._concurrent import imap
from .config import S3Config, retry_delay

# Bodies up to this size are collected in one call (a break re-reads them whole); larger ones are
# streamed chunk by chunk so that a break resumes from the byte reached.
_WHOLE = 256 << 10
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
_STATUS = re.compile(r"status code: (\d{3})")
_CODE = re.compile(r"<Code>([^<]*)</Code>")
_MESSAGE = re.compile(r"<Message>([^<]*)</Message>")
_KIND = re.compile(r"HttpError \{\s*kind: (\w+)")


class Failure(Exception):
    """A request that failed for good. ``kind``: "status" (S3 answered ``status`` with ``code``),
    "timeout", "connect" or "credentials"; ``detail`` is obstore's one-line account."""

    def __init__(self, kind: str, detail: str, status: int = 0, code: str = "", message: str = "",
                 attempts: int = 1) -> None:
        super().__init__(detail)
        self.kind, self.detail, self.status, self.code = kind, detail, status, code
        self.message, self.attempts = message, attempts

    @property
    def retryable(self) -> bool:
        return self.kind in ("timeout", "connect") or self.status in _RETRY_STATUS


def _failure(e: Exception, attempts: int) -> Failure:
    text = str(e)
    detail = text.split("\n\nDebug source", 1)[0].strip()
    if "credential provider" in text:
        return Failure("credentials", detail, attempts=attempts)
    if isinstance(e, PreconditionError):
        return Failure("status", detail, 412, "PreconditionFailed", attempts=attempts)
    status = _STATUS.search(text)
    if status:
        code, message = _CODE.search(text), _MESSAGE.search(text)
        return Failure("status", detail, int(status.group(1)), code.group(1) if code else status.group(1),
                       message.group(1) if message else detail, attempts)
    if "redirect" in text:
        return Failure("status", detail, 301, "PermanentRedirect", attempts=attempts)
    kind = _KIND.search(text)
    return Failure("timeout" if kind and kind.group(1) == "Timeout" else "connect", detail, attempts=attempts)


# ----------------------------------------------------------------------------------------- stores


def representable(key: str) -> bool:
    """Whether object_store can name ``key``: it rejects empty, "." and ".." path segments."""
    return bool(key) and all(seg not in ("", ".", "..") for seg in key.split("/"))


def store(bucket: str, cfg: S3Config, region: str, endpoint: str | None, path_style: bool, verify: bool,
          credentials: Callable[[], tuple[str, str, str | None]] | None) -> S3Store:
    """An obstore S3 store for one bucket. ``credentials`` (from boto3's chain) is asked again before
    the answer is five minutes old, so refreshed role credentials are picked up."""
    config: dict[str, Any] = {"region": region, "virtual_hosted_style_request": not path_style}
    if endpoint:
        config["endpoint"] = endpoint
    if cfg.anonymous:
        config["skip_signature"] = True
    if cfg.requester_pays:
        config["request_payer"] = True
    client = {
        "allow_http": True,
        "allow_invalid_certificates": not verify,
        "connect_timeout": timedelta(seconds=cfg.connect_timeout),
        "read_timeout": timedelta(seconds=cfg.read_timeout),
        "timeout": timedelta(days=1),  # a whole response; stalls are read_timeout's job
        "pool_max_idle_per_host": str(cfg.max_concurrency + 4),
    }

    def provide() -> dict[str, Any]:
        key, secret, token = credentials()  # type: ignore[misc]
        return {"access_key_id": key, "secret_access_key": secret, "token": token,
                "expires_at": datetime.now(timezone.utc) + timedelta(minutes=5)}

    return S3Store(bucket, config=config, client_options=client, retry_config={"max_retries": 0},
                   credential_provider=None if cfg.anonymous else provide)  # type: ignore[arg-type]


# tokio's runtime does not survive fork: its threads stay in the parent, and a child that uses it fails.
# A child forked after obstore did any I/O must leave it alone (s3.py falls back to boto3 there).
used = False
forked_after_use = False


def _after_fork() -> None:
    global forked_after_use
    forked_after_use = forked_after_use or used


os.register_at_fork(after_in_child=_after_fork)


# ------------------------------------------------------------------------------------------ reads


def send(st: S3Store, key: str, start: int, end: int | None, etag: str | None, attempts: int) -> Any:
    """Send a GET for ``[start, end)`` (``end=None``: the whole object) and wait for its headers,
    retrying what S3 says may be retried."""
    global used
    used = True
    opts: dict[str, Any] = {}
    if end is not None:
        opts["range"] = (start, end)
    if etag:
        opts["if_match"] = etag
    for attempt in range(1, attempts + 1):
        try:
            return obstore.get(st, key, options=opts)  # type: ignore[arg-type]
        except (BaseError, OSError) as e:
            failure = _failure(e, attempt)
            if not failure.retryable or attempt == attempts:
                raise failure from e
        time.sleep(retry_delay(attempt, failure.status == 503 or failure.code == "SlowDown"))
    raise AssertionError("unreachable")


def _body(st: S3Store, key: str, res: Any, attempts: int, breaks: Any, whole: bool = False) -> list[Any]:
    """The body of ``res``, as buffers to join once. ``whole`` (or a body of at most ``_WHOLE``) collects
    it in one call, without copies; otherwise, and after any break, it streams, so a break re-requests
    from the byte reached, pinned to the ETag, until ``breaks`` gives up."""
    pos, end = res.range
    whole = whole or end - pos <= _WHOLE
    etag = None  # looked up only for a re-request: res.meta builds a dict each time
    chunks: list[Any] = []
    while True:
        try:
            if whole:
                chunks.append(res.bytes())
                return chunks
            for chunk in res.stream(min_chunk_size=1):
                chunks.append(chunk)
                pos += len(chunk)
            if pos >= end:
                return chunks
            cause: Exception = EOFError(f"body ended at byte {pos} of {end}")
        except (BaseError, OSError) as e:
            cause = e
        breaks.broke(pos, cause)
        whole = False
        etag = etag or res.meta["e_tag"]
        res = send(st, key, pos, end, etag, attempts)


def get(st: S3Store, key: str, start: int, end: int, etag: str | None, attempts: int, breaks: Any,
        whole: bool = False) -> list[Any]:
    """Bytes ``[start, end)``, as buffers to join."""
    return _body(st, key, send(st, key, start, end, etag, attempts), attempts, breaks, whole)


def read(st: S3Store, key: str, cfg: S3Config, breaks: Callable[[], Any], parts: Executor,
         budget: Budget | None = None, ticket: int = 0) -> tuple[bytes, int]:
    """The whole object and the bytes of ``budget`` it holds. The first GET asks for the first part, so
    one request reads a small object; the rest of a larger one comes as ranged GETs in parallel on
    ``parts``, all pinned to the first ETag."""
    part, attempts = cfg.part_size, cfg.max_attempts
    try:
        res = send(st, key, 0, part, None, attempts)
    except Failure as e:
        if e.status != 416:
            raise
        res = send(st, key, 0, None, None, attempts)  # an empty object has no byte 0 to ask for
    stop = res.range[1]
    size = stop if stop < part else res.meta["size"]  # res.meta builds a dict with a parsed date
    held = budget.take(ticket, size) if budget else 0
    try:
        if size <= stop:
            return b"".join(_body(st, key, res, attempts, breaks())), held
        etag = res.meta["e_tag"]
        rest = [parts.submit(get, st, key, s, min(s + part, size), etag, attempts, breaks(), True)
                for s in range(part, size, part)]
        try:
            first = _body(st, key, res, attempts, breaks(), whole=True)
            return b"".join([*first, *(c for f in rest for c in f.result())]), held
        finally:
            for f in rest:
                f.cancel()
    except BaseException:
        if budget:
            budget.give(held)
        raise


class Budget:
    """Bytes held by objects fetched but not yet consumed. An object waits for room after its headers
    (before its body); the oldest object not yet consumed never waits, so ordered output cannot stall
    behind later objects holding the room it needs, and an object larger than the budget still passes."""

    def __init__(self, limit: int) -> None:
        self.free, self.head, self.closed = limit, 0, False
        self.cond = threading.Condition()

    def take(self, ticket: int, n: int) -> int:
        with self.cond:
            while n > self.free and ticket != self.head:
                if self.closed:
                    raise CancelledError
                self.cond.wait()
            self.free -= n
        return n

    def give(self, n: int, head: int | None = None) -> None:
        """Return ``n`` bytes; ``head`` is now the oldest object not yet consumed."""
        with self.cond:
            self.free += n
            if head is not None:
                self.head = head
            self.cond.notify_all()

    def close(self) -> None:
        """Nothing more will be consumed: objects waiting for room give up."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()


def read_many(read: Callable[[str, Budget, int], tuple[bytes, int]], urls: Iterable[str], window: int,
              ordered: bool, max_bytes: int) -> Iterator[tuple[str, bytes]]:
    """Yield ``(url, bytes)`` for each URL, read by ``read(url, budget, ticket)`` in up to ``window``
    threads, with the bodies fetched but not yet consumed held under ``max_bytes``."""
    budget = Budget(max_bytes)
    results = imap(lambda item: read(item[1], budget, item[0]), enumerate(urls), window, ordered)
    consumed: set[int] = set()
    head = 0  # the oldest ticket not yet consumed
    try:
        for (ticket, url), (data, held) in results:
            consumed.add(ticket)
            while head in consumed:
                consumed.remove(head)
                head += 1
            budget.give(held, head)
            yield url, data
    finally:
        budget.close()
        results.close()
