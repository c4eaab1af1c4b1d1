"""The order of a shuffling pipe: a function of (seed, epoch), agreed by every worker and rank."""

from __future__ import annotations

import random

import torch


class Seeded:
    """Mixin for shufflers. The seed of an epoch is, in order: the ``seed`` given by the user; the one
    the DataLoader hands every worker and rank through ``set_seed`` (one shared seed per epoch); a draw
    from torch's global RNG, so ``torch.manual_seed`` repeats a run. The epoch counts iterations and
    can be set, as with ``DistributedSampler.set_epoch``."""

    def __init__(self, seed: int | None) -> None:
        self.seed = seed
        self.epoch = 0
        self.enabled = True
        self._loader_seed: int | None = None

    def set_seed(self, seed: int) -> Seeded:
        self._loader_seed = seed
        return self

    def set_shuffle(self, shuffle: bool = True) -> Seeded:
        """``DataLoader(shuffle=False)`` turns shuffling off through this."""
        self.enabled = shuffle
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _epoch_rng(self) -> random.Random:
        seed = self.seed if self.seed is not None else self._loader_seed
        if seed is None:
            seed = int(torch.empty((), dtype=torch.int64).random_().item())
        self._loader_seed = None  # a loader's seed is for one epoch, as in torch's Shuffler
        rng = random.Random(f"s3pipes/{seed}/{self.epoch}")  # str seeds hash the same in every process
        self.epoch += 1
        return rng
