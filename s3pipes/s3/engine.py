"""What the two GET engines share: the protocol each implements (:class:`Engine`, :class:`Response`),
and on top of it the one read strategy, the one byte budget and ``read_many``.

An engine only sends a GET and hands back its body; retries of the request are the engine's (botocore's
handler, or :func:`~s3pipes.s3.retry.retrying`), and everything else is here or in :mod:`.retry`.
"""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError, Executor
from typing import Any, Callable, Iterable, Iterator, Protocol

from .._concurrent import Window, imap
from .errors import Failure
from .blank import Blank
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


def get(engine: Engine, key: str, start: int, end: int, etag: str | None, breaks: Breaks) -> list[Any]:
    """Bytes ``[start, end)``, as buffers to join."""
    return body(engine, key, send(engine, key, start, end, etag), breaks)


# A large object's rest (after the first part) is cut into about this many parts, all in flight at once
# up to this count: 8 parts of 8 MiB in flight read a 64 MiB object fastest in a study here; parts of 32 MiB
# were slower (their fresh pages faulted one by one), and more in flight gained nothing on 2 cores.
_IN_FLIGHT = 8
_SMALL = 256 << 10  # an object this small comes in one buffer from the engine, copied once into bytes


def cut(size: int, first: int, part: int) -> list[tuple[int, int]]:
    """The ranges of an object of ``size`` bytes after its first ``first``: about ``_IN_FLIGHT`` parts,
    each between a quarter of ``part`` and twice it, so a mid-sized object still arrives in parallel
    and a huge one in parts large enough that a request's cost does not count."""
    rest = size - first
    step = min(2 * part, max(part // 4, -(-rest // _IN_FLIGHT)))
    return [(s, min(s + step, size)) for s in range(first, size, step)]


def read(engine: Engine, key: str, part: int, breaks: Callable[[], Breaks], pool: Executor,
         budget: Budget | None = None, ticket: int = 0) -> tuple[bytes, int]:
    """The whole object and the bytes of ``budget`` it holds. The first GET asks for the first part, so
    one request reads a small object; the rest of a larger one comes as ranged GETs (:func:`cut`) in
    parallel on ``pool``, all pinned to the first response's ETag (and checked against it), each
    written into the object's one buffer as its bytes arrive (:mod:`.blank`)."""
    held = 0
    try:
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
        if size <= res.end and size <= _SMALL:
            return b"".join(body(engine, key, res, breaks())), held
        out = Blank(size)
        ranges = cut(size, res.end, part)
        etag = res.etag
        chains = [pool.submit(_fill, engine, key, ranges[i::_IN_FLIGHT], etag, breaks, out)
                  for i in range(min(_IN_FLIGHT, len(ranges)))]
        try:
            body(engine, key, res, breaks(), into=out.write)
            for f in chains:
                f.result()
        finally:
            for f in chains:
                f.cancel()
        return out.data, held
    except BaseException:
        if budget:
            budget.give(held)
        raise


def _fill(engine: Engine, key: str, ranges: list[tuple[int, int]], etag: str | None,
          breaks: Callable[[], Breaks], out: Blank) -> None:
    """GET each of ``ranges`` in turn, written into ``out`` (the whole object) as it arrives."""
    for start, end in ranges:
        body(engine, key, send(engine, key, start, end, etag), breaks(), into=out.write)


class Budget:
    """Bytes held by objects fetched but not yet consumed. An object waits for room after its headers
    (before its body). Room goes to the waiting objects in ticket order: a later object that arrives
    while an earlier one waits does not take the room the earlier one is waiting for (ordered output
    would wait on the earlier one meanwhile). The oldest object not yet consumed never waits, so an
    object larger than the budget passes. Each waiting object has its own event, woken only when it
    may go: one condition shared by 64 threads, all woken at each change, cost 1 ms of CPU an object."""

    def __init__(self, limit: int) -> None:
        self.free, self.head, self.closed = limit, 0, False
        self.lock = threading.Lock()
        self.waiting: dict[int, threading.Event] = {}

    def take(self, ticket: int, n: int) -> int:
        event: threading.Event | None = None
        while True:
            with self.lock:
                if self.closed:
                    raise CancelledError
                self.waiting.pop(ticket, None)  # not in its own way
                if self._may(ticket, n):
                    return self._grant(n)
                event = self.waiting[ticket] = event or threading.Event()
                event.clear()
            event.wait()

    def _may(self, ticket: int, n: int) -> bool:
        return ticket == self.head or (n <= self.free and (not self.waiting or min(self.waiting) > ticket))

    def _grant(self, n: int) -> int:
        self.free -= n
        self._wake()  # the next waiting object may fit in what is left
        return n

    def _wake(self) -> None:
        if self.waiting:
            for t in (min(self.waiting), self.head):
                if t in self.waiting:
                    self.waiting[t].set()

    def give(self, n: int, head: int | None = None) -> None:
        """Return ``n`` bytes; ``head`` is now the oldest object not yet consumed."""
        with self.lock:
            self.free += n
            if head is not None:
                self.head = head
            self._wake()

    def close(self) -> None:
        """Nothing more will be consumed: objects waiting for room give up."""
        with self.lock:
            self.closed = True
            for event in self.waiting.values():
                event.set()


def read_many(read: Callable[[str, Budget, int], tuple[bytes, int]], urls: Iterable[str],
              window: int | Window, ordered: bool, max_bytes: int) -> Iterator[tuple[str, bytes]]:
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
