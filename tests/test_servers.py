"""What other S3 implementations, gateways and caches do differently (found against s3rver 3.7.1),
played by the fault proxy in front of moto: a refused abort, a range answered with 200 or (on an
empty object) with a 206, and If-Match ignored."""

from __future__ import annotations

import logging
import threading
import time
import urllib.parse

import pytest
from faultproxy import Fault, FaultProxy, Request

from s3pipes import ObjectChangedError, S3Client, S3Config

ENGINES = ("obstore", "boto3")
GETS = 50  # enough rewrites for every GET a test makes


def _is_get(method: str, path: str) -> bool:
    return method == "GET" and "list-type=" not in path


@pytest.mark.parametrize("status", [405, 403])
def test_refused_abort_keeps_the_users_error_and_logs_the_upload(endpoint: str, bucket: str, boto, caplog,  # noqa: ANN001
                                                                 status: int) -> None:
    url = f"s3://{bucket}/big.bin"
    aborts = lambda m, p: m == "DELETE" and "uploadId=" in p  # noqa: E731
    with FaultProxy(endpoint, script=[Fault.error(status)] * 5, applies=aborts) as proxy, \
            caplog.at_level(logging.WARNING, logger="s3pipes"):
        with pytest.raises(ValueError, match="^mine$"):
            with S3Client(S3Config(endpoint_url=proxy.url, part_size=5 << 20)).open_write(url) as f:
                f.write(b"x" * (6 << 20))  # one part sent: a multipart upload is under way
                raise ValueError("mine")
        deletes = [r for r in proxy.log if aborts(r.method, r.path)]
    assert deletes, "the writer never tried to abort"
    upload_id = urllib.parse.parse_qs(urllib.parse.urlsplit(deletes[0].path).query)["uploadId"][0]
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert upload_id in warning and url in warning and "abort-multipart-upload" in warning
    assert boto.list_multipart_uploads(Bucket=bucket).get("Uploads"), "a refused abort leaves the upload in place"


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("content_range", ["bytes 0-0/0", "bytes */0"])  # s3rver's, and RFC 9110's for 416
def test_206_on_an_empty_object_reads_it_as_empty(endpoint: str, bucket: str, put, engine: str,  # noqa: ANN001
                                                  content_range: str) -> None:
    url = put(f"s3://{bucket}/empty", b"")
    answer = Fault.rewrite(drop=("range",), status=206, Content_Range=content_range)
    with FaultProxy(endpoint, script=[answer] * GETS, applies=_is_get) as proxy:
        t = time.monotonic()
        assert S3Client(S3Config(endpoint_url=proxy.url, engine=engine)).read(url) == b""
        assert time.monotonic() - t < 5
        assert len(proxy.gets()) <= 2  # the ranged GET, then at most one plain GET: no retries


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("size", [1000, 300_000])  # one part, and several
def test_200_whole_answer_to_the_first_range_is_the_object(endpoint: str, bucket: str, put, engine: str,  # noqa: ANN001
                                                          size: int) -> None:
    data = bytes(range(256)) * (size // 256) + b"end"
    url = put(f"s3://{bucket}/k", data)
    with FaultProxy(endpoint, script=[Fault.rewrite(drop=("range",))] * GETS, applies=_is_get) as proxy:
        t = time.monotonic()
        assert S3Client(S3Config(endpoint_url=proxy.url, engine=engine, part_size=64 << 10)).read(url) == data
        assert time.monotonic() - t < 5
        gets = proxy.gets()
    assert len(gets) <= 2, [g.headers.get("range") for g in gets]  # no retries, no ranged parts
    assert len(gets) == 1 or "range" not in gets[1].headers  # the engine refused the 200: one plain GET


@pytest.mark.parametrize("engine", ENGINES)
def test_stream_through_a_gateway_that_ignores_range_is_an_error_not_other_bytes(  # noqa: ANN001
        endpoint: str, bucket: str, put, engine: str) -> None:
    data = bytes(range(256)) * 1000
    url = put(f"s3://{bucket}/k", data)
    with FaultProxy(endpoint, script=[Fault.rewrite(drop=("range",))] * GETS, applies=_is_get) as proxy:
        t = time.monotonic()
        with pytest.raises(OSError, match="breaks the S3 protocol") as info:
            with S3Client(S3Config(endpoint_url=proxy.url, engine=engine, part_size=64 << 10)).open(url) as f:
                f.seek(100_000)
                f.read(1000)
        assert time.monotonic() - t < 5
        assert len(proxy.gets()) <= 3  # the parts in flight, none retried
    assert url in str(info.value)


def _replace_after_first_get(boto, url: str, new: bytes):  # noqa: ANN001, ANN202
    """A proxy hook: replace the object once upstream has answered the first GET, before the client has it."""
    bucket, _, key = url[5:].partition("/")
    once = threading.Lock()

    def after(r: Request) -> None:
        if r.method == "GET" and key in r.path and once.acquire(blocking=False):
            boto.put_object(Bucket=bucket, Key=key, Body=new)
    return after


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("how", ["read", "stream"])
def test_ignored_if_match_is_caught_by_the_etag(endpoint: str, bucket: str, put, boto, engine: str,  # noqa: ANN001
                                                how: str) -> None:
    size = 6 * (64 << 10)  # six parts
    url = put(f"s3://{bucket}/k", b"a" * size)
    with FaultProxy(endpoint, script=[Fault.rewrite(drop=("if-match",))] * GETS, applies=_is_get,
                    after=_replace_after_first_get(boto, url, b"b" * size)) as proxy:
        s3 = S3Client(S3Config(endpoint_url=proxy.url, engine=engine, part_size=64 << 10))
        with pytest.raises(ObjectChangedError, match="changed while it was being read") as info:
            if how == "read":
                s3.read(url)
            else:
                with s3.open(url, buffer_size=4096) as f:
                    f.read()
        gets = proxy.gets()
    # the client pinned its GETs, and the proxy kept every pin from moto (which would answer 412)
    assert any("if-match" in g.headers for g in gets) and all(g.fault and "if-match" in g.fault.drop for g in gets)
    assert url in str(info.value)
