"""Which torch.distributed rank this process is, also inside DataLoader workers.

A worker started with spawn (or forkserver) does not have torch.distributed initialized, so the rank is
captured in the main process (when a dataset is built or pickled to its workers) and carried along.
"""

from __future__ import annotations

import torch.distributed as dist
from torch.utils.data import get_worker_info


def current() -> tuple[int, int] | None:
    """``(rank, world_size)`` of the initialized process group, if any. (Not torchrun's RANK: a rank
    that reads a dataset alone, say to evaluate, has no process group and must read all of it.)"""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None


def instance(captured: tuple[int, int] | None) -> tuple[int, int]:
    """``(num_instances, instance_id)`` of this reader among all ranks x workers, numbered as the
    DataLoader numbers them for DataPipes (``worker * world_size + rank``)."""
    rank, world = current() or captured or (0, 1)
    info = get_worker_info()
    workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
    return world * workers, worker * world + rank
