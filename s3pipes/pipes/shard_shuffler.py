"""ShardShuffler: URLs in, the same URLs in a per-epoch order agreed everywhere."""

from __future__ import annotations

from collections.abc import Sized
from typing import Any, Iterator, TypeVar

from torch.utils.data import IterDataPipe
from torch.utils.data.datapipes._decorator import functional_datapipe

from ._seeded import Seeded
from ._state import ENDED

T = TypeVar("T")


@functional_datapipe("shuffle_shards")
class ShardShuffler(Seeded, IterDataPipe[T]):
    """Shuffles the whole list of shards (or objects) once per epoch (functional name: ``shuffle_shards``).

    Every DataLoader worker and ``torch.distributed`` rank computes the same order, so ``read_s3``
    after it splits the shards without overlap. See :class:`~s3pipes.pipes._seeded.Seeded` for where
    the seed comes from; with an explicit ``seed``, call ``set_epoch`` each epoch as with
    ``DistributedSampler``.

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

    def __iter__(self) -> Iterator[T]:
        record = self._begin()
        if record is None:
            return self._ended()
        self._pos = {**record, "yielded": record.get("yielded", 0)}
        return self._run(record)

    def _run(self, record: dict[str, Any]) -> Iterator[T]:
        items = list(self.source_datapipe)
        if self.enabled:
            self._rng(record).shuffle(items)
        done = record.get("yielded", 0)
        for item in items[done:]:
            done += 1
            self._pos = {**record, "yielded": done}
            yield item
        self._pos = ENDED

    def __len__(self) -> int:
        if isinstance(self.source_datapipe, Sized):
            return len(self.source_datapipe)
        raise TypeError(f"{type(self).__name__}'s length depends on a source without one")
