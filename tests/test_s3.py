"""The access layer against moto's HTTP server: every operation, every error, fork and pickling."""

from __future__ import annotations

import contextlib
import io
import multiprocessing as mp
import os
import pickle
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from faultproxy import Fault, FaultProxy

from s3pipes import BucketNotFoundError, ObjectChangedError, S3Client, S3Config, S3Url, parse_url
from s3pipes.s3.env import DEFAULT_REGION, engine_name, resolve

MiB = 1 << 20


def blob(n: int, seed: int = 0) -> bytes:
    return (bytes(range(256)) * (n // 256 + 1))[seed % 256 : seed % 256 + n] if n else b""


def random_blob(n: int, seed: int = 0) -> bytes:
    import random

    return random.Random(seed).randbytes(n)


@pytest.fixture(autouse=True, params=["obstore", "boto3"])
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs once per GET engine (S3PIPES_ENGINE reaches child processes too)."""
    monkeypatch.setenv("S3PIPES_ENGINE", request.param)
    return request.param


# ------------------------------------------------------------------------------------------- URLs


def test_parse_url() -> None:
    assert parse_url("s3://b/k/x.tar") == S3Url("b", "k/x.tar")
    assert parse_url("s3://b/p/").is_prefix and parse_url("s3://b").is_prefix
    assert str(parse_url("s3://b/p/x")) == "s3://b/p/x"


@pytest.mark.parametrize("bad", ["b/k", "http://b/k", "s3:/b/k", "s3://", "s3:///k", "", "s3:// b/k"])
def test_bad_url_quotes_it_and_the_expected_form(bad: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_url(bad)
    assert repr(bad) in str(e.value) and "s3://bucket/key" in str(e.value)


def test_bad_url_is_a_value_error_from_every_operation() -> None:
    s3 = S3Client()
    for op in (s3.read, s3.size, s3.exists, lambda u: list(s3.list(u))):
        with pytest.raises(ValueError, match="not an S3 URL"):
            op("bucket/key")


# ------------------------------------------------------------------------------------------ config


def test_region_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # noqa: ANN001
    cfgfile = tmp_path / "config"
    cfgfile.write_text("[profile p]\nregion = eu-west-3\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(cfgfile))
    for var in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(var, raising=False)
    assert resolve(S3Config()).region == DEFAULT_REGION == "us-west-2"
    assert resolve(S3Config(profile="p")).region == "eu-west-3"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    assert resolve(S3Config(profile="p")).region == "ap-south-1"
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    assert resolve(S3Config(profile="p")).region == "eu-central-1"
    assert resolve(S3Config(region="sa-east-1", profile="p")).region == "sa-east-1"


def test_unknown_profile_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="'nope' is not configured"):
        S3Client(S3Config(profile="nope")).read("s3://b/k")


def test_endpoint_precedence_and_path_style(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    r = resolve(S3Config())
    assert r.endpoint_url is None and r.path_style is False
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://c")
    assert resolve(S3Config()).endpoint_url == "http://c"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://b")
    assert resolve(S3Config()).endpoint_url == "http://b"
    monkeypatch.setenv("S3_ENDPOINT_URL", "http://a")
    r = resolve(S3Config())
    assert r.endpoint_url == "http://a" and r.path_style is True
    assert resolve(S3Config(endpoint_url="http://z")).endpoint_url == "http://z"
    assert resolve(S3Config(endpoint_url="http://z", path_style=False)).path_style is False


def test_config_validates() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        S3Config(max_attempts=0)
    with pytest.raises(ValueError, match="part_size"):
        S3Config(part_size=10)


def test_s3_endpoint_url_alone_reaches_the_endpoint(endpoint: str, bucket: str, put) -> None:  # noqa: ANN001
    assert os.environ["S3_ENDPOINT_URL"] == endpoint and "AWS_ENDPOINT_URL" not in os.environ
    put(f"s3://{bucket}/a", b"hello")
    assert S3Client().read(f"s3://{bucket}/a") == b"hello"


def test_anonymous_sends_unsigned_requests(bucket: str, put, boto, spy: FaultProxy) -> None:  # noqa: ANN001
    boto.put_object(Bucket=bucket, Key="public", Body=b"public", ACL="public-read")
    put(f"s3://{bucket}/private", b"private")
    signed, anon = S3Client(S3Config(endpoint_url=spy.url)), S3Client(S3Config(endpoint_url=spy.url, anonymous=True))
    assert signed.read(f"s3://{bucket}/public") == b"public"
    assert anon.read(f"s3://{bucket}/public") == b"public"
    seen_signed, seen_anon = spy.gets()
    assert "authorization" in seen_signed.headers and "authorization" not in seen_anon.headers
    with pytest.raises(PermissionError, match=f"s3://{bucket}/private: access denied"):
        anon.read(f"s3://{bucket}/private")


def test_requester_pays_header(bucket: str, put, spy: FaultProxy) -> None:  # noqa: ANN001
    put(f"s3://{bucket}/a", b"x")
    s3 = S3Client(S3Config(endpoint_url=spy.url, requester_pays=True))
    assert s3.read(f"s3://{bucket}/a") == b"x"
    assert s3.read_range(f"s3://{bucket}/a", 0, 1) == b"x"
    assert [g.headers.get("x-amz-request-payer") for g in spy.gets()] == ["requester"] * 2


# ------------------------------------------------------------------------------------ metadata, list


def test_check_exists_size(bucket: str, put) -> None:  # noqa: ANN001
    s3 = S3Client()
    put(f"s3://{bucket}/d/a.bin", blob(1234))
    s3.check_bucket(f"s3://{bucket}/")
    assert s3.exists(f"s3://{bucket}/d/a.bin") and not s3.exists(f"s3://{bucket}/d/nope")
    assert s3.size(f"s3://{bucket}/d/a.bin") == 1234


@pytest.fixture(scope="module")
def many_keys(boto, module_bucket: str) -> list[str]:  # noqa: ANN001
    keys = [f"many/{i:05d}.bin" for i in range(2001)]  # three pages, the last of one key
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: boto.put_object(Bucket=module_bucket, Key=k, Body=k.encode()), keys))
    return keys


def test_list_2001_keys_across_pages_lazily(module_bucket: str, many_keys: list[str], spy: FaultProxy) -> None:
    s3 = S3Client(S3Config(endpoint_url=spy.url))
    calls = spy.log  # every request is a ListObjectsV2 page here
    it = s3.list(f"s3://{module_bucket}/many/")
    first = next(it)
    assert first.url == f"s3://{module_bucket}/many/00000.bin" and first.size == len("many/00000.bin")
    assert len(calls) == 1, "listing must fetch pages as they are consumed"
    rest = list(it)
    assert [o.url for o in [first, *rest]] == [f"s3://{module_bucket}/{k}" for k in many_keys]
    assert len(calls) == 3 and all("list-type=2" in c.path for c in calls)


def test_list_object_url_dir_without_slash_and_markers(bucket: str, put) -> None:  # noqa: ANN001
    s3 = S3Client()
    put(f"s3://{bucket}/train/a.tar", b"aa")
    put(f"s3://{bucket}/train/sub/b.tar", b"bbb")
    put(f"s3://{bucket}/train/", b"")  # a console "folder" marker
    put(f"s3://{bucket}/trainee.txt", b"not under train/")
    want = [(f"s3://{bucket}/train/a.tar", 2), (f"s3://{bucket}/train/sub/b.tar", 3)]
    assert [tuple(o)[:2] for o in s3.list(f"s3://{bucket}/train/")] == want
    assert [tuple(o)[:2] for o in s3.list(f"s3://{bucket}/train")] == want
    assert [tuple(o)[:2] for o in s3.list(f"s3://{bucket}/train/a.tar")] == want[:1]


def test_empty_prefix_is_file_not_found_naming_it(bucket: str) -> None:
    with pytest.raises(FileNotFoundError, match=f"s3://{bucket}/nothing/: no objects"):
        list(S3Client().list(f"s3://{bucket}/nothing/"))


# ------------------------------------------------------------------------------------------- reads


@pytest.fixture(scope="module")
def big(boto, module_bucket: str) -> tuple[str, bytes]:  # noqa: ANN001
    data = random_blob(20 * MiB, seed=7)
    boto.put_object(Bucket=module_bucket, Key="big.bin", Body=data)
    return f"s3://{module_bucket}/big.bin", data


def test_read_20mib_whole_in_parallel_parts(big: tuple[str, bytes], spy: FaultProxy) -> None:
    url, data = big
    s3 = S3Client(S3Config(endpoint_url=spy.url, part_size=MiB))
    assert s3.read(url) == data
    calls = spy.gets()
    assert len(calls) == 11, "one GET for the first part, then the other 19 MiB in parts of at most 2 MiB"
    first = calls[0].headers  # obstore asks for the first part, boto3 for all and stops after a part
    assert first.get("range", f"bytes=0-{MiB - 1}") == f"bytes=0-{MiB - 1}" and "if-match" not in first
    assert sorted(c.headers["range"] for c in calls[1:]) == sorted(
        f"bytes={s}-{min(s + 2 * MiB, 20 * MiB) - 1}" for s in range(MiB, 20 * MiB, 2 * MiB))
    etags = {c.headers.get("if-match") for c in calls[1:]}
    assert len(etags) == 1 and None not in etags, "parts must be pinned to the first response's ETag"
    spy.log.clear()
    assert S3Client(S3Config(endpoint_url=spy.url)).read(url) == data
    assert len(spy.gets()) == 7, "a first part of 8 MiB, then 12 MiB cut in six, to arrive in parallel"


def test_read_ranges_of_20mib(big: tuple[str, bytes]) -> None:
    url, data = big
    s3 = S3Client()
    for start, end in [(0, 1), (0, 5 * MiB), (MiB - 3, 3 * MiB + 5), (len(data) - 10, len(data)), (5, 5)]:
        assert s3.read_range(url, start, end) == data[start:end]
    assert s3.read_range(url, len(data) - 10, len(data) + 100) == data[-10:]
    with pytest.raises(ValueError, match="bad byte range"):
        s3.read_range(url, 10, 5)


def test_read_small_and_empty(bucket: str, put) -> None:  # noqa: ANN001
    s3 = S3Client()
    put(f"s3://{bucket}/e", b"")
    put(f"s3://{bucket}/s", b"abc")
    assert s3.read(f"s3://{bucket}/e") == b""
    assert s3.read(f"s3://{bucket}/s") == b"abc"


def test_open_streams_in_pinned_parts_and_seeks(big: tuple[str, bytes], spy: FaultProxy) -> None:
    url, data = big
    s3 = S3Client(S3Config(endpoint_url=spy.url, part_size=MiB))
    with s3.open(url) as f:
        out = bytearray()
        while chunk := f.read(100_000):
            out += chunk
        assert bytes(out) == data and f.tell() == len(data)
        head, *gets = spy.log
        assert head.method == "HEAD" and all(g.method == "GET" for g in gets)
        assert sorted(g.headers["range"] for g in gets) == sorted(
            f"bytes={i * MiB}-{(i + 1) * MiB - 1}" for i in range(20)), "read in order: every part once"
        assert {g.headers.get("if-match") for g in gets} == {S3Client().head(url)["ETag"]}, "pinned to one version"
        spy.log.clear()
        f.seek(-100, io.SEEK_END)
        assert f.read() == data[-100:] and not spy.log, "still in the part last read"
        f.seek(12345)
        buf = bytearray(1000)
        assert f.readinto(buf) == 1000 and bytes(buf) == data[12345:13345]
        assert f.tell() == 13345
        f.seek(10, io.SEEK_CUR)
        assert f.read(5) == data[13355:13360]
        assert [g.headers["range"] for g in spy.log] == [f"bytes=12345-{12345 + MiB - 1}"], "a seek: one part"
        f.seek(len(data) + 10)
        assert f.read(10) == b""
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(s3.open(url).raw)


def test_open_of_empty_object(bucket: str, put) -> None:  # noqa: ANN001
    put(f"s3://{bucket}/e", b"")
    with S3Client().open(f"s3://{bucket}/e") as f:
        assert f.read() == b""


# ------------------------------------------------------------------------------------------- writes


def test_write_bytes_and_large_stream_multipart(bucket: str, boto) -> None:  # noqa: ANN001
    s3 = S3Client(S3Config(part_size=5 * MiB))
    s3.write(f"s3://{bucket}/small", b"tiny")
    assert boto.get_object(Bucket=bucket, Key="small")["Body"].read() == b"tiny"

    data = random_blob(12 * MiB, seed=3)

    class OneWay(io.RawIOBase):  # a pipe-like stream: no seek, no len
        def __init__(self) -> None:
            self.pos = 0

        def readable(self) -> bool:
            return True

        def readinto(self, b) -> int:  # noqa: ANN001
            n = min(len(b), len(data) - self.pos, 100_000)
            b[:n] = data[self.pos : self.pos + n]
            self.pos += n
            return n

    s3.write(f"s3://{bucket}/large", io.BufferedReader(OneWay()))
    got = boto.get_object(Bucket=bucket, Key="large")
    assert got["Body"].read() == data
    assert got["ETag"].strip('"').endswith("-3"), "12 MiB in 5 MiB parts is a 3-part upload"
    with pytest.raises(ValueError, match="name an object"):
        s3.write(f"s3://{bucket}/dir/", b"x")


# ------------------------------------------------------------------------------------------- errors


def test_missing_bucket_everywhere() -> None:
    s3 = S3Client()
    url = "s3://no-such-bucket-s3pipes/k"
    for op in (s3.read, s3.size, s3.exists, s3.check_bucket, lambda u: list(s3.list(u)),
               lambda u: list(s3.list("s3://no-such-bucket-s3pipes/p/")), lambda u: s3.open(u).read()):
        with pytest.raises(BucketNotFoundError, match="bucket 'no-such-bucket-s3pipes' does not exist"):
            op(url)


def test_missing_key(bucket: str) -> None:
    s3 = S3Client()
    url = f"s3://{bucket}/missing.bin"
    for op in (s3.read, s3.size, lambda u: s3.read_range(u, 0, 10), lambda u: s3.open(u).read()):
        with pytest.raises(FileNotFoundError) as e:
            op(url)
        assert not isinstance(e.value, BucketNotFoundError)
        assert f"{url}: no such object" in str(e.value)


def test_missing_key_hint_names_a_real_function(bucket: str) -> None:
    import re

    import s3pipes

    with pytest.raises(FileNotFoundError) as e:
        S3Client().read(f"s3://{bucket}/missing.bin")
    named = re.search(r"s3pipes\.(\w+)", str(e.value))
    assert named and callable(getattr(s3pipes, named.group(1), None)), str(e.value)


def test_error_table_maps_each_code_from_real_requests(bucket: str, put) -> None:  # noqa: ANN001
    """Requests moto really refuses, through both engines: the code picks the exception."""
    s3 = S3Client()
    url = put(f"s3://{bucket}/k", b"0123456789")
    refusals = [
        (BucketNotFoundError, "does not exist", lambda: s3.read("s3://no-such-bucket-s3pipes/k")),
        (FileNotFoundError, "no such object", lambda: s3.read(f"s3://{bucket}/missing")),
        (ObjectChangedError, "the object changed", lambda: s3.range_buffers(parse_url(url), 0, 5, '"stale"')),
        (ValueError, "outside the object", lambda: s3.read_range(url, 20, 30)),
    ]
    for exc, words, call in refusals:
        with pytest.raises(exc, match=words):
            call()


@pytest.mark.parametrize("code, status, exc", [
    ("NoSuchBucket", 404, BucketNotFoundError), ("NoSuchKey", 404, FileNotFoundError),
    ("404", 404, FileNotFoundError), ("AccessDenied", 403, PermissionError), ("403", 403, PermissionError),
    ("InvalidAccessKeyId", 403, PermissionError), ("PermanentRedirect", 301, ValueError),
    ("PreconditionFailed", 412, ObjectChangedError), ("InvalidRange", 416, ValueError),
    ("SlowDown", 503, ConnectionError), ("InternalError", 500, ConnectionError), ("InvalidRequest", 400, OSError),
])
def test_error_table_rows(code: str, status: int, exc: type) -> None:
    from s3pipes.s3.errors import Failure, translate

    err = translate(Failure("status", "detail", status, code, "msg"), "s3://b/k", "read the object")
    assert type(err) is exc and str(err).startswith("s3://b/k: ")


def test_no_credentials_says_what_to_set(monkeypatch: pytest.MonkeyPatch, bucket: str) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    url = f"s3://{bucket}/k"
    with pytest.raises(PermissionError, match="no AWS credentials") as e:
        S3Client().read(url)
    assert url in str(e.value) and "AWS_ACCESS_KEY_ID" in str(e.value) and "AWS_PROFILE" in str(e.value)


@pytest.mark.parametrize("status, exc, words", [
    (403, PermissionError, "access denied"),
    (301, ValueError, "set AWS_REGION=eu-west-1"),
])
def test_denied_and_wrong_region(endpoint: str, bucket: str, status: int, exc: type, words: str) -> None:
    with FaultProxy(endpoint, script=[Fault.error(status, x_amz_bucket_region="eu-west-1")] * 10) as proxy:
        s3 = S3Client(S3Config(endpoint_url=proxy.url, max_attempts=2))
        url = f"s3://{bucket}/k"
        with pytest.raises(exc, match=words) as e:
            s3.read(url)
        assert url in str(e.value)


def test_retries_503_then_succeeds(endpoint: str, bucket: str, put) -> None:  # noqa: ANN001
    put(f"s3://{bucket}/k", b"payload")
    with FaultProxy(endpoint, script=[Fault.error(503), Fault.error(500)]) as proxy:
        s3 = S3Client(S3Config(endpoint_url=proxy.url, max_attempts=3))
        assert s3.read(f"s3://{bucket}/k") == b"payload"
        assert [r.fault.status if r.fault else None for r in proxy.log] == [503, 500, None]


def test_gives_up_after_attempts_naming_url_and_cause(endpoint: str, bucket: str) -> None:
    with FaultProxy(endpoint, script=[Fault.error(503)] * 10) as proxy:
        s3 = S3Client(S3Config(endpoint_url=proxy.url, max_attempts=3))
        with pytest.raises(ConnectionError, match=r"SlowDown .* after 3 attempts") as e:
            s3.read(f"s3://{bucket}/k")
        assert f"s3://{bucket}/k" in str(e.value) and len(proxy.log) == 3


def test_permanent_refusal_is_not_a_connection_error(endpoint: str, bucket: str) -> None:
    with FaultProxy(endpoint, script=[Fault.error(400)] * 10) as proxy:
        s3 = S3Client(S3Config(endpoint_url=proxy.url))
        with pytest.raises(OSError, match=f"s3://{bucket}/k: S3 refused to read the object: InvalidRequest") as e:
            s3.read(f"s3://{bucket}/k")
        assert not isinstance(e.value, ConnectionError) and len(proxy.log) == 1, "not retried"


def test_truncated_body_resumes_from_the_byte_reached(endpoint: str, bucket: str, put) -> None:  # noqa: ANN001
    data = random_blob(300_000, seed=1)
    put(f"s3://{bucket}/k", data)
    with FaultProxy(endpoint, script=[Fault.truncate(100_000), Fault.truncate(50_000)]) as proxy:
        s3 = S3Client(S3Config(endpoint_url=proxy.url))
        assert s3.read(f"s3://{bucket}/k") == data
        calls = [c.headers for c in proxy.gets()]
        assert calls[0].get("range", "bytes=0-8388607") == "bytes=0-8388607", "the first part, or all"
        assert [c.get("range") for c in calls[1:]] == ["bytes=100000-299999", "bytes=150000-299999"]
        assert "if-match" not in calls[0] and calls[1]["if-match"] == calls[2]["if-match"] != ""
    with FaultProxy(endpoint, script=[None, Fault.truncate(1000)]) as proxy:
        f = S3Client(S3Config(endpoint_url=proxy.url)).open(f"s3://{bucket}/k")
        assert f.read() == data


def test_truncated_every_time_is_an_error_not_short_bytes(endpoint: str, bucket: str, put) -> None:  # noqa: ANN001
    put(f"s3://{bucket}/k", random_blob(100_000))
    with FaultProxy(endpoint, script=[Fault.truncate(10)] * 20) as proxy:
        s3 = S3Client(S3Config(endpoint_url=proxy.url, max_attempts=3))
        with pytest.raises(ConnectionError, match=f"s3://{bucket}/k: the response body broke 3 times"):
            s3.read(f"s3://{bucket}/k")
        with pytest.raises(ConnectionError, match=f"s3://{bucket}/k"):
            s3.open(f"s3://{bucket}/k").read()


def test_object_replaced_mid_read_is_an_error(endpoint: str, bucket: str, put) -> None:  # noqa: ANN001
    url = put(f"s3://{bucket}/k", random_blob(500_000, seed=1))
    f = S3Client(S3Config(part_size=64 << 10)).open(url, buffer_size=4096)
    f.read(500)  # every part is pinned to the ETag of the open file's HEAD
    put(url, random_blob(500_000, seed=2))
    with pytest.raises(ObjectChangedError, match=f"{url}: the object changed"):
        f.read()


def test_unreachable_endpoint_is_a_connection_error_quickly() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    s3 = S3Client(S3Config(endpoint_url=f"http://127.0.0.1:{port}", max_attempts=2, connect_timeout=1))
    t = time.monotonic()
    with pytest.raises(ConnectionError, match="s3://b/k: cannot connect") as e:
        s3.read("s3://b/k")
    # the hint names the endpoint and where it was set: here the config, not S3_ENDPOINT_URL
    assert f"http://127.0.0.1:{port}" in str(e.value) and "S3Config(endpoint_url=...)" in str(e.value)
    assert time.monotonic() - t < 5


@pytest.fixture
def web_server(tmp_path):  # noqa: ANN001, ANN201 - the URL of a plain web server, not S3
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_endpoint_that_is_not_s3_says_so(web_server: str, engine: str) -> None:
    """`python -m http.server` as the endpoint: not "no such object" or "bucket does not exist"."""
    s3 = S3Client(S3Config(endpoint_url=web_server, engine=engine, max_attempts=2))
    for op in (s3.read, s3.size, s3.exists, lambda u: list(s3.list(u)), lambda u: list(s3.list(u + "/")),
               lambda u: s3.read_range(u, 0, 10)):
        with pytest.raises(ValueError) as e:
            op("s3://bucket/train/k")
        assert "s3://bucket/train/k" in str(e.value)
        assert f"the endpoint {web_server} does not answer like S3" in str(e.value), str(e.value)
        assert "S3Config(endpoint_url=...)" in str(e.value)


@pytest.mark.parametrize("var", [None, "S3_ENDPOINT_URL"])
def test_endpoint_without_scheme_says_add_http(var: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    if var:
        monkeypatch.setenv(var, "127.0.0.1:35357")
    cfg = S3Config() if var else S3Config(endpoint_url="127.0.0.1:35357")
    with pytest.raises(ValueError, match="'127.0.0.1:35357'.* add http:// or https://") as e:
        S3Client(cfg).read("s3://b/k")
    assert (var or "S3Config(endpoint_url=...)") in str(e.value)


def test_stalled_server_is_a_timeout_error(endpoint: str, bucket: str) -> None:
    with FaultProxy(endpoint, script=[Fault.stall()] * 2) as proxy:
        s3 = S3Client(S3Config(endpoint_url=proxy.url, max_attempts=2, read_timeout=0.5))
        with pytest.raises(TimeoutError, match=f"s3://{bucket}/k: timed out"):
            s3.read(f"s3://{bucket}/k")


# --------------------------------------------------------------------------- processes and pickling


def _read_in_child(client: S3Client, url: str, q) -> None:  # noqa: ANN001
    try:
        q.put((os.getpid(), client.read(url), engine_name(client.config)))
    except Exception as e:  # noqa: BLE001 - report anything to the parent
        q.put((os.getpid(), repr(e), ""))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_client_works_in_child_process(bucket: str, put, method: str, engine: str) -> None:  # noqa: ANN001
    url = put(f"s3://{bucket}/k", b"from child")
    s3 = S3Client()
    assert s3.read(url) == b"from child"  # the parent has built its boto3 client before forking
    ctx = mp.get_context(method)
    q = ctx.Queue()
    p = ctx.Process(target=_read_in_child, args=(s3, url, q))
    p.start()
    pid, got, used = q.get(timeout=60)
    p.join(30)
    assert pid != os.getpid() and got == b"from child"
    # tokio does not survive a fork after use: such a child reads with boto3 instead of hanging
    assert used == ("boto3" if method == "fork" else engine)


def test_client_pickles_without_boto3(bucket: str, put) -> None:  # noqa: ANN001
    s3 = S3Client(S3Config(max_concurrency=8))
    url = put(f"s3://{bucket}/k", b"v")
    s3.read(url)
    blob_ = pickle.dumps(s3)
    assert b"botocore" not in blob_ and len(blob_) < 1000
    assert pickle.loads(blob_).read(url) == b"v"


def test_client_is_shared_safely_across_threads(bucket: str, put) -> None:  # noqa: ANN001
    urls = [put(f"s3://{bucket}/{i}", str(i).encode()) for i in range(32)]
    s3 = S3Client()
    start = threading.Barrier(8)

    def work(i: int) -> list[bytes]:
        start.wait()
        return [s3.read(u) for u in urls[i::8]]

    with ThreadPoolExecutor(8) as pool:
        got = sorted(b for part in pool.map(work, range(8)) for b in part)
    assert got == sorted(str(i).encode() for i in range(32))


# ------------------------------------------------------------------------------------------ read_many


def test_read_many_is_lazy_ordered_and_names_a_missing_object(bucket: str, put) -> None:  # noqa: ANN001
    urls = [put(f"s3://{bucket}/{i:03d}", blob(1000 + i, seed=i)) for i in range(40)]
    pulled: list[str] = []

    def source():  # noqa: ANN202
        for u in urls:
            pulled.append(u)
            yield u

    s3 = S3Client()
    it = s3.read_many(source(), concurrency=8)
    assert next(it) == (urls[0], blob(1000, seed=0))
    assert len(pulled) <= 8, "URLs are pulled only as slots free up"
    assert list(it) == [(u, blob(1000 + i, seed=i)) for i, u in enumerate(urls)][1:]
    got = dict(s3.read_many(urls, concurrency=5, ordered=False))
    assert got == {u: blob(1000 + i, seed=i) for i, u in enumerate(urls)}
    missing = f"s3://{bucket}/nope"
    with pytest.raises(FileNotFoundError, match=f"{missing}: no such object"):
        list(s3.read_many([*urls[:5], missing, *urls[5:]], concurrency=4))


def test_read_many_large_objects_in_parts_under_a_small_budget(big: tuple[str, bytes]) -> None:
    url, data = big
    s3 = S3Client(S3Config(part_size=MiB))
    assert list(s3.read_many([url] * 3, concurrency=3, max_bytes=2 * MiB)) == [(url, data)] * 3


def test_budget_bounds_bytes_and_lets_the_oldest_pass() -> None:
    from concurrent.futures import CancelledError, ThreadPoolExecutor

    from s3pipes.s3.engine import Budget

    b = Budget(10)
    assert b.take(0, 8) == 8
    with ThreadPoolExecutor(3) as pool, contextlib.closing(b):  # a failed check frees the waiting threads
        fits_later, too_big = pool.submit(b.take, 1, 5), pool.submit(b.take, 2, 20)
        time.sleep(0.2)
        assert not fits_later.done() and not too_big.done(), "over the budget: wait"
        b.give(8, head=1)
        assert fits_later.result(timeout=5) == 5
        time.sleep(0.2)
        assert not too_big.done()
        b.give(5, head=2)
        assert too_big.result(timeout=5) == 20, "the oldest object passes even when larger than the budget"
        b.give(20, head=3)
        assert b.take(4, 6) == 6, "room to spare: a later object need not wait for an earlier one"
        waits = pool.submit(b.take, 5, 8)
        time.sleep(0.2)
        late = pool.submit(b.take, 6, 2)
        time.sleep(0.2)
        assert not waits.done() and not late.done(), "6 fits, but 5 asked first: room goes in ticket order"
        b.give(6)
        assert waits.result(timeout=5) == 8 and late.result(timeout=5) == 2
        stuck = pool.submit(b.take, 7, 100)
        b.close()
        with pytest.raises(CancelledError):
            stuck.result(timeout=5)  # nothing will be consumed any more: a waiting object gives up
