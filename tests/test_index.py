"""Issue 13 at small scale, against the moto endpoint: list once, the index, equal samples per rank,
exact lengths, resume by byte offset, and a stale index refused."""

from __future__ import annotations

import collections
import json
import re
import socket
from unittest import mock

import pytest
import torch
import torch.multiprocessing as mp
from shards import samples, tar_bytes
from torch.utils.data import DataLoader
from torch.utils.data.datapipes.iter import IterableWrapper
from torchdata.stateful_dataloader import StatefulDataLoader

import s3pipes
from s3pipes import S3Config, StaleIndexError
from s3pipes.cli import main as cli

RAGGED = [3, 6, 9, 12, 15, 18, 21]  # samples per shard: 84 in all


@pytest.fixture
def ragged(bucket: str, put) -> str:  # noqa: ANN001
    at = 0
    for i, n in enumerate(RAGGED):
        put(f"s3://{bucket}/ragged/shard-{i}.tar", tar_bytes(samples(at, n)))
        at += n
    return f"s3://{bucket}/ragged/"


def chain(url: str, seed: int | None = 0, stream: bool = False):  # noqa: ANN201
    return IterableWrapper([url]).list_s3().shuffle_shards(seed=seed).read_s3(stream=stream).load_tar().group_samples()


def lists(spy) -> int:  # noqa: ANN001
    return sum(1 for r in spy.log if r.method == "GET" and "list-type=2" in r.path)


@pytest.mark.parametrize("persistent", [False, True])
def test_workers_do_not_list(spy, ragged: str, persistent: bool) -> None:  # noqa: ANN001
    cfg = S3Config(endpoint_url=spy.url)
    dp = IterableWrapper([ragged]).list_s3(config=cfg).shuffle_shards().read_s3(config=cfg)
    loader = DataLoader(dp, batch_size=None, num_workers=2, persistent_workers=persistent)
    for _ in range(2):
        assert sorted(u for u, _ in loader) == sorted(f"{ragged}shard-{i}.tar" for i in range(7))
    assert lists(spy) == 1, "one listing in the main process, none in the workers, none for epoch 2"


def test_index_replaces_the_listing(spy, ragged: str) -> None:  # noqa: ANN001
    index = s3pipes.build_index(ragged)
    assert [(s.members, s.samples) for s in index] == [(2 * n, n) for n in RAGGED]
    cfg = S3Config(endpoint_url=spy.url)
    spy.log.clear()
    dp = IterableWrapper([ragged]).list_s3(config=cfg).read_s3(config=cfg).load_tar().group_samples()
    assert len(list(DataLoader(dp, batch_size=None, num_workers=2))) == sum(RAGGED)
    assert lists(spy) == 0
    assert sum(1 for r in spy.log if r.path.endswith("_s3pipes_index.jsonl.gz")) == 1
    assert len(dp) == sum(RAGGED)


def test_index_scan_reads_headers_of_large_members(spy, bucket: str, put) -> None:  # noqa: ANN001
    big = [(f"s{i:03d}.bin", bytes(1 << 20)) for i in range(8)]
    put(f"s3://{bucket}/big/a.tar", tar_bytes(big))
    spy.log.clear()
    s3pipes.build_index(f"s3://{bucket}/big/", config=S3Config(endpoint_url=spy.url))
    fetched = sum(int(m.group(2)) - int(m.group(1)) + 1 for r in spy.log if (m := re.search(r"bytes=(\d+)-(\d+)", r.headers.get("range", ""))))
    assert fetched < 8 * 128 * 1024, f"{fetched} bytes read to index 8 MiB of 1 MiB members"


def test_index_cli_and_compressed_shards(bucket: str, put, capsys) -> None:  # noqa: ANN001
    put(f"s3://{bucket}/gz/a.tar.gz", tar_bytes(samples(0, 5), mode="w:gz"))
    put(f"s3://{bucket}/gz/b.tar", tar_bytes(samples(5, 4)))
    assert cli(["index", f"s3://{bucket}/gz/"]) == 0
    assert "2 shards, 18 members, 9 samples" in capsys.readouterr().out
    index = s3pipes.find_index(f"s3://{bucket}/gz/")
    assert [s.kind for s in index] == ["tar.gz", "tar"] and index[0].sample_starts() == [0, 2, 4, 6, 8]
    got = [s["__key__"] for s in chain(f"s3://{bucket}/gz/", seed=None)]
    assert sorted(got) == [f"s{i:05d}" for i in range(9)]


def one_lister_per_rank():  # noqa: ANN201
    """No process group here to send rank 0's listing on: each simulated rank takes its own."""
    return mock.patch("s3pipes._dist.from_rank0", lambda take: take())


def _per_instance(url: str, ranks: int, workers: int, stream: bool = False) -> dict[tuple[int, int], list[str]]:
    """What each (rank, worker) yields, ranks simulated in this process as torch's DataLoader sees them."""
    out = {}
    for r in range(ranks):
        with mock.patch("s3pipes._dist.current", lambda r=r: (r, ranks)), one_lister_per_rank():
            for w in range(workers):
                dp = chain(url, stream=stream)
                reader = dp.source_datapipe.source_datapipe
                reader.apply_sharding(ranks * workers, w * ranks + r)
                with mock.patch("s3pipes.pipes.reader.get_worker_info",
                                lambda w=w: mock.Mock(num_workers=workers, id=w)):
                    out[r, w] = [s["__key__"] for s in dp]
                    assert len(dp) == len(out[r, w]), "len() of group_samples() is the worker's share"
    return out


@pytest.mark.parametrize("ranks,workers", [(2, 2), (3, 1), (4, 3)])
def test_equal_samples_per_rank_on_ragged_shards(ragged: str, ranks: int, workers: int) -> None:
    s3pipes.build_index(ragged)
    got = _per_instance(ragged, ranks, workers)
    per_rank = [sum(len(got[r, w]) for w in range(workers)) for r in range(ranks)]
    assert len(set(per_rank)) == 1, per_rank
    everything = collections.Counter(k for keys in got.values() for k in keys)
    assert max(everything.values()) == 1, "no sample twice"
    assert sum(RAGGED) - len(everything) == sum(RAGGED) % ranks <= ranks - 1
    with mock.patch("s3pipes._dist.current", lambda: (0, ranks)), one_lister_per_rank():
        assert len(chain(ragged)) == per_rank[0], "len() in a rank's main process: the rank's samples"


def test_a_pipe_between_shuffle_and_read_plans_the_same_epoch(ragged: str) -> None:
    """shuffle_shards hands read_s3 where each URL is in the listing; with a pipe of the user's between
    them read_s3 looks the URLs up instead. Both must cut the epoch alike."""
    from s3pipes.pipes import _plan

    s3pipes.build_index(ragged)
    made = []
    real = _plan.Epoch.__init__

    def spy(self, listing, positions) -> None:  # noqa: ANN001
        made.append(positions)
        real(self, listing, positions)

    def keys(between: bool) -> list[str]:
        dp = IterableWrapper([ragged]).list_s3().shuffle_shards(seed=3)
        dp = dp.map(str) if between else dp
        return [s["__key__"] for s in dp.read_s3().load_tar().group_samples()]

    with mock.patch.object(_plan.Epoch, "__init__", spy):
        direct, looked_up = keys(False), keys(True)
    assert direct == looked_up and sorted(direct) == [f"s{i:05d}" for i in range(sum(RAGGED))]
    assert isinstance(made[0], torch.Tensor) and isinstance(made[1], list), "the tensor handed down, then a lookup"
    assert made[0].tolist() == made[1]


def test_ragged_shards_under_ddp_finish_with_equal_steps(ragged: str, tmp_path) -> None:  # noqa: ANN001
    from ddp_worker import run_ragged

    s3pipes.build_index(ragged)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(run_ragged, args=(2, port, ragged, str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["steps"] == ranks[1]["steps"] and len(ranks[0]["seen"]) == len(ranks[1]["seen"]) == 42
    assert ranks[0]["len"] == 42
    seen = ranks[0]["seen"] + ranks[1]["seen"]
    assert len(set(seen)) == len(seen) == sum(RAGGED)


@pytest.mark.parametrize("stream", [False, True])
def test_resume_inside_a_shard_fetches_only_the_rest(spy, bucket: str, put, stream: bool) -> None:  # noqa: ANN001
    put(f"s3://{bucket}/one/shard.tar", tar_bytes(samples(0, 32)))  # 64 members
    url = f"s3://{bucket}/one/"
    s3pipes.build_index(url)
    cfg = S3Config(endpoint_url=spy.url)
    dp = IterableWrapper([url]).list_s3(config=cfg).read_s3(stream=stream, config=cfg).load_tar()
    loader = StatefulDataLoader(dp, batch_size=None, num_workers=0)
    it = iter(loader)
    first = [next(it)[0] for _ in range(40)]
    state = loader.state_dict()
    spy.log.clear()
    dp2 = IterableWrapper([url]).list_s3(config=cfg).read_s3(stream=stream, config=cfg).load_tar()
    loader2 = StatefulDataLoader(dp2, batch_size=None, num_workers=0)
    loader2.load_state_dict(state)
    rest = [name for name, _ in loader2]
    assert len(rest) == 24 and not set(first) & set(rest)
    shard = s3pipes.find_index(url)[0]
    remaining = shard.size - shard.offsets[40][1]
    fetched = sum(len_of(r) for r in spy.log if r.path.endswith("shard.tar") and r.method == "GET")
    assert fetched <= remaining + 4096, (fetched, remaining)


def len_of(request) -> int:  # noqa: ANN001
    m = re.search(r"bytes=(\d+)-(\d+)", request.headers.get("range", ""))
    return int(m.group(2)) - int(m.group(1)) + 1 if m else 1 << 40


@pytest.mark.parametrize("change", ["replaced", "deleted"])
def test_stale_index_is_an_error_naming_the_shard_and_the_command(ragged: str, boto, change: str) -> None:  # noqa: ANN001
    s3pipes.build_index(ragged)
    bucket, key = ragged[5:].split("/", 1)
    if change == "replaced":
        boto.put_object(Bucket=bucket, Key=key + "shard-3.tar", Body=tar_bytes(samples(0, 1)))
    else:
        boto.delete_object(Bucket=bucket, Key=key + "shard-3.tar")
    with pytest.raises(StaleIndexError, match=rf"shard-3.tar: the index of {ragged} is stale.*s3pipes index {ragged}"):
        list(chain(ragged))


def test_iterable_dataset_len_with_an_index(ragged: str) -> None:
    from s3pipes import S3IterableDataset

    with pytest.raises(TypeError, match="s3pipes index"):
        len(S3IterableDataset(ragged))
    s3pipes.build_index(ragged)
    ds = S3IterableDataset(ragged, shuffle_urls=True)
    assert len(ds) == len(list(ds)) == 2 * sum(RAGGED)
    got = {}
    for r in range(2):
        with mock.patch("s3pipes._dist.current", lambda r=r: (r, 2)):
            ds = S3IterableDataset(ragged, shuffle_urls=True)
            got[r] = [name for name, _ in DataLoader(ds, batch_size=None, num_workers=2)]
            assert len(ds) == len(got[r]) == sum(RAGGED), "equal members per rank, known beforehand"
    assert not set(got[0]) & set(got[1])


@pytest.mark.parametrize("kind,workers,persistent,epochs,stop_epoch,stop_at,ranks", [
    ("pipes", 3, True, 3, 1, 4, 2), ("pipes", 1, False, 2, 0, 7, 2), ("pipes", 0, False, 2, 1, 99, 1),
    ("iterable", 3, True, 2, 0, 9, 2), ("shuffled", 1, True, 2, 1, 3, 2), ("user", 3, False, 2, 0, 5, 2)])
def test_exactly_once_through_restarts_with_an_index(bucket: str, put, kind: str, workers: int,  # noqa: ANN001
                                                     persistent: bool, epochs: int, stop_epoch: int,
                                                     stop_at: int, ranks: int) -> None:
    """The exactly-once matrix's check (tests/test_exactly_once.py) on the same ragged shards, indexed:
    epochs cut by samples and resumed from planned positions still deliver every sample once."""
    import test_exactly_once as eo

    for i, n in enumerate(eo.SIZES):
        put(f"s3://{bucket}/eo/shard-{i}.tar", tar_bytes(samples(10 * i, n)))
    url = f"s3://{bucket}/eo/"
    s3pipes.build_index(url)
    with one_lister_per_rank():
        eo.check(kind, url, workers, persistent, epochs, stop_epoch, stop_at, True, ranks)
