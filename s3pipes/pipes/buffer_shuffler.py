"""BufferShuffler: samples in, the same samples shuffled through a bounded buffer."""

from __future__ import annotations

from collections.abc import Sized
from typing import Iterator, TypeVar

from torch.utils.data import IterDataPipe
from torch.utils.data.datapipes._decorator import functional_datapipe

from ._seeded import Seeded

T = TypeVar("T")


@functional_datapipe("shuffle_buffer")
class BufferShuffler(Seeded, IterDataPipe[T]):
    """Shuffles samples through a buffer of ``buffer_size`` (functional name: ``shuffle_buffer``):
    each incoming sample replaces a random one of the buffer, which is yielded. The order is fixed by
    the seed and epoch (see :class:`~s3pipes.pipes._seeded.Seeded`); memory is ``buffer_size`` samples.

    Example:
        >>> from torch.utils.data.datapipes.iter import IterableWrapper
        >>> import s3pipes
        >>> dp = IterableWrapper(range(10)).shuffle_buffer(4, seed=1)
        >>> sorted(dp) == list(range(10))
        True
    """

    def __init__(self, source_datapipe: IterDataPipe[T], buffer_size: int = 10_000, seed: int | None = None) -> None:
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be at least 1, got {buffer_size}")
        Seeded.__init__(self, seed)
        self.source_datapipe = source_datapipe
        self.buffer_size = buffer_size

    def __iter__(self) -> Iterator[T]:
        if not self.enabled:
            yield from self.source_datapipe
            return
        rng = self._epoch_rng()
        buffer: list[T] = []
        for item in self.source_datapipe:
            if len(buffer) < self.buffer_size:
                buffer.append(item)
                continue
            i = rng.randrange(self.buffer_size)
            yield buffer[i]
            buffer[i] = item
        rng.shuffle(buffer)
        yield from buffer

    def __len__(self) -> int:
        if isinstance(self.source_datapipe, Sized):
            return len(self.source_datapipe)
        raise TypeError(f"{type(self).__name__}'s length depends on a source without one")
