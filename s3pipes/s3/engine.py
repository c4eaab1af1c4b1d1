"""What the two GET engines share: the protocol each implements (:class:`Engine`, :class:`Response`),
and on top of it the one read strategy, the one byte budget and ``read_many``.

An engine only sends a GET and hands back its body; retries of the request are the engine's (botocore's
handler, or :func:`~s3pipes.s3.retry.retrying`), and everything else is here or in :mod:`.retry`.
"""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError, Executor
from typing import Any, Callable, Iterable, Iterator, Protocol

from .._concurrent import imap
from .errors import Failure
from .retry import Breaks, body, send


class Response(Protocol):
    """A GET whose headers have arrived: its body holds bytes ``[start, end)`` of the object."""

    start: int
    end: int

    @property
    def size(self) -> int:
        """The whole object's size."""

    @property
    def etag(self) -> str | None: ...

    def chunks(self, whole: bool) -> Iterator[Any]:
        """The body as buffers; ``whole`` collects it in one buffer where the engine can do so cheaply
        (a break then re-reads all of it). Raises one of the engine's ``body_errors`` if it breaks."""

    def close(self) -> None: ...


class Engine(Protocol):
    """GETs of one bucket's objects; raises :class:`~s3pipes.s3.errors.Failure` (or a botocore error)."""

    body_errors: tuple[type[BaseException], ...]

    def send(self, key: str, start: int, end: int | None, etag: str | None) -> Response:
        """GET bytes ``[start, end)`` (``end=None``: the whole object) pinned to ``etag`` if given,
        retried as S3 allows, and wait for the headers."""


def get(engine: Engine, key: str, start: int, end: int, etag: str | None, breaks: Breaks,
        whole: bool = False) -> list[Any]:
    """Bytes ``[start, end)``, as buffers to join."""
    return body(engine, key, send(engine, key, start, end, etag), breaks, whole)


def read(engine: Engine, key: str, part: int, breaks: Callable[[], Breaks], pool: Executor,
         budget: Budget | None = None, ticket: int = 0) -> tuple[bytes, int]:
    """The whole object and the bytes of ``budget`` it holds. The first GET asks for the first part, so
    one request reads a small object; the rest of a larger one comes as ranged GETs of ``part`` bytes
    in parallel on ``pool``, all pinned to the first response's ETag (and checked against it)."""
    try:
        res = send(engine, key, 0, part, None, exact=False)  # a 200 with the whole object is all we want
    except Failure as e:
        if e.status != 416 and e.kind != "protocol":
            raise
        # An empty object has no byte 0 to ask for (S3 answers 416, some stores a 206 that obstore
        # rejects), and an engine may refuse a 200 whole answer to a range: a plain GET reads either.
        res = send(engine, key, 0, None, None)
    size = res.size
    held = budget.take(ticket, size) if budget else 0
    try:
        if size <= res.end:
            return b"".join(body(engine, key, res, breaks())), held
        etag = res.etag
        rest = [pool.submit(get, engine, key, s, min(s + part, size), etag, breaks(), True)
                for s in range(part, size, part)]
        try:
            first = body(engine, key, res, breaks(), whole=True)
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
