"""BufferShuffler: samples in, the same samples shuffled through a bounded buffer."""

from __future__ import annotations

from collections.abc import Sized
from typing import Any, Iterator, TypeVar

from torch.utils.data import IterDataPipe
from torch.utils.data.datapipes._decorator import functional_datapipe

from ._seeded import Seeded
from ._state import ENDED, Cursor

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
        self._live: list[Any] | None = None

    def __iter__(self) -> Iterator[T]:
        record = self._begin()
        if record is None:
            return self._ended()
        src = Cursor(self.source_datapipe, record.get("source"))
        rng = self._rng(record)
        if "rng" in record:
            rng.setstate(record["rng"])
        # slot -> sample: StatefulDataLoader sends only the slots that changed since its last snapshot
        buffer: dict[int, T] = dict(record.get("buffer", {}))
        self._live = [record, src, rng, buffer]
        return self._run(record, src, rng, buffer)

    def _run(self, record: dict[str, Any], src: Cursor, rng: Any, buffer: dict[int, T]) -> Iterator[T]:
        size = self.buffer_size if self.enabled else 0
        if not record.get("draining"):
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
            self._live[0] = {**record, "draining": True}  # type: ignore[index]
            order = list(buffer.values())
            rng.shuffle(order)
            buffer.clear()
            buffer.update(enumerate(order))
        while buffer:
            yield buffer.pop(len(buffer) - 1)
        self._live, self._pos = None, ENDED

    def state_dict(self) -> dict[str, Any]:
        if self._live is None or self._resume is not None:
            return super().state_dict()
        record, src, rng, buffer = self._live
        pos = {**record, "source": src.mark(), "rng": rng.getstate(), "buffer": dict(buffer)}
        return {"epoch": self.epoch, "pos": pos}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_live": None}  # a live iteration holds generators, which do not pickle

    def __len__(self) -> int:
        if isinstance(self.source_datapipe, Sized):
            return len(self.source_datapipe)
        raise TypeError(f"{type(self).__name__}'s length depends on a source without one")
