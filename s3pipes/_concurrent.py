"""Run a blocking function over a stream of items with a bounded number in flight."""

from __future__ import annotations

from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Callable, Iterable, Iterator, TypeVar

A = TypeVar("A")
B = TypeVar("B")


def imap(fn: Callable[[A], B], items: Iterable[A], window: int, ordered: bool = True) -> Iterator[tuple[A, B]]:
    """Yield ``(item, fn(item))`` with up to ``window`` calls running at once, in input order unless
    ``ordered=False``. Items are pulled from ``items`` only as slots free up; the first failure is
    raised as is and the calls still pending are cancelled."""
    pool = ThreadPoolExecutor(window, thread_name_prefix="s3pipes-io")
    pending: deque[tuple[A, Future[B]]] = deque()
    try:
        for item in items:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) >= window:
                yield _take(pending, ordered)
        while pending:
            yield _take(pending, ordered)
    finally:
        for _, f in pending:
            f.cancel()
        pool.shutdown(wait=False, cancel_futures=True)


def _take(pending: deque[tuple[A, Future[B]]], ordered: bool) -> tuple[A, B]:
    if not ordered:
        wait([f for _, f in pending], return_when=FIRST_COMPLETED)
        for i, (_, f) in enumerate(pending):
            if f.done():
                pending.rotate(-i)
                break
    item, f = pending.popleft()
    return item, f.result()
