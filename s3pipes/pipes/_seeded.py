"""The order of a shuffling pipe: a function of (seed, epoch), agreed by every worker and rank."""

from __future__ import annotations

import random
from typing import Any

import torch

from ._state import ENDED, Epoched


class Seeded(Epoched):
    """Mixin for shufflers. The seed of an epoch is, in order: the ``seed`` given by the user; the one
    the DataLoader hands every worker and rank through ``set_seed`` (one shared seed per epoch); a draw
    from torch's global RNG, so ``torch.manual_seed`` repeats a run. The epoch counts iterations and
    can be set, as with ``DistributedSampler.set_epoch``.

    The state records the epoch's seed: StatefulDataLoader hands resumed workers another shared seed
    than the one they started the epoch with, and a resumed epoch must keep its order."""

    def __init__(self, seed: int | None) -> None:
        self.seed = seed
        self.enabled = True
        self._loader_seed: int | None = None

    def set_seed(self, seed: int) -> Seeded:
        self._loader_seed = seed
        return self

    def set_shuffle(self, shuffle: bool = True) -> Seeded:
        """``DataLoader(shuffle=False)`` turns shuffling off through this."""
        self.enabled = shuffle
        return self

    def _begin(self) -> dict[str, Any] | None:
        """The record of the epoch starting now (``epoch``, ``seed``): the loaded one when resuming;
        ``None`` when the loaded state is a finished epoch. The loader's seed is kept: StatefulDataLoader
        may begin an iteration it then replaces with a loaded state, and the order mixes in the epoch."""
        record = self._take_resume()
        if record == ENDED:
            return None
        if record is None:
            seed = self.seed if self.seed is not None else self._loader_seed
            if seed is None:
                seed = int(torch.empty((), dtype=torch.int64).random_().item())
            record = {"epoch": self.epoch, "seed": seed}
        self.epoch = record["epoch"] + 1
        return record

    @staticmethod
    def _rng(record: dict[str, Any]) -> random.Random:
        return random.Random(f"s3pipes/{record['seed']}/{record['epoch']}")  # str seeds hash alike everywhere
