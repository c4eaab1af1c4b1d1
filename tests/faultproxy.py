"""An HTTP proxy that stands between a client and an S3 endpoint and breaks requests on purpose.

Each request is either passed through or given one fault: an S3 error status, a body cut off after some
bytes (the connection is then closed), a stall that answers nothing, or a rewrite that behaves like a
store or gateway that bends the protocol (it drops request headers such as Range or If-Match before
forwarding, and may relay the answer with another status and extra headers). Faults come from a script (a
list consumed in request order) or at random with a seeded rate. Run by hand:

    python tests/faultproxy.py --upstream http://127.0.0.1:5000 --rate 0.1 --seed 1
"""

from __future__ import annotations

import argparse
import http.client
import random
import socket
import struct
import threading
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, NamedTuple

_S3_ERRORS = {
    500: ("InternalError", "We encountered an internal error. Please try again."),
    503: ("SlowDown", "Please reduce your request rate."),
    400: ("InvalidRequest", "The request is not valid for this object."),
    403: ("AccessDenied", "Access Denied"),
    301: ("PermanentRedirect", "The bucket you are attempting to access must be addressed using the specified endpoint."),
}


@dataclass(frozen=True)
class Fault:
    kind: str  # "status", "truncate", "reset", "stall" or "rewrite"
    status: int = 0
    keep: int = 0  # bytes of the body sent before a truncate closes (or a reset resets) the connection
    headers: tuple[tuple[str, str], ...] = ()
    drop: tuple[str, ...] = ()  # a rewrite: request headers (lower case) not forwarded upstream

    @classmethod
    def error(cls, status: int, **headers: str) -> Fault:
        return cls("status", status=status, headers=tuple(headers.items()))

    @classmethod
    def truncate(cls, keep: int) -> Fault:
        return cls("truncate", keep=keep)

    @classmethod
    def reset(cls, keep: int) -> Fault:
        return cls("reset", keep=keep)

    @classmethod
    def stall(cls) -> Fault:
        return cls("stall")

    @classmethod
    def rewrite(cls, drop: tuple[str, ...] = (), status: int = 0, **headers: str) -> Fault:
        """Forward without the request headers ``drop``; relay the answer with ``status`` (if given) and
        ``headers`` added or replaced (``_`` in a name becomes ``-``)."""
        return cls("rewrite", status=status, headers=tuple(headers.items()), drop=drop)


class Request(NamedTuple):
    """One request the proxy saw; ``headers`` has lower-case names (``range``, ``if-match``, ``authorization``)."""

    method: str
    path: str
    fault: Fault | None
    headers: dict[str, str]


class FaultProxy:
    """Proxy ``upstream`` on 127.0.0.1; ``url`` is where clients connect.

    ``script`` faults apply to requests in order (``None`` passes one through); once it is used up,
    ``rate`` gives each request that ``applies`` a seeded chance of a random fault. ``log`` records a
    :class:`Request` for every request, so with no faults the proxy also shows what a client sent.
    ``after(request)``, if given, runs once upstream has answered a forwarded request and before the
    answer is relayed (e.g. to replace an object between the first GET and the next).
    """

    def __init__(self, upstream: str, script: list[Fault | None] | None = None, rate: float = 0.0,
                 seed: int = 0, applies: Callable[[str, str], bool] = lambda method, path: True,
                 after: Callable[[Request], None] | None = None) -> None:
        self.upstream = urllib.parse.urlsplit(upstream)
        self.script = list(script or [])
        self.rate, self.rng, self.applies, self.after = rate, random.Random(seed), applies, after
        self.log: list[Request] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()

    def gets(self) -> list[Request]:
        """The object GETs seen (listings, and the lookups of a prefix's index that go with them, excluded)."""
        return [r for r in self.log if r.method == "GET" and "list-type=" not in r.path
                and not r.path.endswith("/_s3pipes_index.jsonl.gz")]

    def _next_fault(self, method: str, path: str, headers: dict[str, str]) -> Fault | None:
        with self._lock:
            if not self.applies(method, path):
                fault = None
            elif self.script:
                fault = self.script.pop(0)
            elif self.rate and self.rng.random() < self.rate:
                fault = self.rng.choice(
                    [Fault.error(503), Fault.error(500), Fault.truncate(self.rng.randrange(0, 4096)),
                     Fault.reset(self.rng.randrange(0, 4096))]
                )
            else:
                fault = None
            self.log.append(Request(method, path, fault, headers))
            return fault

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                seen = {k.lower(): v for k, v in self.headers.items()}
                fault = proxy._next_fault(self.command, self.path, seen)
                if fault is not None and fault.kind == "stall":
                    proxy._stop.wait(60)
                    self.close_connection = True
                    return
                if fault is not None and fault.kind == "status":
                    code, message = _S3_ERRORS.get(fault.status, ("Error", "injected"))
                    xml = (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code>"
                           f"<Message>{message}</Message></Error>").encode()
                    self.send_response(fault.status)
                    self.send_header("x-amz-request-id", "FAULTPROXY")  # S3 names every answer
                    for k, v in fault.headers:
                        self.send_header(k.replace("_", "-"), v)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(0 if self.command == "HEAD" else len(xml)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(xml)
                    return
                up = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                try:
                    drop = {"host", *(fault.drop if fault is not None and fault.kind == "rewrite" else ())}
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in drop}
                    headers["Host"] = proxy.upstream.netloc
                    up.request(self.command, self.path, body=body, headers=headers)
                    resp = up.getresponse()
                    data = resp.read()
                finally:
                    up.close()
                if proxy.after is not None:
                    proxy.after(Request(self.command, self.path, fault, seen))
                status, extra = resp.status, {}
                if fault is not None and fault.kind == "rewrite":
                    status = fault.status or status
                    extra = {k.replace("_", "-").lower(): (k.replace("_", "-"), v) for k, v in fault.headers}
                self.send_response(status, None if status != resp.status else resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length", *extra):
                        self.send_header(k, v)
                for k, v in extra.values():
                    self.send_header(k, v)
                # a HEAD has no body: its Content-Length is the object's size
                length = resp.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data))
                self.send_header("Content-Length", length)
                if fault is not None and fault.kind in ("truncate", "reset") and self.command != "HEAD":
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(data[: min(fault.keep, max(len(data) - 1, 0))])
                    self.wfile.flush()
                    if fault.kind == "reset":  # linger 0: close sends RST, not FIN
                        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    return
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

        return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", required=True, help="the S3 endpoint to stand in front of")
    parser.add_argument("--rate", type=float, default=0.1, help="chance of a fault per request")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with FaultProxy(args.upstream, rate=args.rate, seed=args.seed) as proxy:
        print(f"fault proxy on {proxy.url} -> {args.upstream} (rate {args.rate}); Ctrl-C stops it", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
