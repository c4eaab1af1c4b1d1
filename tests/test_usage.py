"""Request accounting against the real endpoint: exact counts per process and per epoch, summed over
DataLoader workers, retries and throttles, writes, the once-per-epoch log line, the cost estimate."""

from __future__ import annotations

import copy
import functools
import logging
import os
from pathlib import Path

import pytest
import torch.distributed as dist
from faultproxy import Fault, FaultProxy
from torch.utils.data import DataLoader
from torch.utils.data.datapipes.iter import IterableWrapper

import s3pipes
from s3pipes import Prices, S3Client, S3Config, S3IterableDataset, Usage

MiB = 1 << 20
SIZES = [100, 2000, 30_000, 5, 77_777]  # five objects under one prefix
# The prefix is listed once, in the loader's main process, before the workers start (before issue 13
# each worker listed it: 2 pages); the listing is logged apart, so the workers' epochs list nothing.
LIST_PAGES_WITH_2_WORKERS = 0


@pytest.fixture(params=["obstore", "boto3"])
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("S3PIPES_ENGINE", request.param)  # DataLoader workers read with it too
    return request.param


@pytest.fixture
def prefix(bucket: str, put) -> str:  # noqa: ANN001
    for i, n in enumerate(SIZES):
        put(f"s3://{bucket}/data/{i}.bin", os.urandom(n))
    return f"s3://{bucket}/data/"


def pipe(prefix: str, config: S3Config | None = None) -> IterableWrapper:
    return IterableWrapper([prefix]).list_s3(config=config).read_s3(config=config)


def test_one_process_counts_each_request_and_byte(prefix: str, engine: str) -> None:
    dp = pipe(prefix)
    before = s3pipes.usage()
    assert sorted(len(d) for _, d in dp) == sorted(SIZES)
    got = s3pipes.usage() - before
    # 5 objects, and the lookup of the prefix's index (it has none), in the listing
    assert got == Usage(list=1, get=6, bytes_in=sum(SIZES)) and got.requests == 7
    assert s3pipes.usage(dp) == got, "the epoch, in this process"


def test_loader_with_2_workers_sums_them(prefix: str, engine: str) -> None:
    loader = DataLoader(pipe(prefix), batch_size=None, num_workers=2)
    assert len(list(loader)) == 5
    assert s3pipes.usage(loader) == Usage(list=LIST_PAGES_WITH_2_WORKERS, get=5, bytes_in=sum(SIZES))


def test_a_spawned_worker_and_a_wrapped_dataset(prefix: str) -> None:
    ds = S3IterableDataset(prefix)  # IterableWrapper deep-copies it; it streams: a HEAD, then GETs
    loader = DataLoader(IterableWrapper(ds), batch_size=None, num_workers=1, multiprocessing_context="spawn")
    assert len(list(loader)) == 5
    assert s3pipes.usage(loader) == Usage(head=5, get=5, bytes_in=sum(SIZES)), "listed when it was built"
    assert s3pipes.usage(copy.deepcopy(ds)) == s3pipes.usage(ds), "a copy keeps the token"


@pytest.mark.parametrize("persistent", [True, False])
def test_each_epoch_not_the_total(prefix: str, persistent: bool) -> None:
    loader = DataLoader(pipe(prefix), batch_size=None, num_workers=2, persistent_workers=persistent)
    for _ in range(2):
        assert len(list(loader)) == 5
        assert s3pipes.usage(loader).get == 5
    assert s3pipes.usage(loader) == Usage(list=LIST_PAGES_WITH_2_WORKERS, get=5, bytes_in=sum(SIZES))


def test_two_loaders_alive_at_once_are_apart(bucket: str, put, prefix: str) -> None:  # noqa: ANN001
    put(f"s3://{bucket}/other/x.bin", b"x" * 10)
    a = DataLoader(pipe(prefix), batch_size=None, num_workers=2, persistent_workers=True)
    b = DataLoader(pipe(f"s3://{bucket}/other/"), batch_size=None, num_workers=1, persistent_workers=True)
    for _ in range(2):
        it_a, it_b = iter(a), iter(b)
        assert len([next(it_a), next(it_b), *it_a, *it_b]) == 6
    assert s3pipes.usage(a).get == 5 and s3pipes.usage(b) == Usage(get=1, bytes_in=10)


def _log_to(path: str, worker_id: int) -> None:
    handler = logging.FileHandler(path)
    logging.getLogger("s3pipes").addHandler(handler)
    logging.getLogger("s3pipes").setLevel(logging.INFO)


def test_epoch_line_logged_once_by_the_last_worker(prefix: str, tmp_path: Path) -> None:
    out = tmp_path / "workers.log"
    loader = DataLoader(pipe(prefix), batch_size=None, num_workers=2,
                        worker_init_fn=functools.partial(_log_to, str(out)))
    list(loader)
    lines = [line for line in out.read_text().splitlines() if "S3 requests this epoch" in line]
    assert lines == [f"S3 requests this epoch (2 workers): {s3pipes.usage(loader)}"]
    assert "GET 5 · " in lines[0]


def test_rank_in_the_line_and_all_ranks(prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        dp = pipe(prefix)
        with caplog.at_level(logging.INFO, logger="s3pipes"):
            list(dp)
        assert s3pipes.usage(dp, all_ranks=True) == s3pipes.usage(dp) == Usage(list=1, get=6, bytes_in=sum(SIZES))
    finally:
        dist.destroy_process_group()
    assert f"S3 requests this epoch (rank 0 of 1, 1 process): {s3pipes.usage(dp)}" in caplog.messages


@pytest.mark.parametrize("fault, throttled", [(Fault.error(503), 1), (Fault.error(500), 0)])
def test_retry_and_throttle_counted(endpoint: str, prefix: str, engine: str, fault: Fault, throttled: int) -> None:
    url = f"{prefix}1.bin"
    with FaultProxy(endpoint, script=[fault], applies=lambda method, path: method == "GET") as proxy:
        before = s3pipes.usage()
        assert len(S3Client(S3Config(endpoint_url=proxy.url)).read(url)) == SIZES[1]
        got = s3pipes.usage() - before
        assert len(proxy.gets()) == 2
    assert got == Usage(get=2, bytes_in=SIZES[1], retries=1, throttled=throttled)


def test_multipart_write_counts_each_put(bucket: str) -> None:
    s3 = S3Client(S3Config(part_size=5 * MiB))
    before = s3pipes.usage()
    s3.write(f"s3://{bucket}/big.bin", os.urandom(11 * MiB))  # create, 3 parts, complete
    got = s3pipes.usage() - before
    assert got == Usage(put=5, bytes_out=11 * MiB)
    before = s3pipes.usage()
    s3pipes.save({"w": 1}, f"s3://{bucket}/ckpt.pt")  # under a part: one PutObject
    got = s3pipes.usage() - before
    assert got.put == 1 and got.requests == 1 and 0 < got.bytes_out < 5000


def test_an_aborted_upload_is_a_free_delete(bucket: str) -> None:
    before = s3pipes.usage()
    with pytest.raises(KeyError), S3Client(S3Config(part_size=5 * MiB)).open_write(f"s3://{bucket}/x") as f:
        f.write(os.urandom(5 * MiB))
        raise KeyError
    got = s3pipes.usage() - before
    # the part may be cancelled before it is sent
    assert got.put in (1, 2) and got.delete == 1 and "DELETE 1" in str(got) and got.cost() == got.put * 0.005 / 1000


def test_cost_and_line() -> None:
    u = Usage(list=1000, head=1000, get=2000, put=3000, delete=500, other=1000)
    assert u.cost() == pytest.approx((1000 + 3000) * 0.005 / 1000 + (1000 + 2000 + 1000) * 0.0004 / 1000)
    assert u.cost(Prices(put=0.01, get=0.001, delete=0.1)) == pytest.approx(4 * 0.01 + 4 * 0.001 + 0.5 * 0.1)
    assert str(Usage(list=3, get=120, bytes_in=4_200_000)) == (
        "LIST 3 · HEAD 0 · GET 120 · PUT 0 · 4.2 MB in · 0 B out · 0 retries · 0 throttled · "
        "≈$0.00006 (S3 Standard prices)")
    assert str(Usage(get=10**8)).endswith("≈$40.00 (S3 Standard prices)")


def test_usage_of_something_without_our_pipes_says_so() -> None:
    with pytest.raises(TypeError, match="holds no s3pipes pipe"):
        s3pipes.usage(DataLoader(IterableWrapper([1, 2])))
