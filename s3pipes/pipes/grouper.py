"""SampleGrouper: archive members in, one dict per sample out."""

from __future__ import annotations

from typing import Any, Iterator, TypedDict

from torch.utils.data import IterDataPipe
from torch.utils.data.datapipes._decorator import functional_datapipe

from .._names import split_name
from ._plan import planned
from ._state import Cursor, Mark, Resumable


def add_member(sample: dict[str, Any], name: str, ext: str, data: Any) -> None:
    """File member ``name``'s ``data`` under ``ext`` in ``sample``; a repeated extension is an error."""
    if ext in sample:
        raise ValueError(f"{name}: sample {sample['__key__']!r} already has a {ext!r} member; members of one "
                         f"sample must be consecutive and distinct")
    sample[ext] = data


class GroupPos(TypedDict):
    epoch: int
    source: Mark | None  # the first member of the next sample


@functional_datapipe("group_samples")
class SampleGrouper(Resumable[GroupPos, dict[str, Any]], IterDataPipe[dict[str, Any]]):
    """Groups consecutive ``(name, bytes)`` members that share a basename into one sample
    (functional name: ``group_samples``), as webdataset shards are laid out: ``s00013.cls`` and
    ``s00013.png`` become ``{"__key__": "s00013", "__url__": <shard>, "cls": b"3", "png": b"..."}``.

    The extension is everything after the first dot of the file name; a member without one
    (``_something_``, ``README``) is skipped, neither a sample nor a break in one. Pairing by name
    rather than by position keeps labels with their images whatever the member order inside a
    sample. Group before any sample shuffling: a repeated extension within one key raises ``ValueError``.

    Args:
        source_datapipe: ``(shard/member, bytes)`` archive members in archive order, as ``load_tar`` and
            ``load_zip`` yield them.

    Example:
        >>> from torch.utils.data.datapipes.iter import IterableWrapper
        >>> import s3pipes
        >>> members = [("s3://b/s.tar/s0.png", b"P"), ("s3://b/s.tar/s0.cls", b"3")]
        >>> list(IterableWrapper(members).group_samples())
        [{'__key__': 's0', '__url__': 's3://b/s.tar', 'png': b'P', 'cls': b'3'}]
    """

    def __init__(self, source_datapipe: IterDataPipe[tuple[str, Any]]) -> None:
        self.source_datapipe = source_datapipe

    def __len__(self) -> int:
        """The samples this pipe yields in an epoch, here (a DataLoader worker's share, or in the main
        process a rank's): known from the prefix's index, else ``TypeError``."""
        return planned(self, "samples")

    def _begin(self) -> GroupPos:
        return {"epoch": self.epoch, "source": None}

    def _run(self, start: GroupPos, src: Cursor) -> Iterator[dict[str, Any]]:
        before = start  # where the member just pulled came from: a sample is resumed from its first member
        sample: dict[str, Any] | None = None
        for name, data in src:
            where, key, ext = split_name(name)
            if not ext:  # no extension, no field to file it under (webdataset skips these too): pass over it
                before = {**start, "source": src.mark()}
                continue
            if sample is None or (sample["__url__"], sample["__key__"]) != (where, key):
                if sample is not None:
                    self._pos = before
                    yield sample
                sample = {"__key__": key, "__url__": where}
            add_member(sample, name, ext, data)
            before = {**start, "source": src.mark()}
        if sample is not None:
            self._pos = {**start, "source": src.mark()}
            yield sample
