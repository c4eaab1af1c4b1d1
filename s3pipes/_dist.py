"""Which torch.distributed rank this process is, also inside DataLoader workers.

A worker started with spawn (or forkserver) does not have torch.distributed initialized, so the rank is
captured in the main process (when a dataset is built or pickled to its workers) and carried along.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, TypeVar

import torch.distributed as dist
from torch.utils.data import get_worker_info
from torch.utils.data.graph_settings import _is_sharding_datapipe

T = TypeVar("T")


def current() -> tuple[int, int] | None:
    """``(rank, world_size)`` of the initialized process group, if any. (Not torchrun's RANK: a rank
    that reads a dataset alone, say to evaluate, has no process group and must read all of it.)"""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None


_gloo: list[object] = []  # this process's gloo group, for objects whatever the default backend


def from_rank0(take: Callable[[], T]) -> T:
    """``take()`` on rank 0, sent to every rank, when torch.distributed is initialized (a collective:
    every rank must call it at the same point); else ``take()`` here. One listing per job, not per rank."""
    ranks = current()
    if ranks is None or ranks[1] == 1:
        return take()
    if not _gloo:
        _gloo.append(dist.new_group(backend="gloo"))  # NCCL would need a GPU to carry Python objects
    box: list[Any] = [None]
    if ranks[0] == 0:
        try:
            box = [(take(), None)]
        except Exception as e:  # every rank raises it: the others must not wait for a listing forever
            box = [(None, e)]
    dist.broadcast_object_list(box, src=0, group=_gloo[0])  # type: ignore[arg-type]
    value, error = box[0]
    if error is not None:
        raise error
    return value


def instance(captured: tuple[int, int] | None) -> tuple[int, int]:
    """``(num_instances, instance_id)`` of this reader among all ranks x workers, numbered as the
    DataLoader numbers them for DataPipes (``worker * world_size + rank``)."""
    rank, world = current() or captured or (0, 1)
    info = get_worker_info()
    workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
    return world * workers, worker * world + rank


def refuse_sharding_above(name: str) -> None:
    """Raise if a torch sharding pipe (``IterableWrapper(ds).sharding_filter()``) is iterating the caller.

    The dataset splits its shards itself; the filter would split what is left again, by sample, and
    quietly lose most of the data. torch's graph walk cannot see a dataset inside ``IterableWrapper``
    (which also deep-copies it), so the pipes iterating it are found on the call stack: their generator
    frames are there while they pull from it."""
    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if owner is not None and _is_sharding_datapipe(owner):
            raise RuntimeError(
                f"{name} splits its shards across ranks and DataLoader workers itself; the "
                f"{type(owner).__name__} after it (IterableWrapper(ds).sharding_filter()) would split them "
                f"a second time and lose data. Drop .sharding_filter(): s3pipes needs none. To have the "
                f"filter split samples instead, pass {name}(..., shard=False): every worker then reads "
                f"every shard.")
        frame = frame.f_back  # type: ignore[assignment]
