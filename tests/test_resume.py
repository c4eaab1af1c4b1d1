"""Mid-epoch resume with torchdata's StatefulDataLoader: nothing lost, nothing repeated, no finished
shard downloaded again."""

from __future__ import annotations

import collections

import pytest
import torch
from faultproxy import FaultProxy
from shards import samples, tar_bytes
from torch.utils.data.datapipes.iter import IterableWrapper
from torchdata.stateful_dataloader import StatefulDataLoader

from s3pipes import S3Config, S3IterableDataset, ShuffleDataset

SHARDS, PER_SHARD = 8, 6


@pytest.fixture(scope="module")
def data(boto, module_bucket: str) -> list[str]:  # noqa: ANN001
    names = []
    for i in range(SHARDS):
        members = samples(i * PER_SHARD, PER_SHARD)
        boto.put_object(Bucket=module_bucket, Key=f"shards/shard-{i}.tar", Body=tar_bytes(members))
        names += [n for n, _ in members]
    return names


def pipe_chain(bucket: str, cfg: S3Config):  # noqa: ANN201
    return (IterableWrapper([f"s3://{bucket}/shards/"]).list_s3(config=cfg).shuffle_shards()
            .read_s3(stream=True, config=cfg).load_tar().group_samples().shuffle_buffer(5))


def key(item) -> str:  # noqa: ANN001
    """A sample's identity, whatever the dataset yields."""
    if isinstance(item, dict):
        return item["__key__"]
    return item[0].rsplit("/", 1)[-1].split(".")[0] + "." + item[0].rsplit(".", 1)[-1]


MAKERS = {
    "pipes": (pipe_chain, lambda names: sorted({n.split(".")[0] for n in names})),
    "iterable": (lambda b, cfg: S3IterableDataset(f"s3://{b}/shards/", shuffle_urls=True, config=cfg), sorted),
    "shuffled iterable": (lambda b, cfg: ShuffleDataset(S3IterableDataset(f"s3://{b}/shards/", shuffle_urls=True,
                                                                          config=cfg), 7), sorted),
}


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("kind", list(MAKERS))
@pytest.mark.parametrize("stop", [1, 17, 40])
def test_resume_mid_epoch_is_exactly_one_epoch(endpoint: str, module_bucket: str, data: list[str], kind: str,
                                               workers: int, stop: int) -> None:
    make, expected = MAKERS[kind]
    torch.manual_seed(0)
    with FaultProxy(endpoint) as proxy:
        cfg = S3Config(endpoint_url=proxy.url)
        loader = StatefulDataLoader(make(module_bucket, cfg), batch_size=None, num_workers=workers)
        it = iter(loader)
        before = [key(next(it)) for _ in range(stop)]
        state = loader.state_dict()
        del it, loader
        gets_before = collections.Counter(r.path for r in proxy.log if r.method == "GET" and ".tar" in r.path)
        proxy.log.clear()

        torch.manual_seed(1)  # a restarted job: another global seed must not change the resumed order
        resumed = StatefulDataLoader(make(module_bucket, cfg), batch_size=None, num_workers=workers)
        resumed.load_state_dict(state)
        after = [key(x) for x in resumed]
        gets_after = collections.Counter(r.path for r in proxy.log if r.method == "GET" and ".tar" in r.path)

    assert collections.Counter(before + after) == collections.Counter(expected(data)), \
        "the samples before plus after the restart are exactly one epoch"
    shard = f"/{module_bucket}/shards/shard-{{}}.tar".format
    delivered = collections.Counter(int(k[1:6]) // PER_SHARD for k in before)
    finished = {shard(i) for i, n in delivered.items() if n == PER_SHARD * (1 if kind == "pipes" else 2)}
    assert not finished & set(gets_after), "a shard delivered whole before the restart is not downloaded again"
    assert set(gets_before) | set(gets_after) == {shard(i) for i in range(SHARDS)}
    assert max((gets_before + gets_after).values()) <= 2


def test_resume_state_outside_an_epoch_starts_the_next(module_bucket: str, data: list[str]) -> None:
    ds = S3IterableDataset(f"s3://{module_bucket}/shards/", shuffle_urls=True)
    first = [n for n, _ in ds]
    state = ds.state_dict()
    fresh = S3IterableDataset(f"s3://{module_bucket}/shards/", shuffle_urls=True)
    fresh.load_state_dict(state)
    assert list(fresh) == [], "a state taken after the epoch's end resumes into nothing"
    second = [n for n, _ in fresh]
    assert state["epoch"] == 1 and sorted(first) == sorted(second) and first != second


@pytest.mark.parametrize("ordered", [True, False])
def test_reader_resumes_with_requests_in_flight(bucket: str, boto, ordered: bool) -> None:  # noqa: ANN001
    for i in range(60):
        boto.put_object(Bucket=bucket, Key=f"o/{i:02d}", Body=b"x" * (i * 997 % 5000))
    make = lambda: IterableWrapper([f"s3://{bucket}/o/"]).list_s3().read_s3(concurrency=8, ordered=ordered)  # noqa: E731
    dp = make()
    it = iter(dp)
    before = [next(it)[0] for _ in range(23)]
    state = dp.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    after = [u for u, _ in resumed]
    assert sorted(before + after) == [f"s3://{bucket}/o/{i:02d}" for i in range(60)]


@pytest.mark.parametrize("kind", ["pipes", "iterable"])
def test_worker_that_ran_out_and_a_second_checkpoint_right_after_resume(bucket: str, boto, kind: str) -> None:  # noqa: ANN001
    """Worker 0 gets 12 samples, worker 1 only 2: its state says its share ended, and it must stay
    ended after a resume. Then a checkpoint taken before the resumed loader yields anything must still
    hold the resumed position."""
    for i, n in enumerate([6, 2, 6]):
        boto.put_object(Bucket=bucket, Key=f"s/{i}.tar", Body=tar_bytes(samples(10 * i, n)))
    want = collections.Counter(f"s{10 * i + j:05d}" for i, n in enumerate([6, 2, 6]) for j in range(n))

    def make():  # noqa: ANN202
        if kind == "pipes":
            return IterableWrapper([f"s3://{bucket}/s/"]).list_s3().read_s3(stream=True).load_tar().group_samples()
        return S3IterableDataset(f"s3://{bucket}/s/")

    for stop in (6, 10):
        loader = StatefulDataLoader(make(), batch_size=None, num_workers=2)
        it = iter(loader)
        before = [key(next(it)) for _ in range(stop)]
        state = loader.state_dict()
        del it, loader
        resumed = StatefulDataLoader(make(), batch_size=None, num_workers=2)
        resumed.load_state_dict(state)
        it = iter(resumed)
        state = resumed.state_dict()  # nothing yielded since the load
        del it, resumed
        again = StatefulDataLoader(make(), batch_size=None, num_workers=2)
        again.load_state_dict(state)
        got = collections.Counter(k.split(".")[0] for k in before + [key(x) for x in again])
        assert got == (want if kind == "pipes" else want + want), f"stop {stop}"


def test_a_shard_order_saved_by_an_earlier_version_is_refused() -> None:
    """Before torch.randperm, the same (seed, epoch) put the shards in another order: resuming such a
    state would repeat and skip shards, so it is an error, not a quiet reshuffle."""
    dp = IterableWrapper([f"s3://b/shard-{i}.tar" for i in range(5)]).shuffle_shards(seed=0)
    it = iter(dp)
    next(it)
    state = dp.state_dict()
    assert state["pos"]["shuffle"] == "randperm"
    again = IterableWrapper([f"s3://b/shard-{i}.tar" for i in range(5)]).shuffle_shards(seed=0)
    again.load_state_dict(state)
    assert len(list(again)) == 4
    older = IterableWrapper([f"s3://b/shard-{i}.tar" for i in range(5)]).shuffle_shards(seed=0)
    older.load_state_dict({**state, "pos": {k: v for k, v in state["pos"].items() if k != "shuffle"}})
    with pytest.raises(ValueError, match="saved by an earlier s3pipes"):
        list(older)
