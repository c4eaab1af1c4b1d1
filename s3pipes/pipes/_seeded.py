"""The order of a shuffling pipe: a function of (seed, epoch), agreed by every worker and rank."""

from __future__ import annotations

import hashlib
import random
from typing import Any, TypedDict

import torch

from ._state import P, Resumable, T


class Order(TypedDict):
    """The part of a shuffler's position that fixes its order."""

    epoch: int
    seed: int


class Seeded(Resumable[P, T]):
    """Base of the shufflers. The order of an epoch is a function of (seed, epoch), whatever the number
    of workers. The seed is, in order:

    - the ``seed`` given by the user; the epoch then counts the iterations of this object (call
      ``set_epoch`` each epoch where workers get a fresh copy, as with ``DistributedSampler``);
    - the one the DataLoader hands every worker and rank through ``set_seed``: a new shared seed each
      DataLoader epoch, drawn from torch's RNG. The epoch is then the one ``set_epoch`` gave (0 if none),
      as torch's ``RandomSampler`` does: ``torch.manual_seed`` before each epoch repeats the order;
    - else a draw from torch's RNG at each iteration.

    The position records the epoch's seed: StatefulDataLoader hands resumed workers another shared
    seed than the one they started the epoch with, and a resumed epoch must keep its order."""

    def __init__(self, seed: int | None) -> None:
        self.seed = seed
        self.enabled = True
        self._loader_seed: int | None = None
        self._given_epoch = 0

    def set_seed(self, seed: int) -> Seeded[P, T]:
        self._loader_seed = seed
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = self._given_epoch = epoch

    def set_shuffle(self, shuffle: bool = True) -> Seeded[P, T]:
        """``DataLoader(shuffle=False)`` turns shuffling off through this."""
        self.enabled = shuffle
        return self

    def _order(self) -> Order:
        """The (epoch, seed) of the epoch beginning now."""
        if self.seed is not None:
            return {"epoch": self.epoch, "seed": self.seed}
        if self._loader_seed is not None:
            # Not this object's count of iterations: workers that are not persistent get a fresh copy
            # each epoch, and the order must not depend on how many workers there are.
            return {"epoch": self._given_epoch, "seed": self._loader_seed}
        return {"epoch": self.epoch, "seed": int(torch.empty((), dtype=torch.int64).random_().item())}

    @staticmethod
    def _rng(order: Any) -> random.Random:
        return random.Random(_key(order))  # str seeds hash alike everywhere

    @staticmethod
    def _permutation(order: Any, n: int) -> torch.Tensor:
        """A permutation of ``range(n)`` fixed by ``order``: torch's ``randperm`` makes a million in 40 ms,
        where ``random.shuffle`` takes a second (the first sample over a million shards waits for it)."""
        seed = int.from_bytes(hashlib.blake2b(_key(order).encode(), digest_size=8).digest(), "little") >> 1
        return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def _key(order: Any) -> str:
    return f"s3pipes/{order['seed']}/{order['epoch']}"
