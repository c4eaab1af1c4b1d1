"""Exactly once on every path users take: every sample once per epoch across ranks x workers, through a
checkpoint taken anywhere, or a clear error.

The matrix explores, with hypothesis: the pipe chain, ``S3IterableDataset``, ``ShuffleDataset``, a
user's ``IterableDataset`` around ours, and s3torchconnector's ``IterableWrapper(ds).sharding_filter()``;
0, 1 or 3 workers, persistent or not; 1 to 3 epochs with a checkpoint in any of them, anywhere from
right after ``iter()`` to after the last sample (or after the end); shuffling on and off; 1 or 2 ranks.
A second rank is the same process told so (torch's ``_get_distributed_settings`` for the pipes, the
captured rank for the datasets): the split and the resume are what is tested here, while
tests/test_distributed.py runs real ranks.
"""

from __future__ import annotations

import collections
from contextlib import ExitStack
from typing import Any, Iterator
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from shards import samples, tar_bytes
from torch.utils.data import DataLoader, IterableDataset
from torch.utils.data.datapipes.iter import IterableWrapper
from torchdata.stateful_dataloader import StatefulDataLoader

from s3pipes import S3IterableDataset, ShuffleDataset

SIZES = [3, 1, 4, 2, 3]  # samples per shard: ragged, and an odd number of shards
KINDS = ["pipes", "iterable", "shuffled", "user", "filter"]


@pytest.fixture(scope="module")
def url(boto, module_bucket: str) -> str:  # noqa: ANN001
    for i, n in enumerate(SIZES):
        boto.put_object(Bucket=module_bucket, Key=f"eo/shard-{i}.tar", Body=tar_bytes(samples(10 * i, n)))
    return f"s3://{module_bucket}/eo/"


def expected(kind: str) -> collections.Counter[str]:
    names = [name for i, n in enumerate(SIZES) for name, _ in samples(10 * i, n)]
    return collections.Counter({n.split(".")[0] for n in names} if kind == "pipes" else names)


class UserDataset(IterableDataset):
    """A user's dataset around ours, as in the plugin's examples: no state of its own."""

    def __init__(self, inner: S3IterableDataset) -> None:
        self.inner = inner

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def __iter__(self) -> Iterator[str]:
        for name, _ in self.inner:
            yield name


def make(kind: str, url: str, shuffle: bool, rank: tuple[int, int] | None) -> Any:
    if kind == "pipes":
        dp = IterableWrapper([url]).list_s3()
        dp = dp.shuffle_shards() if shuffle else dp
        dp = dp.read_s3(stream=True, even_ranks=False).load_tar().group_samples()
        return dp.shuffle_buffer(4) if shuffle else dp
    inner = S3IterableDataset(url, shuffle_urls=shuffle, even_ranks=False, shard=kind != "filter")
    inner._dist = rank  # what the dataset captures from torch.distributed in the main process
    return {"iterable": inner, "shuffled": ShuffleDataset(inner, 5, seed=None if shuffle else 0),
            "user": UserDataset(inner), "filter": IterableWrapper(inner).sharding_filter()}[kind]


def key(item: Any) -> str:
    return item["__key__"] if isinstance(item, dict) else item if isinstance(item, str) else item[0]


def set_epoch(kind: str, ds: Any, epoch: int) -> None:
    """What the plugin's users do before each epoch. The pipes count epochs by themselves, and
    IterableWrapper deep-copies what it wraps, so the filter kind stays in one epoch's order."""
    if kind not in ("pipes", "filter"):
        ds.set_epoch(epoch)


_DONE = object()


def run_rank(kind: str, url: str, workers: int, persistent: bool, epochs: int, stop_epoch: int, stop_at: int,
             shuffle: bool, rank: tuple[int, int] | None) -> list[collections.Counter[str]]:
    """The keys each epoch delivered to one rank, with a restart from a checkpoint in ``stop_epoch``."""
    seen: list[collections.Counter[str]] = [collections.Counter() for _ in range(epochs)]
    loader_args = dict(batch_size=None, num_workers=workers, persistent_workers=persistent)
    ds = make(kind, url, shuffle, rank)
    loader = StatefulDataLoader(ds, **loader_args)
    for epoch in range(stop_epoch):
        set_epoch(kind, ds, epoch)
        seen[epoch].update(key(x) for x in loader)
    set_epoch(kind, ds, stop_epoch)
    it = iter(loader)
    resume_epoch = stop_epoch
    for _ in range(stop_at):
        item = next(it, _DONE)
        if item is _DONE:  # a checkpoint after the end: the restarted loader begins the next epoch
            resume_epoch += 1
            break
        seen[stop_epoch][key(item)] += 1
    state = loader.state_dict()
    del it, loader

    torch.manual_seed(12345)  # a restarted job: another global seed must not change the resumed order
    ds = make(kind, url, shuffle, rank)
    set_epoch(kind, ds, resume_epoch)
    loader = StatefulDataLoader(ds, **loader_args)
    loader.load_state_dict(state)
    for epoch in range(resume_epoch, epochs):
        set_epoch(kind, ds, epoch)
        seen[epoch].update(key(x) for x in loader)
    return seen


def check(kind: str, url: str, workers: int, persistent: bool, epochs: int, stop_epoch: int, stop_at: int,
          shuffle: bool, ranks: int) -> None:
    per_epoch: list[collections.Counter[str]] = [collections.Counter() for _ in range(epochs)]
    for r in range(ranks):
        with ExitStack() as stack:
            if ranks > 1:
                stack.enter_context(mock.patch("torch.utils.data.dataloader._get_distributed_settings",
                                               lambda r=r: (ranks, r)))
            torch.manual_seed(7)
            seen = run_rank(kind, url, workers, persistent, epochs, stop_epoch, stop_at, shuffle,
                            (r, ranks) if ranks > 1 else None)
        for total, got in zip(per_epoch, seen):
            total.update(got)
    want = expected(kind)
    for epoch, got in enumerate(per_epoch):
        assert got == want, (f"epoch {epoch}: missing {sorted((want - got).elements())}, "
                             f"repeated {sorted((got - want).elements())}")


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=8, deadline=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(workers=st.sampled_from([0, 1, 3]), persistent=st.booleans(), epochs=st.integers(1, 3),
       stop_epoch=st.integers(0, 2), stop_at=st.integers(0, 2 * sum(SIZES) + 1), shuffle=st.booleans(),
       ranks=st.sampled_from([1, 2]))
@example(workers=3, persistent=True, epochs=3, stop_epoch=2, stop_at=0, shuffle=True, ranks=2)
@example(workers=1, persistent=False, epochs=2, stop_epoch=0, stop_at=99, shuffle=True, ranks=1)
@example(workers=3, persistent=True, epochs=2, stop_epoch=0, stop_at=8, shuffle=True, ranks=2)
@example(workers=0, persistent=False, epochs=3, stop_epoch=1, stop_at=5, shuffle=True, ranks=2)
@example(workers=1, persistent=True, epochs=3, stop_epoch=1, stop_at=27, shuffle=False, ranks=1)
def test_exactly_once_matrix(url: str, kind: str, workers: int, persistent: bool, epochs: int, stop_epoch: int,
                             stop_at: int, shuffle: bool, ranks: int) -> None:
    """No shrinking (a failure prints its example as found; shrinking took minutes), and a fixed set of
    examples, so that CI runs the same matrix each time."""
    check(kind, url, workers, persistent and workers > 0, epochs, min(stop_epoch, epochs - 1), stop_at, shuffle,
          ranks)


@pytest.mark.parametrize("kind", ["pipes", "iterable", "shuffled"])
@pytest.mark.parametrize("stop_at", [0, 1])
def test_persistent_workers_resume_in_a_later_epoch(url: str, kind: str, stop_at: int) -> None:
    """Issue 12.1: the state taken as epoch 2 starts (the loader snapshots each persistent worker then,
    before it yields) must describe epoch 2, not the epoch that ended."""
    check(kind, url, workers=2, persistent=True, epochs=2, stop_epoch=1, stop_at=stop_at, shuffle=True, ranks=1)


def test_sharding_filter_around_the_iterable_is_refused_or_split_once(bucket: str, put) -> None:  # noqa: ANN001
    """Issue 12.2: s3torchconnector documents IterableWrapper(ds).sharding_filter(); ours splits by itself."""
    urls = [put(f"s3://{bucket}/o/{i}.bin", str(i).encode()) for i in range(10)]
    doubled = IterableWrapper(S3IterableDataset(urls)).sharding_filter()
    with pytest.raises(RuntimeError, match=r"Drop \.sharding_filter\(\).*shard=False"):
        list(DataLoader(doubled, batch_size=None, num_workers=3))
    with pytest.raises(RuntimeError, match=r"Drop \.sharding_filter\(\)"):
        list(doubled)  # the same mistake in one process, before it costs data at scale
    split = IterableWrapper(S3IterableDataset(urls, shard=False)).sharding_filter()
    got = [data for _, data in DataLoader(split, batch_size=None, num_workers=3)]
    assert sorted(got) == sorted(str(i).encode() for i in range(10))


def test_manual_seed_gives_the_same_order_for_any_worker_count(bucket: str, put) -> None:  # noqa: ANN001
    """Issue 12.4: the shard order is one function of (seed, epoch) whether the epoch runs in this process
    or in workers that are not persistent. As with torch's RandomSampler, torch.manual_seed before each
    epoch repeats the order; set_epoch numbers the epochs; without either, each epoch has a new one."""
    for i in range(8):
        put(f"s3://{bucket}/o/{i}.bin", b"x")
    orders: dict[tuple[int, str], list[list[str]]] = {}
    for workers in (0, 2):
        dp = IterableWrapper([f"s3://{bucket}/o/"]).list_s3().shuffle_shards().read_s3()
        loader = DataLoader(dp, batch_size=None, num_workers=workers)
        for how in ("reseeded", "set_epoch", "seeded once"):
            torch.manual_seed(0)
            epochs = []
            for epoch in range(3):
                if how != "seeded once":
                    torch.manual_seed(0)
                if how == "set_epoch":
                    _shuffler(dp).set_epoch(epoch)
                epochs.append([u for u, _ in loader])  # two workers interleave into the global order
            orders[workers, how] = epochs
    # Seeded once, epoch 2 differs by worker count: torch's loader draws more from the global RNG per
    # epoch with workers (as its RandomSampler sees too); what is ours is the order given a seed.
    for how in ("reseeded", "set_epoch"):
        assert orders[0, how] == orders[2, how], how
    assert len({tuple(e) for e in orders[0, "reseeded"]}) == 1, "manual_seed before each epoch repeats it"
    assert len({tuple(e) for e in orders[0, "set_epoch"]}) == 3, "set_epoch gives each epoch its order"
    assert len({tuple(e) for e in orders[0, "seeded once"]}) == 3, "each DataLoader epoch has a new seed"


def _shuffler(dp: Any) -> Any:
    from torch.utils.data.graph import traverse_dps
    from torch.utils.data.graph_settings import get_all_graph_pipes

    from s3pipes import ShardShuffler

    return next(p for p in get_all_graph_pipes(traverse_dps(dp)) if isinstance(p, ShardShuffler))
