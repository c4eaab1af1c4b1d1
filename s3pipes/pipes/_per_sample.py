"""What the per-sample pipes (``decode``, ``to_tuple``) share: one sample out per sample in, resumable
by the source's mark alone, and how their errors name a sample."""

from __future__ import annotations

from collections.abc import Sized
from typing import Any, Iterator, TypedDict, TypeVar

from torch.utils.data import IterDataPipe

from ._state import Cursor, Mark, Resumable

T = TypeVar("T")
DROPPED: Any = object()  # what ``_apply`` returns for a sample to leave out


class PerSamplePos(TypedDict):
    epoch: int
    source: Mark | None  # after the last sample taken from the source


def naming(sample: dict[str, Any], field: str | None = None) -> str:
    """How an error names ``sample``, or its member ``field``: by the shard (where the archive pipes
    found it) and the name in it, ``s3://b/s.tar: member 's0.jpg'`` or ``s3://b/s.tar: sample 's0'``."""
    key = sample.get("__key__", "?")
    what = f"member {f'{key}.{field}'!r}" if field else f"sample {key!r}"
    return f"{sample['__url__']}: {what}" if sample.get("__url__") else what


class PerSample(Resumable[PerSamplePos, T], IterDataPipe[T]):
    """Base of the per-sample pipes: :meth:`_apply` to each sample dict of the source. Nothing is held
    between samples, so a position is the source's mark after the sample last taken, and a resumed
    epoch goes on with the next one; ``len()`` is the source's."""

    source_datapipe: IterDataPipe[dict[str, Any]]

    def _apply(self, sample: dict[str, Any]) -> T:
        """The item for ``sample``, or ``DROPPED`` to leave it out."""
        raise NotImplementedError

    def _begin(self) -> PerSamplePos:
        return {"epoch": self.epoch, "source": None}

    def _run(self, start: PerSamplePos, src: Cursor) -> Iterator[T]:
        for sample in src:
            if not isinstance(sample, dict):
                raise TypeError(f"{type(self).__name__} takes samples, the dicts group_samples() yields; got "
                                f"{type(sample).__name__} {sample!r:.100}: put it after .group_samples()")
            out = self._apply(sample)
            if out is not DROPPED:
                self._pos = {**start, "source": src.mark()}
                yield out

    def __len__(self) -> int:
        if isinstance(self.source_datapipe, Sized):
            return len(self.source_datapipe)
        raise TypeError(f"{type(self).__name__}'s length depends on a source without one")
