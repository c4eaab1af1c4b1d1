"""What each rank of the distributed tests runs (spawned by torch.multiprocessing, so importable)."""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset
from torch.utils.data.datapipes.iter import IterableWrapper

from s3pipes import S3IterableDataset


class Wrapped(IterableDataset):
    """A user's dataset around S3IterableDataset, as in the plugin's ImageS3 example."""

    def __init__(self, url: str) -> None:
        self.inner = S3IterableDataset(url, shuffle_urls=True, even_ranks=False)

    def __iter__(self):  # noqa: ANN204
        it = iter(self.inner)
        for name, _ in it:
            yield name


def _key(sample: dict[str, Any]) -> str:
    return sample["__key__"]


def _pipes(url: str, shuffle: bool, even: bool | None) -> Any:
    dp = IterableWrapper([url]).list_s3()
    if shuffle:
        dp = dp.shuffle_shards()
    return dp.read_s3(stream=True, even_ranks=even).load_tar().group_samples().map(_key)


# Workers of a spawned rank are spawned too unless told otherwise, and torch.distributed is not
# initialized in them: two scenarios keep that default, the rest fork to keep the suite quick.
SCENARIOS: dict[str, tuple[Callable[[str], Any], str | None]] = {
    "pipes shuffled, spawned workers": (lambda u: _pipes(u, True, False), None),
    "pipes in order": (lambda u: _pipes(u, False, False), "fork"),
    "pipes even": (lambda u: _pipes(u, True, None), "fork"),
    "iterable shuffled": (lambda u: S3IterableDataset(u, shuffle_urls=True, even_ranks=False), "fork"),
    "iterable even": (lambda u: S3IterableDataset(u, shuffle_urls=True), "fork"),
    "wrapped, spawned workers": (Wrapped, None),
}


def run_rank(rank: int, world: int, port: int, url: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    results = {}
    for name, (make, context) in SCENARIOS.items():
        loader = DataLoader(make(url), batch_size=None, num_workers=2, multiprocessing_context=context)
        results[name] = [x if isinstance(x, str) else x[0] for x in loader]
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(results, f)
    dist.destroy_process_group()


def _keys(batch: dict[str, Any]) -> list[str]:
    return batch["__key__"]


def run_ragged(rank: int, world: int, port: int, url: str, out: str) -> None:
    """A DDP step loop over ragged shards with an index: each rank records its samples and steps."""
    import torch

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(1, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    dp = (IterableWrapper([url]).list_s3().shuffle_shards().read_s3().load_tar().group_samples()
          .map(lambda s: {"__key__": s["__key__"], "x": torch.tensor([float(s["cls"])])}))
    loader = DataLoader(dp, batch_size=4, num_workers=2, multiprocessing_context="fork")
    seen, steps = [], 0
    for batch in loader:  # a rank with fewer batches would leave the other waiting in backward()
        model(batch["x"]).sum().backward()
        opt.step()
        seen += batch["__key__"]
        steps += 1
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"seen": seen, "steps": steps, "len": len(dp)}, f)
    dist.destroy_process_group()
