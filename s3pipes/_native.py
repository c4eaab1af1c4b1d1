"""The native GET engine: obstore (Rust's object_store on tokio) for GET and ranged GET.

Only :mod:`s3pipes.s3` calls this module: it owns URLs, configuration, credentials and the exceptions
users see, and gets failed requests back as :class:`Failure`, which it maps like botocore's errors.
Requests are coroutines on one asyncio loop thread per process while tokio does the I/O, so a worker keeps
dozens of GETs in flight without a Python thread each. object_store's own retries are off so that retries,
the resume of a broken body (a Range pinned with If-Match) and the messages are the same for both engines.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import itertools
import os
import queue
import re
import threading
from collections import deque
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Coroutine, Iterable, Iterator

import obstore
from obstore.exceptions import BaseError, PreconditionError
from obstore.store import S3Store

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


# -------------------------------------------------------------------------------- stores and loop


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


_lock = threading.Lock()
_loops: dict[int, asyncio.AbstractEventLoop] = {}
# tokio's runtime does not survive fork: its threads stay in the parent, and a child that uses it hangs.
# A child forked after obstore did any I/O must leave it alone (s3.py falls back to boto3 there).
forked_after_use = False


def _after_fork() -> None:
    global _lock, forked_after_use
    _lock = threading.Lock()  # another thread may have held it at fork time
    forked_after_use = forked_after_use or bool(_loops)
    _loops.clear()  # the loop thread does not exist in the child


os.register_at_fork(after_in_child=_after_fork)


@atexit.register
def _shutdown() -> None:
    # Stop this process's loop before the interpreter finalizes: a tokio thread calling into a
    # finalizing interpreter aborts the process.
    loop = _loops.pop(os.getpid(), None)
    if loop is not None:
        done = threading.Event()
        loop.call_soon_threadsafe(lambda: (loop.stop(), done.set()))
        done.wait(5)


def _loop() -> asyncio.AbstractEventLoop:
    loop = _loops.get(os.getpid())
    if loop is None:
        with _lock:
            loop = _loops.get(os.getpid())
            if loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="s3pipes-io", daemon=True).start()
                _loops[os.getpid()] = loop
    return loop


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` on this process's loop thread and wait for it."""
    return asyncio.run_coroutine_threadsafe(coro, _loop()).result()


# ------------------------------------------------------------------------------------------ reads


async def send(st: S3Store, key: str, start: int, end: int | None, etag: str | None, attempts: int) -> Any:
    """Send a GET for ``[start, end)`` and wait for its headers, retrying what S3 says may be retried."""
    opts: dict[str, Any] = {}
    if start or end is not None:
        opts["range"] = (start, end) if end is not None else {"offset": start}
    if etag:
        opts["if_match"] = etag
    for attempt in range(1, attempts + 1):
        try:
            return await obstore.get_async(st, key, options=opts)  # type: ignore[arg-type]
        except (BaseError, OSError) as e:
            failure = _failure(e, attempt)
            if not failure.retryable or attempt == attempts:
                raise failure from e
        await asyncio.sleep(retry_delay(attempt, failure.status == 503 or failure.code == "SlowDown"))
    raise AssertionError("unreachable")


async def _body(st: S3Store, key: str, res: Any, end: int | None, attempts: int, breaks: Any,
                whole: bool = False) -> list[Any]:
    """The body of ``res`` up to ``end`` (its own end if None), as buffers to join once. ``whole`` (or a
    body of at most ``_WHOLE``) collects it in one call, without copies; otherwise, and after any break,
    it streams, so a break re-requests from the byte reached, pinned to the ETag, until ``breaks`` gives up."""
    start, stop = res.range
    end = stop if end is None else min(end, stop)
    etag = None  # looked up only for a re-request: res.meta builds a dict each time
    chunks: list[Any] = []
    pos = start
    whole = (whole or end - start <= _WHOLE) and stop == end
    while True:
        try:
            if whole:
                chunks.append(await res.bytes_async())
                return chunks
            async for chunk in res.stream(min_chunk_size=1):
                take = min(len(chunk), end - pos)
                chunks.append(chunk[:take] if take < len(chunk) else chunk)
                pos += take
                if pos >= end:
                    return chunks
            cause: Exception = EOFError(f"body ended at byte {pos} of {end}")
        except (BaseError, OSError) as e:
            cause = e
        breaks.broke(pos, cause)
        whole = False
        etag = etag or res.meta["e_tag"]
        res = await send(st, key, pos, end, etag, attempts)


async def get(st: S3Store, key: str, start: int, end: int | None, etag: str | None, attempts: int,
              breaks: Any, whole: bool = False) -> list[Any]:
    """Bytes ``[start, end)`` (``end=None``: to the object's end), as buffers to join."""
    res = await send(st, key, start, end, etag, attempts)
    return await _body(st, key, res, None, attempts, breaks, whole)


async def read(st: S3Store, key: str, cfg: S3Config, breaks: Callable[[], Any],
               budget: _Budget | None = None, ticket: int = 0) -> tuple[bytes, int]:
    """The whole object and the bytes of ``budget`` it holds: one GET, or when larger than two parts the
    first part of that GET and the rest as ranged GETs in parallel, all pinned to the first ETag."""
    part = cfg.part_size
    res = await send(st, key, 0, None, None, cfg.max_attempts)
    size = res.range[1]  # not res.meta, which builds a dict with a parsed date each time
    held = await budget.take(ticket, size) if budget else 0
    try:
        if size <= 2 * part:
            return b"".join(await _body(st, key, res, None, cfg.max_attempts, breaks())), held
        etag = res.meta["e_tag"]
        first = _body(st, key, res, part, cfg.max_attempts, breaks())
        gate = asyncio.Semaphore(cfg.max_concurrency)

        async def rest(s: int) -> list[Any]:
            async with gate:  # a part re-reads itself on a break: a few MiB at most
                return await get(st, key, s, min(s + part, size), etag, cfg.max_attempts, breaks(), whole=True)

        parts = await asyncio.gather(first, *(rest(s) for s in range(part, size, part)))
        return b"".join([c for p in parts for c in p]), held
    except BaseException:
        if budget:
            budget.give(held)
        raise


class _Budget:
    """Bytes held by objects fetched but not yet consumed. An object waits for room after its headers
    (before its body); the oldest object not yet consumed never waits, so ordered output cannot stall
    behind later objects holding the room it needs, and an object larger than the budget still passes."""

    def __init__(self, limit: int) -> None:
        self.free, self.head = limit, 0
        self.waiting: deque[tuple[int, int, asyncio.Future[int]]] = deque()

    async def take(self, ticket: int, n: int) -> int:
        if (n <= self.free and not self.waiting) or ticket == self.head:
            self.free -= n
            return n
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.waiting.append((ticket, n, fut))
        return await fut

    def give(self, n: int, head: int | None = None) -> None:
        """Return ``n`` bytes; ``head`` is now the oldest object not yet consumed."""
        self.free += n
        if head is not None:
            self.head = head
        for w in list(self.waiting):
            ticket, need, fut = w
            if fut.done():  # cancelled
                self.waiting.remove(w)
            elif ticket == self.head or need <= self.free:
                self.waiting.remove(w)
                self.free -= need
                fut.set_result(need)


def read_many(jobs: Iterable[tuple[str, Callable[[_Budget, int], Coroutine[Any, Any, tuple[bytes, int]]]]],
              window: int, ordered: bool, max_bytes: int) -> Iterator[tuple[str, BaseException | None, bytes]]:
    """Yield ``(url, error, data)`` for each ``(url, job)``, with up to ``window`` jobs running on the
    loop and the bodies held under ``max_bytes``; jobs are pulled only as slots free up.

    The loop hears of new jobs and of consumed bytes in batches (a quarter of the window at a time) and
    hands results back through a queue, so an object costs this thread no cross-thread call of its own."""
    loop = _loop()
    budget = _Budget(max_bytes)
    results: queue.SimpleQueue[tuple[int, BaseException | None, Any]] = queue.SimpleQueue()
    tasks: dict[int, asyncio.Task[Any]] = {}  # touched on the loop thread only

    def finish(ticket: int, task: asyncio.Task[Any]) -> None:
        del tasks[ticket]
        if not task.cancelled():
            err = task.exception()
            results.put((ticket, err, None if err else task.result()))

    def start(batch: list[tuple[int, Any]], give: int, head: int) -> None:
        budget.give(give, head)
        for ticket, job in batch:
            task = loop.create_task(job(budget, ticket))
            tasks[ticket] = task
            task.add_done_callback(functools.partial(finish, ticket))

    def cancel() -> None:
        for task in list(tasks.values()):
            task.cancel()

    source: Iterator[Any] | None = iter(jobs)
    urls: dict[int, str] = {}  # tickets issued and not yet yielded
    arrived: dict[int, tuple[BaseException | None, Any]] = {}
    batch: list[tuple[int, Any]] = []
    issued = given = turn = 0  # turn: the next ticket to yield when ordered
    head = 0  # the oldest ticket not yet yielded, as last told to the budget
    try:
        while True:
            if source is not None and window - len(urls) >= (max(1, window // 4) if urls else 1):
                for url, job in itertools.islice(source, window - len(urls)):
                    urls[issued] = url
                    batch.append((issued, job))
                    issued += 1
                if not batch:
                    source = None
            if not urls:
                return
            ready = (turn in arrived) if ordered else bool(arrived)
            # Before waiting, the budget must know what was consumed and which object is oldest, or
            # the object waited for may itself be waiting for room.
            if batch or (not ready and (given or head != min(urls))):
                head = min(urls)
                loop.call_soon_threadsafe(start, batch, given, head)
                batch, given = [], 0
            while not ready:
                ticket, err, value = results.get()
                arrived[ticket] = (err, value)
                ready = (turn in arrived) if ordered else True
            ticket = turn if ordered else next(iter(arrived))
            err, value = arrived.pop(ticket)
            turn += ordered
            if err is not None:
                yield urls.pop(ticket), err, b""
            else:
                given += value[1]
                yield urls.pop(ticket), None, value[0]
    finally:
        loop.call_soon_threadsafe(cancel)
        if given:
            loop.call_soon_threadsafe(budget.give, given)


def in_thread(fn: Callable[[str], bytes], url: str) -> Callable[[_Budget, int], Coroutine[Any, Any, tuple[bytes, int]]]:
    """A read_many job that runs the blocking ``fn(url)`` in the loop's thread pool (outside the budget)."""

    async def job(budget: _Budget, ticket: int) -> tuple[bytes, int]:
        return await asyncio.get_running_loop().run_in_executor(None, fn, url), 0

    return job
