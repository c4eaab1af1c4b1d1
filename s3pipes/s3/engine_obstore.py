"""The native GET engine: obstore (Rust's object_store on tokio).

Each request is a blocking call that releases the GIL while tokio does the I/O, made from a pool of
threads. Measured on 2 cores against nginx, that costs half the CPU per object of the same requests as
asyncio coroutines, where each finished future wakes the event loop thread through its self-pipe.
object_store's own retries are off so that retries, the resume of a broken body and the messages are
the same for both engines (:mod:`.retry`, :mod:`.errors`).
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator

import obstore
from obstore.exceptions import BaseError, PreconditionError
from obstore.store import S3Store

from ..config import S3Config
from . import usage
from .errors import Failure, not_s3
from .retry import retrying

_STATUS = re.compile(r"status code: (\d{3})")
_CODE = re.compile(r"<Code>([^<]*)</Code>")
_MESSAGE = re.compile(r"<Message>([^<]*)</Message>")
_KIND = re.compile(r"HttpError \{\s*kind: (\w+)")
# object_store's complaints about an answer that arrived but that it cannot use (GetResultError): a
# store that answers a range on an empty object with 206, a gateway that answers a range with 200 and
# the whole object, a Content-Range it cannot parse. Not connection errors: a retry gets the same answer.
_PROTOCOL = re.compile(r"Wanted range starting at|non-partial response|Content-Range|CONTENT_RANGE|"
                       r"Requested \d+\.\.\d+, got|Header missing from response")
_BODY = re.compile(r"status code: \d{3}[^:\n]*: (.*)", re.DOTALL)  # the body after the status line
_ERRORS = (BaseError, OSError)


def _failure(e: BaseException, attempts: int) -> Failure:
    text = str(e)
    detail = text.split("\n\nDebug source", 1)[0].strip()
    if "credential provider" in text:
        return Failure("credentials", detail, attempts=attempts)
    if isinstance(e, PreconditionError):
        return Failure("status", detail, 412, "PreconditionFailed", attempts=attempts)
    status = _STATUS.search(text)
    if status:
        code, message = _CODE.search(text), _MESSAGE.search(text)
        # obstore shows no headers: a body that is not an S3 error document is what gives a web server away
        body = _BODY.search(detail)
        foreign = code is None and body is not None and bool(body.group(1).strip()) and not_s3(int(status.group(1)))
        kind = "foreign" if foreign else "status"
        return Failure(kind, detail, int(status.group(1)), code.group(1) if code else status.group(1),
                       message.group(1) if message else detail, attempts)
    if "redirect" in text:
        return Failure("status", detail, 301, "PermanentRedirect", attempts=attempts)
    if _PROTOCOL.search(text):
        return Failure("protocol", detail, attempts=attempts)
    kind = _KIND.search(text)
    return Failure("timeout" if kind and kind.group(1) == "Timeout" else "connect", detail, attempts=attempts)


def representable(key: str) -> bool:
    """Whether object_store can name ``key``: it rejects empty, "." and ".." path segments."""
    return bool(key) and all(seg not in ("", ".", "..") for seg in key.split("/"))


# tokio's runtime does not survive fork: its threads stay in the parent, and a child that uses it fails
# (it hangs for good; the parent, sharing the runtime's epoll with it, was seen to crash with SIGSEGV).
# A child forked after obstore did any I/O must leave it alone (the client falls back to boto3 there).
# "Any I/O" includes the user's own obstore calls, or another library's: they start the same runtime.
used = False
forked_after_use = False
_runtime_at_fork = False


def runtime_started() -> bool:
    """Whether obstore's runtime has threads in this process: named ``tokio-rt-worker`` (another tokio
    runtime's default is ``tokio-runtime-worker``), they appear at its first request, whoever sends it.
    Without ``/proc`` (macOS), only s3pipes's own requests count."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return used
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().startswith("tokio-rt-worker"):
                    return True
        except OSError:  # a thread that ended meanwhile
            continue
    return used


def _before_fork() -> None:
    global _runtime_at_fork
    _runtime_at_fork = used or runtime_started()


def _after_fork() -> None:
    global forked_after_use
    forked_after_use = forked_after_use or _runtime_at_fork


os.register_at_fork(before=_before_fork, after_in_child=_after_fork)


class _Response:
    def __init__(self, res: Any, asked_end: int | None) -> None:
        self._res, self._asked_end = res, asked_end
        self.start, self.end = res.range

    @property
    def size(self) -> int:
        # A body shorter than asked for ends the object; otherwise res.meta (a dict built, with a parsed
        # date, on each access) says.
        if self._asked_end is not None and self.end < self._asked_end:
            return self.end
        return int(self._res.meta["size"])

    @property
    def etag(self) -> str | None:
        return self._res.meta["e_tag"]

    def chunks(self, whole: bool) -> Iterator[Any]:
        if whole:
            yield self._res.bytes()  # one call, no copies
        else:
            yield from self._res.stream(min_chunk_size=1)

    def close(self) -> None:
        """obstore closes the body when it is consumed or dropped."""


class ObstoreEngine:
    """GETs through an obstore store of one bucket, built from the resolved settings; ``credentials``
    (boto3's chain) is asked again before the answer is five minutes old, so refreshed role credentials
    are picked up."""

    body_errors = _ERRORS

    def __init__(self, bucket: str, cfg: S3Config, region: str, endpoint: str | None, path_style: bool,
                 verify: bool, credentials: Callable[[], tuple[str, str, str | None]] | None) -> None:
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

        self._store = S3Store(bucket, config=config, client_options=client, retry_config={"max_retries": 0},
                              credential_provider=None if cfg.anonymous else provide)  # type: ignore[arg-type]
        self._attempts, self._bucket = cfg.max_attempts, bucket

    def send(self, key: str, start: int, end: int | None, etag: str | None) -> _Response:
        global used
        used = True
        opts: dict[str, Any] = {}
        if end is not None:
            opts["range"] = (start, end)
        if etag:
            opts["if_match"] = etag

        def attempt() -> Any:
            usage.add(usage.GET)  # each attempt: botocore's are counted as they are sent (usage.on_send)
            return obstore.get(self._store, key, options=opts)  # type: ignore[arg-type]

        res = retrying(attempt, self._attempts, _ERRORS, _failure, f"s3://{self._bucket}/{key} (GET)")
        return _Response(res, end)
