"""File objects over S3 objects: :class:`S3RawFile` reads one in ranged parts, :class:`S3Writer`
writes one as a multipart upload. Both reach S3 only through their :class:`~.client.S3Client`."""

from __future__ import annotations

import io
import logging
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import TYPE_CHECKING, Any

from .env import pool
from .url import S3Url

if TYPE_CHECKING:
    from .client import S3Client

log = logging.getLogger(__name__)

# Parts an S3RawFile read in order keeps in flight after the one being read: three streamed a 1 GiB tar
# no faster than two here, and held 20 MiB more.
_AHEAD = 2
_MIN_PART = 5 * 1024 * 1024  # S3 refuses a multipart part under 5 MiB, but for the last


def _upload_part(client: S3Client, url: str, upload_id: str, number: int, data: bytes) -> dict[str, Any]:
    resp = client.call(url, "write the object", "upload_part", UploadId=upload_id, PartNumber=number, Body=data)
    return {"PartNumber": number, "ETag": resp["ETag"]}


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
        # After the fields: __del__ runs on a stream whose __init__ raised, too.
        if S3Url.parse(url).is_prefix:
            raise ValueError(f"{url!r} ends in '/'; name an object to write, e.g. 's3://bucket/dir/file.bin'")

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
        return self._client.call(self._url, action, op, **kwargs)

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
        self._parts.append(pool(self._client.config.max_concurrency).submit(
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
            self._abort_after_error()
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

    def _abort_after_error(self) -> None:
        """:meth:`abort` while another error is on its way to the user: a refused abort (s3rver answers
        405; an AWS role without s3:AbortMultipartUpload gets 403) must not replace that error, so it is
        logged, with what it costs and how to clean up."""
        try:
            self.abort()
        except Exception as e:  # noqa: BLE001 - the error being raised is the one that matters
            u = S3Url.parse(self._url)
            log.warning("%s: could not abort multipart upload %s (%s); the incomplete upload keeps costing "
                        "storage until a lifecycle rule (AbortIncompleteMultipartUpload) or `aws s3api "
                        "abort-multipart-upload --bucket %s --key %s --upload-id %s` removes it",
                        self._url, self._upload_id, e, u.bucket, u.key, self._upload_id)

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self._abort_after_error()

    def __del__(self) -> None:
        # io's finaliser would close(), completing an upload that was abandoned half-written; nothing
        # can be raised from a finaliser.
        if not self.closed:
            self._abort_after_error()

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

    def read_range(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` (fewer where the object ends first) in one ranged GET pinned to the
        ETag, leaving the position and the parts in flight alone: for a reader that knows the ranges it
        needs (Parquet's footer, then the column chunks wanted), where a seek and a read would fetch a
        whole part from there and then read on ahead."""
        end = min(end, self.size)  # self.size first: its HEAD gives the ETag to pin to
        return b"".join(self._client.range_buffers(self._u, start, end, self._etag))

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
        submit = pool(self._client.config.max_concurrency).submit
        self._ahead.append((start, end, submit(self._client.range_buffers, self._u, start, end, self._etag)))

    def _drop(self) -> None:
        while self._ahead:
            self._ahead.popleft()[2].cancel()

    def close(self) -> None:
        self._drop()
        self._buf = memoryview(b"")
        super().close()

    def __getstate__(self) -> None:
        raise TypeError(f"an open S3 file ({self._url}) cannot be pickled; pass its URL instead")
