"""BufferShuffler: samples in, the same samples shuffled through a bounded buffer."""

from __future__ import annotations

import random
from collections.abc import Sized
from dataclasses import dataclass
from typing import Any, Iterator, TypeVar

from torch.utils.data import IterDataPipe
from torch.utils.data.datapipes._decorator import functional_datapipe

from ._seeded import Order, Seeded
from ._state import Cursor, Mark

T = TypeVar("T")


class BufferPos(Order):
    source: Mark | None  # where the next sample comes from
    rng: Any  # random.Random's state after the last draw, or None at the start
    buffer: dict[int, Any]  # slot -> sample held
    draining: bool  # the source has ended; the buffer empties in a drawn order


@dataclass
class _Live:
    """The running epoch's changing parts, read when a state is asked for."""

    origin: BufferPos  # the position the run began from, while it is the pipe's position
    start: BufferPos
    src: Cursor
    rng: random.Random
    buffer: dict[int, Any]


@functional_datapipe("shuffle_buffer")
class BufferShuffler(Seeded[BufferPos, T], IterDataPipe[T]):
    """Shuffles samples through a buffer of ``buffer_size`` (functional name: ``shuffle_buffer``):
    each incoming sample replaces a random one of the buffer, which is yielded. The order is fixed by
    the seed and epoch (see :class:`~s3pipes.pipes._seeded.Seeded`); memory is ``buffer_size`` samples.

    Args:
        source_datapipe: the samples to shuffle.
        buffer_size: how many samples the buffer holds (default 10,000); at least 1.
        seed: the seed of the order (default ``None``: the DataLoader's shared seed, else torch's RNG).

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
        self._live: _Live | None = None

    def _begin(self) -> BufferPos:
        return {**self._order(), "source": None, "rng": None, "buffer": {}, "draining": False}

    def _run(self, start: BufferPos, src: Cursor) -> Iterator[T]:
        rng = self._rng(start)
        if start["rng"] is not None:
            rng.setstate(start["rng"])
        # slot -> sample: StatefulDataLoader sends only the slots that changed since its last snapshot
        buffer: dict[int, T] = dict(start["buffer"])
        self._live = _Live(start, start, src, rng, buffer)
        size = self.buffer_size if self.enabled else 0
        if not start["draining"]:
            for item in src:
                if len(buffer) < size:
                    buffer[len(buffer)] = item
                    continue
                if not size:
                    yield item
                    continue
                i = rng.randrange(size)
                out, buffer[i] = buffer[i], item
                yield out
            self._live.start = {**start, "draining": True}
            order = list(buffer.values())
            rng.shuffle(order)
            buffer.clear()
            buffer.update(enumerate(order))
        while buffer:
            yield buffer.pop(len(buffer) - 1)

    def _position(self) -> Any:
        """Built when asked: the buffer changes in place with every sample, and copying it for each
        would cost more than the samples."""
        live = self._live
        if live is None or live.origin is not self._pos:  # not begun, ended, or a run given up on
            return self._pos
        return {**live.start, "source": live.src.mark(), "rng": live.rng.getstate(), "buffer": dict(live.buffer)}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_live": None}  # a live iteration holds generators, which do not pickle

    def __len__(self) -> int:
        if isinstance(self.source_datapipe, Sized):
            return len(self.source_datapipe)
        raise TypeError(f"{type(self).__name__}'s length depends on a source without one")
