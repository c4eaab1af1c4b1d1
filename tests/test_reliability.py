"""Faults on the wire and bad input: nothing lost, repeated or corrupted, never a hang."""

from __future__ import annotations

import collections
import hashlib
import io
import logging
import pickle
import random
import socket
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from faultproxy import Fault, FaultProxy
from shards import samples, tar_bytes, zip_bytes
from torch.utils.data import DataLoader
from torch.utils.data.datapipes.iter import IterableWrapper

import s3pipes
from s3pipes import CorruptArchiveError, ObjectChangedError, S3Client, S3Config

N_OBJECTS, N_SHARDS, PER_SHARD = 2000, 8, 20


def digest(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.fixture(scope="module")
def source(boto, module_bucket: str) -> dict[str, str]:  # noqa: ANN001
    """2,000 objects and 8 tar shards; returns the checksum of every object and member by name."""
    rng = random.Random(0)
    sums: dict[str, str] = {}
    objects = {f"objs/{i:05d}.bin": rng.randbytes(rng.randrange(500, 5000)) for i in range(N_OBJECTS)}
    for i in range(N_SHARDS):
        members = [(f"m{i}-{j:03d}.bin", rng.randbytes(rng.randrange(2000, 20000))) for j in range(PER_SHARD)]
        objects[f"tar/shard-{i}.tar"] = tar_bytes(members)
        sums.update({f"s3://{module_bucket}/tar/shard-{i}.tar/{n}": digest(d) for n, d in members})
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda kv: boto.put_object(Bucket=module_bucket, Key=kv[0], Body=kv[1]), objects.items()))
    sums.update({f"s3://{module_bucket}/{k}": digest(v) for k, v in objects.items() if k.startswith("objs/")})
    return sums


def test_full_chain_through_10_percent_faults(endpoint: str, module_bucket: str, source: dict) -> None:
    with FaultProxy(endpoint, rate=0.10, seed=7) as proxy:
        cfg = S3Config(endpoint_url=proxy.url, max_attempts=10)
        objects = IterableWrapper([f"s3://{module_bucket}/objs/"]).list_s3(config=cfg).read_s3(concurrency=16, config=cfg)
        shards = (IterableWrapper([f"s3://{module_bucket}/tar/"]).list_s3(config=cfg).shuffle_shards()
                  .read_s3(stream=True, config=cfg).load_tar())
        got = [(n, digest(d)) for dp in (objects, shards) for n, d in DataLoader(dp, batch_size=None, num_workers=2)]
        faults = collections.Counter(r.fault.kind for r in proxy.log if r.fault is not None)
    assert collections.Counter(n for n, _ in got) == collections.Counter(source.keys()), "none missing, none twice"
    assert dict(got) == source, "every payload equals its source checksum"
    assert sum(faults.values()) > 150 and set(faults) == {"status", "truncate", "reset"}, faults


@pytest.mark.parametrize("fault", [Fault.reset(30_000), Fault.truncate(77_777)])
def test_break_mid_shard_resumes_without_repeat_or_skip(endpoint: str, module_bucket: str, source: dict,
                                                        fault: Fault) -> None:
    url = f"s3://{module_bucket}/tar/shard-3.tar"
    want = [k for k in source if k.startswith(url + "/")]
    with FaultProxy(endpoint, script=[fault, fault], applies=lambda m, p: m == "GET") as proxy:
        got = list(IterableWrapper([url]).read_s3(stream=True, config=S3Config(endpoint_url=proxy.url)).load_tar())
        assert sum(1 for r in proxy.log if r.fault is not None) == 2, "the shard's body broke twice"
    assert [n for n, _ in got] == want and {n: digest(d) for n, d in got} == {n: source[n] for n in want}


def test_skip_corrupt_shard_with_warning_and_count(bucket: str, put, caplog) -> None:  # noqa: ANN001
    put(f"s3://{bucket}/a.tar", tar_bytes(samples(0, 2)))
    bad = put(f"s3://{bucket}/b.tar", b"garbage" * 300)
    put(f"s3://{bucket}/c.tar", tar_bytes(samples(2, 2)))
    dp = IterableWrapper([f"s3://{bucket}/"]).list_s3().read_s3().load_tar(skip_corrupt=True)
    with caplog.at_level(logging.WARNING, logger="s3pipes"):
        names = [n.rsplit("/", 1)[1] for n, _ in dp]
    assert names == [n for n, _ in samples(0, 4)] and dp.skipped == 1
    assert f"skipping a corrupt shard (1 so far in this process): {bad}: corrupt tar archive" in caplog.text
    zdp = IterableWrapper([("s3://b/x.zip", b"nope"), ("s3://b/y.zip", zip_bytes(samples(0, 1)))]).load_zip(
        skip_corrupt=True)
    assert len(list(zdp)) == 2 and zdp.skipped == 1


@pytest.mark.parametrize("stream", [False, True])
def test_skip_corrupt_drops_the_sample_the_damage_broke(bucket: str, put, stream: bool) -> None:  # noqa: ANN001
    """Issue 16.2: a shard cut inside an image must not hand group_samples a label without its image."""
    whole = tar_bytes(samples(0, 3))
    with tarfile.open(fileobj=io.BytesIO(whole)) as t:
        last = t.getmembers()[-1]  # s00002.png, after its label
    put(f"s3://{bucket}/a.tar", whole[: last.offset_data + last.size // 2])
    put(f"s3://{bucket}/b.tar", tar_bytes(samples(3, 2)))
    expander = IterableWrapper([f"s3://{bucket}/"]).list_s3().read_s3(stream=stream).load_tar(skip_corrupt=True)
    got = list(expander.group_samples())
    assert [(s["__key__"], sorted(k for k in s if not k.startswith("__"))) for s in got] == [
        (f"s0000{i}", ["cls", "png"]) for i in (0, 1, 3, 4)]
    assert expander.skipped == 1


def test_worker_errors_arrive_with_their_message(bucket: str, put) -> None:  # noqa: ANN001
    put(f"s3://{bucket}/a", b"x")
    urls = [f"s3://{bucket}/a", f"s3://{bucket}/missing"]
    with pytest.raises(FileNotFoundError, match=f"s3://{bucket}/missing: no such object"):
        list(DataLoader(IterableWrapper(urls).read_s3(shard=False), batch_size=None, num_workers=2))


# ----------------------------------------------------------------------------------------- bad input


def _unreachable() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def _denied(endpoint: str, status: int):  # noqa: ANN202
    def run(bucket: str) -> None:
        with FaultProxy(endpoint, script=[Fault.error(status, x_amz_bucket_region="eu-west-1")] * 20) as proxy:
            S3Client(S3Config(endpoint_url=proxy.url)).read(f"s3://{bucket}/k")
    return run


def _no_credentials(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN202
    def run(bucket: str) -> None:
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
        S3Client().read(f"s3://{bucket}/k")
    return run


def _changed(endpoint: str, put):  # noqa: ANN001, ANN202
    def run(bucket: str) -> None:
        url = put(f"s3://{bucket}/k", b"a" * 500_000)
        f = S3Client(S3Config(part_size=64 << 10)).open(url, buffer_size=4096)
        f.read(10)
        put(url, b"b" * 500_000)  # the parts not yet asked for are of another version
        f.read()
    return run


CASES = {
    "bad url": (lambda b: S3Client().read("s3:/oops"), ValueError, "s3:/oops"),
    "missing bucket": (lambda b: S3Client().read("s3://no-such-bucket-s3pipes/k"), FileNotFoundError,
                       "s3://no-such-bucket-s3pipes/k: bucket"),
    "missing key": (lambda b: S3Client().read(f"s3://{b}/nope"), FileNotFoundError, "/nope: no such object"),
    "empty prefix": (lambda b: list(S3Client().list(f"s3://{b}/empty/")), FileNotFoundError, "/empty/: no objects"),
    "wrong endpoint": (lambda b: S3Client(S3Config(endpoint_url=_unreachable())).read(f"s3://{b}/k"),
                       ConnectionError, "/k: cannot connect"),
    "corrupt tar": (lambda b: list(IterableWrapper([(f"s3://{b}/x.tar", b"x" * 2000)]).load_tar()),
                    CorruptArchiveError, "/x.tar: corrupt tar"),
    "corrupt zip": (lambda b: list(IterableWrapper([(f"s3://{b}/x.zip", b"x" * 2000)]).load_zip()),
                    CorruptArchiveError, "/x.zip: corrupt zip"),
}


@pytest.mark.parametrize("case", [*CASES, "denied", "wrong region", "no credentials", "changed"])
def test_each_bad_input_is_a_clear_error_within_seconds(case: str, bucket: str, endpoint: str, put,  # noqa: ANN001
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    more = {
        "denied": (_denied(endpoint, 403), PermissionError, "/k: access denied"),
        "wrong region": (_denied(endpoint, 301), ValueError, "/k: wrong region .* AWS_REGION=eu-west-1"),
        "no credentials": (_no_credentials(monkeypatch), PermissionError, "/k: no AWS credentials .* AWS_PROFILE"),
        "changed": (_changed(endpoint, put), ObjectChangedError, "/k: the object changed"),
    }
    run, exc, words = {**CASES, **more}[case]
    t = time.monotonic()
    with pytest.raises(exc, match=words):
        run(bucket)
    assert time.monotonic() - t < 5


@pytest.mark.parametrize("engine", ["obstore", "boto3"])
def test_silent_endpoint_times_out_logging_each_retry(engine: str, endpoint: str, bucket: str,  # noqa: ANN001
                                                      caplog) -> None:
    """A server that accepts connections and never answers: every retry is logged at INFO (what
    `s3pipes -v` shows) with URL, attempt and cause, and the end is a TimeoutError within the budget."""
    cfg = S3Config(endpoint_url=endpoint, engine=engine, max_attempts=3, connect_timeout=0.5, read_timeout=0.5)
    url = f"s3://{bucket}/k"
    with FaultProxy(endpoint, script=[Fault.stall()] * 10) as proxy, caplog.at_level(logging.INFO, logger="s3pipes"):
        t = time.monotonic()
        with pytest.raises(TimeoutError, match=f"{url}: timed out .* at {proxy.url}"):
            S3Client(cfg.replace(endpoint_url=proxy.url)).read(url)
        assert time.monotonic() - t < cfg.max_attempts * (cfg.connect_timeout + cfg.read_timeout) + 3
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == cfg.max_attempts - 1, caplog.text
    for attempt, line in enumerate(retries, 1):
        assert line.startswith(url) and f"attempt {attempt} of 3 failed" in line and "timeout" in line.lower(), line
    logged = [r for r in caplog.records if r.getMessage() in retries]
    assert all(r.levelno == logging.INFO and r.name.startswith("s3pipes") for r in logged), "what -v shows"


def test_default_timeouts_give_up_within_two_minutes() -> None:
    """The worst case of the defaults against a silent endpoint: every attempt waits out both timeouts,
    with the longest backoff (throttled) between them."""
    from s3pipes.s3.retry import retry_delay

    cfg = S3Config()
    backoff = sum(min(10.0, 0.5 * 2 ** (a - 1)) for a in range(1, cfg.max_attempts))
    assert all(retry_delay(a, True) <= min(10.0, 0.5 * 2 ** (a - 1))
               for a in range(1, cfg.max_attempts) for _ in range(50)), "the bound above holds"
    assert cfg.max_attempts * (cfg.connect_timeout + cfg.read_timeout) + backoff < 120


def test_credentials_never_appear(monkeypatch: pytest.MonkeyPatch, bucket: str, caplog, endpoint: str) -> None:  # noqa: ANN001
    secret, key_id = "SECRETs3pipes0123456789abcdefSECRET", "AKIAS3PIPESKEYID0000"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    seen: list[str] = []
    s3 = S3Client(S3Config(max_attempts=2))
    with caplog.at_level(logging.DEBUG, logger="s3pipes"):
        for fn in (lambda: s3.read("s3://no-such-bucket-s3pipes/k"), lambda: s3.read(f"s3://{bucket}/k"),
                   lambda: _denied(endpoint, 403)(bucket),
                   lambda: S3Client(S3Config(endpoint_url=_unreachable(), max_attempts=1)).read("s3://b/k")):
            with pytest.raises(OSError) as e:
                fn()
            seen += [str(e.value), repr(e.value)]
    s3.write(f"s3://{bucket}/x", b"1")  # S3IterableDataset lists when it is built
    dp = IterableWrapper([f"s3://{bucket}/"]).list_s3().read_s3()
    seen += [caplog.text, repr(s3), repr(s3.config), repr(dp), pickle.dumps(dp).decode("latin-1"),
             pickle.dumps(s3pipes.S3IterableDataset(f"s3://{bucket}/")).decode("latin-1")]
    assert not [s for s in seen if secret in s or key_id in s]


def test_ten_percent_slowdown_shrinks_the_window_and_loses_nothing(endpoint: str, module_bucket: str,
                                                                   source: dict, caplog) -> None:  # noqa: ANN001
    """Every tenth GET answered 503 SlowDown: the reader halves what it keeps in flight (logged), grows
    back by one a round, and every object still arrives once, intact."""
    urls = sorted(u for u in source if "/objs/" in u)[:300]
    script = [Fault.error(503) if i % 10 == 5 else None for i in range(2 * len(urls))]
    with FaultProxy(endpoint, script=script) as proxy, caplog.at_level(logging.INFO, logger="s3pipes"):
        cfg = S3Config(endpoint_url=proxy.url, max_concurrency=32, max_attempts=10)
        got = [(u, digest(d)) for u, d in S3Client(cfg).read_many(urls)]
        slowdowns = sum(r.fault is not None for r in proxy.log)
    assert got == [(u, source[u]) for u in urls], "each object once, in order, intact"
    assert slowdowns >= 30
    cuts = [r.getMessage() for r in caplog.records if "the store is throttling" in r.getMessage()]
    assert cuts and cuts[0] == "read_s3: the store is throttling; 16 in flight, down from 32", caplog.text


def test_window_grows_while_reads_are_waited_for_and_settles_when_it_gains_nothing(monkeypatch, caplog) -> None:  # noqa: ANN001
    import s3pipes._concurrent as c

    monkeypatch.setattr(c, "_MIN_ROUND", 0.0)
    clock = [0.0]
    monkeypatch.setattr(c.time, "perf_counter", lambda: clock[0])
    throttles = [0]
    w = c.Window(8, 64, lambda: throttles[0])

    def round_(seconds_each: float, waited: float) -> None:
        for _ in range(w.size):
            clock[0] += seconds_each
            w.finished(waited * seconds_each)

    with caplog.at_level(logging.INFO, logger="s3pipes"):
        sizes = [w.size]
        for _ in range(4):  # latency-bound: each round takes as long, with more in flight, so the rate grows
            round_(0.01 * 8 / w.size, waited=0.9)
            sizes.append(w.size)
        assert sizes == [8, 10, 12, 15, 18], sizes
        round_(0.08 / 15, waited=0.9)  # no faster than the round at 15: one such round is noise
        assert w.size == 18 and "settled" not in caplog.text
        round_(0.08 / 15, waited=0.9)  # two in a row: settled
        assert w.size == 18 and "settled at 18 in flight" in caplog.text
        throttles[0] += 3
        w.finished(0.0)
        assert w.size == 9, "halved once, however many requests were throttled in the round"
        throttles[0] += 1
        round_(0.001, waited=0.0)
        assert w.size == 9, "the round that was cut does not grow"
        round_(0.001, waited=0.0)
        assert w.size == 10, "then one more a round"
    fixed = c.Window(16)
    for _ in range(100):
        fixed.finished(1.0)
    assert fixed.size == 16, "a window given as a number stays put"
