"""A fake S3 endpoint with millions of generated keys, for listing and first-sample benchmarks at scale.

    python benchmarks/fakes3.py --keys 1000000 --delay-ms 20 --port 0    # prints its URL, serves until ^C

One bucket (``--bucket``, default ``bench``) holds ``--keys`` generated objects ``train/shard-00000000.bin``
... of ``--size`` deterministic bytes each. They are never stored: a key is a function of its number, so
the n-th key after any position is found by binary search, and ListObjectsV2 pages (1,000 keys, as S3)
are made on the fly. Objects PUT (or uploaded in parts) are kept in memory beside them, so
``s3pipes.build_index`` can write its index and ``list_s3`` can GET it. Path-style requests only;
any signature is accepted. Each S3 request waits ``--delay-ms`` first, as a round trip to S3 would.

Control routes (not delayed, not counted): ``GET /__counts__`` (requests by kind, and the GETs of each
stored object, as JSON), ``POST /__reset__`` (zero the counts), ``POST /__config__?delay_ms=N``.
``FakeS3`` runs the same server in a thread of the calling process.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import socket
import threading
import time
import uuid
from collections import Counter
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator
from urllib.parse import parse_qs, quote, unquote, urlsplit
from xml.sax.saxutils import escape

from fakebucket import Bucket, etag_of  # beside this file: run as a script, or with benchmarks/ on the path

_MODIFIED = "2024-01-01T00:00:00.000Z"
_MODIFIED_HTTP = formatdate(1704067200, usegmt=True)  # the same instant, as HTTP headers write it
_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")
_NS = 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'


class Stats:
    """Requests by kind (``LIST``, ``GET``, ``HEAD``, ``PUT``, ``MULTIPART``, ``HEAD_BUCKET``...) and the
    GETs of each stored object; the delay, changeable while serving."""

    def __init__(self, delay_ms: float) -> None:
        self.delay = delay_ms / 1000
        self.kinds: Counter[str] = Counter()
        self.stored_gets: Counter[str] = Counter()
        self.lock = threading.Lock()

    def count(self, kind: str, stored_key: str | None = None) -> None:
        with self.lock:
            self.kinds[kind] += 1
            if stored_key is not None:
                self.stored_gets[stored_key] += 1

    def snapshot(self) -> dict[str, object]:
        with self.lock:
            return {**self.kinds, "stored_gets": dict(self.stored_gets), "delay_ms": self.delay * 1000}

    def reset(self) -> None:
        with self.lock:
            self.kinds.clear()
            self.stored_gets.clear()


class Handler(BaseHTTPRequestHandler):
    """One connection; keep-alive (HTTP/1.1), as S3 clients expect."""

    protocol_version = "HTTP/1.1"
    server: Server

    def setup(self) -> None:
        super().setup()
        # A response is written in one piece, but the client's next request must not wait for the ACK.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        """Quiet: a line per request would cost more than the request."""

    # -- plumbing

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
               head: bool = False) -> None:
        """Status, headers and body in one write (a HEAD's Content-Length is still the body's)."""
        lines = [f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}", f"Content-Length: {len(body)}",
                 "x-amz-request-id: fakes3", "Server: fakes3"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head else body))

    def _error(self, status: int, code: str, message: str, head: bool = False) -> None:
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{escape(message)}'
                f"</Message><RequestId>fakes3</RequestId></Error>").encode()
        self._reply(status, body, {"Content-Type": "application/xml"}, head)

    def _body(self) -> bytes:
        """The request body, unframed from chunked transfer and from aws-chunked (streaming signatures
        or trailing checksums, which botocore may send)."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raw = b"".join(self._chunks())
        else:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if "aws-chunked" in self.headers.get("Content-Encoding", "") or \
                self.headers.get("x-amz-content-sha256", "").startswith("STREAMING-"):
            return _unchunk_aws(raw)
        return raw

    def _chunks(self) -> Iterator[bytes]:
        while True:
            n = int(self.rfile.readline().split(b";")[0], 16)
            if n == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return
            yield self.rfile.read(n)
            self.rfile.readline()

    def _route(self) -> tuple[str, str, dict[str, str]]:
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        bucket, _, key = unquote(parts.path).lstrip("/").partition("/")
        return bucket, key, query

    def _bucket(self, name: str, head: bool = False) -> Bucket | None:
        if name != self.server.bucket.name:
            self._error(404, "NoSuchBucket", f"The specified bucket {name} does not exist", head)
            return None
        return self.server.bucket

    def _s3(self, method: str) -> None:
        try:
            name, key, query = self._route()
            if name.startswith("__") and self._control(name, query):
                return
            if self.server.stats.delay:
                time.sleep(self.server.stats.delay)
            getattr(self, "_" + method.lower())(name, key, query)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def do_GET(self) -> None:  # noqa: N802 - http.server's names
        self._s3("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._s3("HEAD")

    def do_PUT(self) -> None:  # noqa: N802
        self._s3("PUT")

    def do_POST(self) -> None:  # noqa: N802
        self._s3("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._s3("DELETE")

    def _control(self, name: str, query: dict[str, str]) -> bool:
        stats = self.server.stats
        if name == "__counts__":
            self._reply(200, json.dumps(stats.snapshot()).encode(), {"Content-Type": "application/json"})
        elif name == "__reset__":
            stats.reset()
            self._reply(204)
        elif name == "__config__":
            stats.delay = float(query.get("delay_ms", stats.delay * 1000)) / 1000
            self._reply(204)
        else:
            return False
        return True

    # -- S3

    def _get(self, name: str, key: str, query: dict[str, str], head: bool = False) -> None:
        bucket = self._bucket(name, head)
        if bucket is None:
            return
        if not key:
            if head:
                self.server.stats.count("HEAD_BUCKET")
                self._reply(200, headers={"x-amz-bucket-region": self.server.region}, head=True)
            elif query.get("list-type") == "2":
                self.server.stats.count("LIST")
                self._list(bucket, query)
            elif "location" in query:
                self.server.stats.count("OTHER")
                self._reply(200, f"<LocationConstraint {_NS}/>".encode(), {"Content-Type": "application/xml"})
            else:
                self.server.stats.count("OTHER")
                self._error(501, "NotImplemented", "only ListObjectsV2 (list-type=2) is served")
            return
        self.server.stats.count("HEAD" if head else "GET", key if key in bucket.stored else None)
        found = bucket.find(key)
        if found is None:
            self._error(404, "NoSuchKey", "The specified key does not exist.", head)
            return
        data, etag = found
        match = self.headers.get("If-Match")
        if match and match.strip() not in (etag, "*"):
            self._error(412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold")
            return
        headers = {"ETag": etag, "Last-Modified": _MODIFIED_HTTP, "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        asked = self.headers.get("Range")
        status, start, end = 200, 0, len(data)
        if asked and not head:
            m = _RANGE.match(asked.strip())
            if m is None or m.group(1) == m.group(2) == "":
                self._error(400, "InvalidArgument", f"bad Range {asked!r}")
                return
            if m.group(1) == "":  # the last n bytes
                start = max(0, len(data) - int(m.group(2)))
            else:
                start = int(m.group(1))
                end = min(len(data), int(m.group(2)) + 1) if m.group(2) else len(data)
            if start >= len(data):
                self._error(416, "InvalidRange", "The requested range is not satisfiable")
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        self._reply(status, data[start:end], headers, head)

    def _head(self, name: str, key: str, query: dict[str, str]) -> None:
        self._get(name, key, query, head=True)

    def _list(self, bucket: Bucket, query: dict[str, str]) -> None:
        if query.get("delimiter"):
            self._error(501, "NotImplemented", "delimiter is not served: list without one")
            return
        prefix = query.get("prefix", "")
        limit = min(int(query.get("max-keys", 1000)), 1000)
        token = query.get("continuation-token")
        after = base64.urlsafe_b64decode(token.encode()).decode() if token else query.get("start-after", "")
        encode = query.get("encoding-type") == "url"
        name = (lambda k: quote(k, safe="/")) if encode else escape
        rows, last, more = [], "", False
        for key, size, etag in bucket.walk(prefix, after):
            if len(rows) == limit:
                more = True
                break
            rows.append(f"<Contents><Key>{name(key)}</Key><LastModified>{_MODIFIED}</LastModified><ETag>"
                        f"{escape(etag, {chr(34): '&quot;'})}</ETag><Size>{size}</Size>"
                        "<StorageClass>STANDARD</StorageClass></Contents>")
            last = key
        head = [f'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult {_NS}>',
                f"<Name>{bucket.name}</Name><Prefix>{name(prefix)}</Prefix><KeyCount>{len(rows)}</KeyCount>",
                f"<MaxKeys>{limit}</MaxKeys><IsTruncated>{'true' if more else 'false'}</IsTruncated>"]
        if encode:
            head.append("<EncodingType>url</EncodingType>")
        if token:
            head.append(f"<ContinuationToken>{token}</ContinuationToken>")
        elif "start-after" in query:
            head.append(f"<StartAfter>{name(query['start-after'])}</StartAfter>")
        if more:
            head.append(f"<NextContinuationToken>{base64.urlsafe_b64encode(last.encode()).decode()}"
                        "</NextContinuationToken>")
        body = "".join(head + rows) + "</ListBucketResult>"
        self._reply(200, body.encode(), {"Content-Type": "application/xml"})

    def _put(self, name: str, key: str, query: dict[str, str]) -> None:
        data = self._body()
        bucket = self.server.bucket
        if not key:  # CreateBucket: there is one bucket, and it exists
            self.server.stats.count("OTHER")
            self._reply(200) if name == bucket.name else self._error(403, "AccessDenied", "one bucket only")
            return
        if self._bucket(name) is None:
            return
        if "uploadId" in query:
            self.server.stats.count("MULTIPART")
            with bucket.lock:
                parts = bucket.uploads.get(query["uploadId"])
                if parts is not None:
                    parts[int(query["partNumber"])] = data
            if parts is None:
                self._error(404, "NoSuchUpload", "The specified upload does not exist")
            else:
                self._reply(200, headers={"ETag": etag_of(data)})
            return
        self.server.stats.count("PUT")
        self._reply(200, headers={"ETag": bucket.put(key, data)})

    def _post(self, name: str, key: str, query: dict[str, str]) -> None:
        self._body()
        bucket = self._bucket(name)
        if bucket is None:
            return
        self.server.stats.count("MULTIPART")
        if "uploads" in query:
            upload = uuid.uuid4().hex
            with bucket.lock:
                bucket.uploads[upload] = {}
            body = (f"<InitiateMultipartUploadResult {_NS}><Bucket>{bucket.name}</Bucket><Key>{escape(key)}</Key>"
                    f"<UploadId>{upload}</UploadId></InitiateMultipartUploadResult>")
        elif "uploadId" in query:
            with bucket.lock:
                parts = bucket.uploads.pop(query["uploadId"], None)
            if parts is None:
                self._error(404, "NoSuchUpload", "The specified upload does not exist")
                return
            etag = bucket.put(key, b"".join(parts[n] for n in sorted(parts)))
            body = (f"<CompleteMultipartUploadResult {_NS}><Location>/{bucket.name}/{escape(key)}</Location>"
                    f"<Bucket>{bucket.name}</Bucket><Key>{escape(key)}</Key>"
                    f"<ETag>{escape(etag, {chr(34): '&quot;'})}</ETag></CompleteMultipartUploadResult>")
        else:
            self._error(501, "NotImplemented", "POST serves multipart uploads only")
            return
        self._reply(200, body.encode(), {"Content-Type": "application/xml"})

    def _delete(self, name: str, key: str, query: dict[str, str]) -> None:
        bucket = self._bucket(name)
        if bucket is None:
            return
        if "uploadId" in query:
            self.server.stats.count("MULTIPART")
            with bucket.lock:
                bucket.uploads.pop(query["uploadId"], None)
        else:
            self.server.stats.count("DELETE")
            bucket.delete(key)
        self._reply(204)


def _unchunk_aws(raw: bytes) -> bytes:
    """The payload of an aws-chunked body: ``size[;chunk-signature=...]\\r\\n data \\r\\n`` ... ``0`` then
    trailers."""
    out, pos = [], 0
    while True:
        eol = raw.index(b"\r\n", pos)
        n = int(raw[pos:eol].split(b";")[0], 16)
        if n == 0:
            return b"".join(out)
        out.append(raw[eol + 2 : eol + 2 + n])
        pos = eol + 2 + n + 2


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024

    def __init__(self, port: int, bucket: Bucket, delay_ms: float, region: str = "us-east-1") -> None:
        self.bucket, self.stats, self.region = bucket, Stats(delay_ms), region
        super().__init__(("127.0.0.1", port), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class FakeS3:
    """The server in a thread of this process: ``with FakeS3(keys=5000) as s3: s3.url``. (Under load its
    handlers share this process's GIL: benchmarks run it as a separate process instead.)"""

    def __init__(self, keys: int, delay_ms: float = 0.0, size: int = 64, bucket: str = "bench") -> None:
        self.server = Server(0, Bucket(bucket, keys, size), delay_ms)
        self.url = self.server.url
        self._thread = threading.Thread(target=self.server.serve_forever, name="fakes3", daemon=True)

    def __enter__(self) -> FakeS3:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=1_000_000, help="generated objects (default 1,000,000)")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="wait before answering each S3 request")
    parser.add_argument("--size", type=int, default=64, help="bytes of each generated object (default 64)")
    parser.add_argument("--bucket", default="bench")
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    args = parser.parse_args()
    server = Server(args.port, Bucket(args.bucket, args.keys, args.size), args.delay_ms)
    print(server.url, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
