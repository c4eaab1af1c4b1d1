"""ShardShuffler: URLs in, the same URLs in a per-epoch order agreed everywhere."""

from __future__ import annotations

from collections.abc import Sized
from typing import Iterator, TypeVar

import torch
from torch.utils.data import IterDataPipe
from torch.utils.data.datapipes._decorator import functional_datapipe

from ._seeded import Order, Seeded
from ._state import Counted, Cursor, Listed, Mark

T = TypeVar("T")


class ShardOrder(Order):
    source: Mark | None  # the source's start: it is read whole, and again on resume
    yielded: int  # items of the epoch's order yielded so far
    shuffle: str  # how (seed, epoch) became the order: a state saved under another way must not resume


_SHUFFLE = "randperm"  # torch.randperm; before it, random.shuffle (a state without "shuffle")


@functional_datapipe("shuffle_shards")
class ShardShuffler(Listed, Seeded[ShardOrder, T], IterDataPipe[T]):
    """Shuffles the whole list of shards (or objects) once per epoch (functional name: ``shuffle_shards``).

    Every DataLoader worker and ``torch.distributed`` rank computes the same order, so ``read_s3``
    after it splits the shards without overlap. See :class:`~s3pipes.pipes._seeded.Seeded` for where
    the seed comes from; with an explicit ``seed``, call ``set_epoch`` each epoch as with
    ``DistributedSampler``.

    Args:
        source_datapipe: the shard (or object) URLs, usually ``list_s3``; read whole at each epoch.
        seed: the seed of the order (default ``None``: the DataLoader's shared seed, else torch's RNG).

    Example:
        >>> from torch.utils.data.datapipes.iter import IterableWrapper
        >>> import s3pipes
        >>> dp = IterableWrapper([f"s3://b/shard-{i}.tar" for i in range(4)]).shuffle_shards(seed=0)
        >>> sorted(dp) == sorted(dp) == [f"s3://b/shard-{i}.tar" for i in range(4)]
        True
    """

    def __init__(self, source_datapipe: IterDataPipe[T], seed: int | None = None) -> None:
        Seeded.__init__(self, seed)
        self.source_datapipe = source_datapipe

    def _begin(self) -> ShardOrder:
        return {**self._order(), "source": None, "yielded": 0, "shuffle": _SHUFFLE}

    def _run(self, start: ShardOrder, src: Cursor) -> Iterator[T]:
        if self.enabled and start.get("shuffle") != _SHUFFLE:
            raise ValueError("shuffle_shards: this checkpoint was saved by an earlier s3pipes, which put the shards "
                             "in another order for the same seed; resuming it would repeat and skip shards. Resume "
                             "from a checkpoint saved by this version, or start the epoch again")
        items = src.rest()
        known = src.positions()
        if self.enabled:
            order = self._permutation(start, len(items))
            items = list(map(items.__getitem__, order.tolist()))
            if known is not None:  # where each item is in the listing (over the listing's order: the permutation)
                known = order if known == range(len(items)) else torch.as_tensor(known)[order]
        self._counted = Counted(start, items, known)  # type: ignore[arg-type]
        yield from self._counted

    def __len__(self) -> int:
        if isinstance(self.source_datapipe, Sized):
            return len(self.source_datapipe)
        raise TypeError(f"{type(self).__name__}'s length depends on a source without one")
