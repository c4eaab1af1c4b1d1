"""The pure-Python GET engine: boto3's ``get_object``, retried by botocore with our backoff (:mod:`.retry`)."""

from __future__ import annotations

import re
from typing import Any, Iterator

from .errors import BODY_ERRORS, Failure, from_botocore

_CHUNK = 1 << 20  # a read of the body at a time: what a break can lose
_CONTENT_RANGE = re.compile(r"bytes (\d+)-\d+/(\d+)")  # "bytes 0-99/1000" answers a ranged GET


class _Response:
    def __init__(self, resp: dict[str, Any], ranged: bool) -> None:
        self._resp = resp
        length = int(resp["ContentLength"])
        # A Content-Range on the answer to a GET that asked for none means nothing; on the answer to a
        # ranged GET, one that cannot be read (a 206 with "bytes */0" for an empty object) is the
        # store's error, which a plain GET avoids (see engine.read).
        span = resp.get("ContentRange") if ranged else None
        match = _CONTENT_RANGE.fullmatch(span.strip()) if span else None
        if span and not match:
            resp["Body"].close()
            raise Failure("protocol", f"unreadable Content-Range {span!r} in the answer to a ranged GET")
        self.start = int(match.group(1)) if match else 0
        self.end = self.start + length
        self._size = int(match.group(2)) if match else length

    @property
    def size(self) -> int:
        return self._size

    @property
    def etag(self) -> str | None:
        return self._resp.get("ETag")

    def chunks(self, whole: bool) -> Iterator[bytes]:
        """Reads of ``_CHUNK`` bytes whatever ``whole`` says: botocore gains nothing from one large read."""
        raw = self._resp["Body"]
        while chunk := raw.read(_CHUNK):
            yield chunk

    def close(self) -> None:
        self._resp["Body"].close()


class Boto3Engine:
    """GETs through the process's boto3 client for one bucket."""

    body_errors = BODY_ERRORS

    def __init__(self, client: Any, bucket: str, max_attempts: int, requester_pays: bool) -> None:
        self._client, self._bucket, self._attempts = client, bucket, max_attempts
        self._extra = {"RequestPayer": "requester"} if requester_pays else {}

    def send(self, key: str, start: int, end: int | None, etag: str | None) -> _Response:
        kwargs: dict[str, Any] = {"Bucket": self._bucket, "Key": key, **self._extra}
        if start or end is not None:
            kwargs["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        if etag:
            kwargs["IfMatch"] = etag
        try:
            return _Response(self._client.get_object(**kwargs), "Range" in kwargs)
        except Exception as e:
            failure = from_botocore(e, self._attempts)
            if failure is None:
                raise
            raise failure from e
