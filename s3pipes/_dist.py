"""Which torch.distributed rank this process is, also inside DataLoader workers.

A worker started with spawn (or forkserver) does not have torch.distributed initialized, so the rank is
captured in the main process (when a dataset is built or pickled to its workers) and carried along.
"""

from __future__ import annotations

import os

import torch.distributed as dist
from torch.utils.data import get_worker_info


def current() -> tuple[int, int] | None:
    """``(rank, world_size)`` of an initialized process group, else from torchrun's environment."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return None


def instance(captured: tuple[int, int] | None) -> tuple[int, int]:
    """``(num_instances, instance_id)`` of this reader among all ranks x workers, numbered as the
    DataLoader numbers them for DataPipes (``worker * world_size + rank``)."""
    rank, world = current() or captured or (0, 1)
    info = get_worker_info()
    workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
    return world * workers, worker * world + rank
