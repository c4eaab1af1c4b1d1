"""TupleMaker: samples in, a tuple of some of their fields out, ready for a DataLoader to batch."""

from __future__ import annotations

from typing import Any

from torch.utils.data import IterDataPipe
from torch.utils.data.datapipes._decorator import functional_datapipe

from ._per_sample import PerSample, naming


@functional_datapipe("to_tuple")
class TupleMaker(PerSample[tuple[Any, ...]]):
    """Picks fields of each sample into a tuple (functional name: ``to_tuple``), as webdataset's
    ``.to_tuple()`` does: ``to_tuple("jpg;png", "cls")`` gives ``(image, label)``, so that
    ``DataLoader(dp, batch_size=N)`` batches the images into one tensor and the labels into another.

    A field may list alternatives separated by ``;``: the first one the sample has is taken. A sample
    with none of them raises ``KeyError`` naming the shard, the sample and the fields it has. Names are
    matched as ``group_samples`` files them (``seg.png``, ``__key__``), exactly. ``len()`` is the source's.

    Args:
        source_datapipe: samples, the dicts ``group_samples()`` (usually then ``decode()``) yields.
        fields: one name per place of the tuple, each ``"a"`` or ``"a;b;..."``; at least one.

    Example:
        >>> from torch.utils.data.datapipes.iter import IterableWrapper
        >>> import s3pipes
        >>> samples = [{"__key__": "s0", "png": "P", "cls": 3}, {"__key__": "s1", "jpg": "J", "cls": 4}]
        >>> list(IterableWrapper(samples).to_tuple("jpg;png", "cls"))
        [('P', 3), ('J', 4)]
    """

    def __init__(self, source_datapipe: IterDataPipe[dict[str, Any]], *fields: str) -> None:
        if not fields:
            raise ValueError("to_tuple() needs the fields to pick, e.g. to_tuple('jpg;png', 'cls')")
        self.source_datapipe = source_datapipe
        self.fields = [tuple(field.split(";")) for field in fields]
        if any("" in names for names in self.fields):
            raise ValueError(f"to_tuple{fields!r}: an empty field name; separate alternatives with ';' only")

    def _apply(self, sample: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(self._pick(sample, names) for names in self.fields)

    @staticmethod
    def _pick(sample: dict[str, Any], names: tuple[str, ...]) -> Any:
        for name in names:
            if name in sample:
                return sample[name]
        has = ", ".join(repr(k) for k in sample if not k.startswith("__")) or "no fields"
        wanted = " or ".join(repr(n) for n in names)
        raise KeyError(f"{naming(sample)} has no {wanted} field (it has {has}); name one it has in "
                       f"to_tuple(), or leave samples without it out before (.filter)")
