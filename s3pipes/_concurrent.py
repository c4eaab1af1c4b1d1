"""Run a blocking function over a stream of items with a bounded, possibly adaptive, number in flight."""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Callable, Iterable, Iterator, TypeVar

A = TypeVar("A")
B = TypeVar("B")
log = logging.getLogger(__name__)


class Window:
    """How many calls :func:`imap` keeps in flight: ``size``, from ``start`` up to ``limit``.

    Adapted once per round (``size`` results), as TCP adapts its window. While the consumer mostly
    waited for results in a round and that round's throughput beat the best so far by 5 %, the window
    grows by a quarter: latency, not the consumer, is the limit. Two rounds in a row that gain nothing
    settle it (logged). When ``throttles()`` (a count of requests the store refused as too many) has
    risen, the window halves (logged), at most once a round, and then grows back by one a round
    (additive increase, multiplicative decrease), so that many readers on one prefix back off together.
    """

    def __init__(self, start: int, limit: int | None = None, throttles: Callable[[], int] | None = None,
                 name: str = "reads") -> None:
        self.size = max(1, start)
        self.limit = max(self.size, limit or start)
        self._throttles, self._name = throttles, name
        self._seen = throttles() if throttles else 0
        self._growing = self.limit > self.size
        self._cut = self._backed_off = False
        self._best, self._flat = 0.0, 0  # the best rate of a round so far; rounds since it last grew
        self._round()

    def _round(self) -> None:
        self._n, self._waited, self._t0 = 0, 0.0, time.perf_counter()

    def finished(self, waited: float) -> None:
        """One result was taken, after the consumer waited ``waited`` seconds for it."""
        self._n += 1
        self._waited += waited
        if self._throttles is not None and self._throttles() > self._seen:
            self._seen = self._throttles()
            if not self._cut:  # the calls in flight when the store pushed back all hear it: cut once
                self._cut = self._backed_off = True
                self._growing = False
                old, self.size = self.size, max(1, self.size // 2)
                log.info("%s: the store is throttling; %d in flight, down from %d", self._name, self.size, old)
        elapsed = time.perf_counter() - self._t0
        if self._n < self.size or elapsed < _MIN_ROUND:
            return
        rate = self._n / max(elapsed, 1e-9)
        if self._cut:
            self._cut = False
        elif self._growing:
            starved = self._waited > elapsed / 2
            if starved and rate > 1.05 * self._best:
                self._best, self._flat = rate, 0
                self.size = min(self.limit, self.size + max(1, self.size // 4))
                self._growing = self.size < self.limit
            else:
                self._flat += 1
                self._growing = self._flat < _PATIENCE
            if not self._growing:
                log.info("%s: settled at %d in flight (%.0f a second)", self._name, self.size, rate)
        elif self._backed_off and self.size < self.limit:
            self.size += 1
        self._round()


_MIN_ROUND = 0.2  # seconds: a round shorter than this measures noise, not throughput
# Rounds in a row that gain nothing before the window settles: one round's rate on a busy machine is
# noisy, and one bad round settled a reader at 64 in flight where 195 doubled its rate at +40 ms.
_PATIENCE = 2


def imap(fn: Callable[[A], B], items: Iterable[A], window: int | Window, ordered: bool = True) -> Iterator[tuple[A, B]]:
    """Yield ``(item, fn(item))`` with up to ``window`` calls running at once, in input order unless
    ``ordered=False``. Items are pulled from ``items`` only as slots free up; the first failure is
    raised as is and the calls still pending are cancelled."""
    w = window if isinstance(window, Window) else Window(window)
    pool = ThreadPoolExecutor(w.limit, thread_name_prefix="s3pipes-io")
    pending: deque[tuple[A, Future[B]]] = deque()
    try:
        for item in items:
            pending.append((item, pool.submit(fn, item)))
            while len(pending) >= w.size:  # a window that shrank drains to its new size
                yield _take(pending, ordered, w)
        while pending:
            yield _take(pending, ordered, w)
    finally:
        for _, f in pending:
            f.cancel()
        pool.shutdown(wait=False, cancel_futures=True)


def _take(pending: deque[tuple[A, Future[B]]], ordered: bool, window: Window) -> tuple[A, B]:
    t0 = time.perf_counter()
    if not ordered:
        wait([f for _, f in pending], return_when=FIRST_COMPLETED)
        for i, (_, f) in enumerate(pending):
            if f.done():
                pending.rotate(-i)
                break
    item, f = pending.popleft()
    result = f.result()
    window.finished(time.perf_counter() - t0)
    return item, result
