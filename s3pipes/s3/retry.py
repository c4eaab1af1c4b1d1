"""Retries for both engines: one backoff (:func:`retry_delay`), given to botocore's
retry handler and used by obstore's request loop, and one resume of a broken response body."""

from __future__ import annotations

import logging
import random
import time
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import botocore.retries.standard as retries

from . import usage
from .errors import Failure

if TYPE_CHECKING:
    from .engine import Engine, Response

log = logging.getLogger(__name__)
T = TypeVar("T")

# Bodies up to this size are collected in one call (a break re-reads them whole); larger ones are
# streamed chunk by chunk so that a break resumes from the byte reached.
_WHOLE = 256 << 10


def retry_delay(attempt: int, throttled: bool = False) -> float:
    """Seconds to wait before retrying after failed ``attempt`` (1-based), for both engines: full-jitter
    exponential backoff from 0.1 s (0.5 s when S3 throttles), at most 10 s. botocore's own starts at
    1 s, so a wrong endpoint took several seconds to report."""
    return random.random() * min(10.0, (0.5 if throttled else 0.1) * 2 ** (attempt - 1))


class _Backoff(retries.BaseRetryBackoff):
    """:func:`retry_delay` for botocore."""

    def __init__(self, detector: retries.ThrottlingErrorDetector) -> None:
        self._detector = detector

    def delay_amount(self, context: retries.RetryContext) -> float:
        return retry_delay(context.attempt_number, self._detector.is_throttling_error_from_context(context))


class _NoQuota:
    """botocore stops retrying once a per-client token bucket runs dry, which a burst of 503s across 64
    requests in flight does; a training job would then fail on a passing fault. Attempts bound retries."""

    def acquire_retry_quota(self, context: retries.RetryContext) -> bool:
        return True


def log_retry(what: str, attempt: int, attempts: int, cause: str, delay: float, throttled: bool) -> None:
    """One INFO line per retry, for both engines: a stalled or failing endpoint is otherwise silent for
    the whole of its attempts (``s3pipes -v`` shows these). Each is also counted (:mod:`.usage`)."""
    usage.retried(throttled)
    log.info("%s: attempt %d of %d failed (%s); retrying in %.1f s", what, attempt, attempts, cause, delay)


def _botocore_cause(kwargs: dict[str, Any]) -> str:
    if kwargs.get("caught_exception") is not None:
        return str(kwargs["caught_exception"]).splitlines()[0]
    http, parsed = kwargs["response"]
    return f"HTTP {http.status_code} {parsed.get('Error', {}).get('Code', '')}".strip()


def install_retries(client: Any, max_attempts: int) -> None:
    """botocore's standard retry conditions (5xx, throttling, connection errors, timeouts) with our
    backoff, each retry logged."""
    adapter = retries.RetryEventAdapter()
    throttling = retries.ThrottlingErrorDetector(adapter)
    policy = retries.RetryPolicy(
        retry_checker=retries.StandardRetryConditions(max_attempts=max_attempts),
        retry_backoff=_Backoff(throttling),
    )
    handler = retries.RetryHandler(policy, adapter, _NoQuota())

    def needs_retry(**kwargs: Any) -> float | None:
        delay = handler.needs_retry(**kwargs)
        if delay is not None:
            params = kwargs["request_dict"].get("context", {}).get("input_params", {})
            what = (f"s3://{params['Bucket']}/{params.get('Key', params.get('Prefix', ''))}" if "Bucket" in params
                    else kwargs["request_dict"].get("url", "?"))
            log_retry(f"{what} ({kwargs['operation'].name})", kwargs["attempts"], max_attempts,
                      _botocore_cause(kwargs), delay, throttling.is_throttling_error(**kwargs))
        return delay

    client.meta.events.unregister("needs-retry.s3", unique_id="retry-config-s3")
    client.meta.events.register("needs-retry.s3", needs_retry, unique_id="retry-config-s3")


def retrying(call: Callable[[], T], attempts: int, errors: tuple[type[BaseException], ...],
             failure: Callable[[BaseException, int], Failure], what: str = "request") -> T:
    """``call()``, repeated up to ``attempts`` times while what it raises (one of ``errors``, made a
    :class:`Failure` by ``failure(error, attempt)``) may be retried; for a client with no retries of its
    own. ``what`` names the request in the log line of each retry."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except errors as e:
            f = failure(e, attempt)
            if not f.retryable or attempt == attempts:
                raise f from e
        delay = retry_delay(attempt, f.throttled)
        log_retry(what, attempt, attempts, f.cause, delay, f.throttled)
        time.sleep(delay)
    raise AssertionError("unreachable")


class Breaks:
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
        log.info("%s: body broke at byte %d (%s); resuming (%d of %d breaks left)", self.url, pos, cause,
                 self.left, self.attempts)


def _tag(etag: str) -> str:
    return etag.removeprefix("W/").strip('"')


def send(engine: Engine, key: str, start: int, end: int | None, etag: str | None, exact: bool = True) -> Response:
    """``engine.send``, checked: a store or proxy that ignores If-Match would hand back part of a replaced
    object, spliced into the old one, so the answer's ETag must be ``etag``; and one that ignores Range
    (or answers another range) would hand back other bytes, so the answer must start at ``start`` and
    end by ``end``, unless not ``exact`` (the caller takes a longer answer)."""
    res = engine.send(key, start, end, etag)
    if etag and res.etag and _tag(res.etag) != _tag(etag):
        res.close()
        raise Failure("status", f"ETag {res.etag} answered, {etag} asked for: If-Match was ignored",
                      412, "PreconditionFailed")
    if res.start != start or (exact and end is not None and res.end > end):
        res.close()
        raise Failure("protocol", f"bytes {res.start}-{res.end} answered, {start}-{end} asked for")
    return res


def body(engine: Engine, key: str, res: Response, breaks: Breaks,
         into: Callable[[int, Any], None] | None = None) -> list[Any]:
    """The body of ``res``, as buffers to join once, or handed to ``into(position, buffer)`` as they
    arrive (nothing is returned then). A body that breaks or ends short is requested again from the
    byte reached, pinned to the ETag so a replaced object is an error, not a splice, until ``breaks``
    gives up. A small body to be joined is collected by the engine in one call (see
    :meth:`Response.chunks`)."""
    pos, end = res.start, res.end
    whole = into is None and end - pos <= _WHOLE
    chunks: list[Any] = []
    while True:
        first = pos
        try:
            for chunk in res.chunks(whole):
                if into is None:
                    chunks.append(chunk)
                else:
                    into(pos, chunk)
                pos += len(chunk)
            if pos >= end:
                return chunks
            cause: BaseException = EOFError(f"body ended at byte {pos} of {end}")
        except engine.body_errors as e:
            cause = e
        finally:
            res.close()
            usage.add(usage.BYTES_IN, pos - first)
        breaks.broke(pos, cause)
        whole = False  # stream the rest, so that another break keeps what arrived
        res = send(engine, key, pos, end, res.etag)
