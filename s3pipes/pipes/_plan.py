"""With an index, each reader's share of an epoch is counted in samples, not shards.

The samples of the epoch's shard order are laid end to end; the first ``N - N % ranks`` are cut into
one contiguous run per rank (at most ``ranks - 1`` samples of the epoch are left out, so DDP never
waits for a rank that ran out) and each rank's run into one per DataLoader worker. A run starts and ends
where samples do, so a shard may be split between readers: a :class:`Part` says which of its members a
reader takes, and, for an uncompressed tar, the bytes that hold them (one ranged GET). Every rank and
worker computes the same cut from the same order, so the parts cover each kept sample exactly once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

import torch

if TYPE_CHECKING:  # the index's scanner reads tars with this package's reader
    from ..index.format import Shard
    from ._state import Positions
    from .lister import Listing

TAR_KINDS = ("tar", "tar.gz", "object")  # what can be split by member; zips are read whole, without a plan
_BLOCK = 512


class Part(str):
    """A shard URL (equal to it as a string) that says which of its regular members to yield: ``count``
    of them after the first ``skip`` of the bytes fetched, which are ``[start, end)`` (``end=None``: the
    whole object). ``first`` is the index of its first member in the shard, ``resumed`` how many of the
    part's members a restart had already delivered (and so did not fetch)."""

    shard: Shard
    first: int
    count: int
    skip: int
    start: int
    end: int | None
    resumed: int

    def __new__(cls, shard: Shard, first: int, count: int, resumed: int = 0) -> Part:
        part = super().__new__(cls, shard.url)
        part.shard, part.first, part.count, part.resumed = shard, first, count, resumed
        whole = first == 0 and count == shard.members and not resumed
        offsets = shard.offsets
        if whole or not offsets:  # a compressed tar is read from its start: skip the members before
            part.skip, part.start, part.end = first + resumed, 0, None
        else:
            last = offsets[first + count - 1]
            part.skip, part.start = 0, offsets[first + resumed][1]
            part.end = min(shard.size, last[2] + -(-last[3] // _BLOCK) * _BLOCK)
        return part

    def __reduce__(self) -> Any:
        return Part, (self.shard, self.first, self.count, self.resumed)

    def resume(self, delivered: int) -> Part:
        """The same part after a restart that had delivered ``delivered`` of its members."""
        return Part(self.shard, self.first, self.count, delivered)

    @property
    def whole(self) -> bool:
        return self.end is None and self.skip == 0 and self.count == self.shard.members


class Epoch:
    """The shards of an epoch planned by samples: their positions in the listing, in the epoch's order,
    and where each one's samples end when they are laid end to end."""

    def __init__(self, listing: Listing, positions: Positions) -> None:
        self.listing, self.positions = listing, positions
        # In torch: a million shards' sums in Python cost half a second of the first sample.
        at = (positions if isinstance(positions, torch.Tensor) else
              torch.arange(len(positions)) if positions == range(len(positions)) else torch.tensor(positions))
        self.ends = torch.cumsum(listing.samples()[at], 0)

    @classmethod
    def of(cls, listing: Listing | None, urls: list[str], positions: Positions | None = None) -> Epoch | None:
        """The plan of an epoch that reads ``urls`` in this order (``positions``: where each is in the
        listing, if known), if every one is an indexed shard that can be split by member, else ``None``."""
        kinds = listing.kinds() if listing is not None else set()
        if listing is None or not kinds or not kinds <= set(TAR_KINDS):
            return None
        if positions is None or len(positions) != len(urls):
            positions = listing.positions(urls)
        return cls(listing, positions) if positions is not None and len(positions) else None

    @property
    def total(self) -> int:
        """The epoch's samples."""
        return int(self.ends[-1]) if len(self.ends) else 0

    def parts(self, lo: int, hi: int) -> Iterator[tuple[int, Part]]:
        """``(position in the epoch, part)`` for each shard holding samples of the run ``[lo, hi)``, made as
        they are reached (a million shards' parts up front would delay the first sample by seconds)."""
        for i in range(int(torch.searchsorted(self.ends, lo, right=True)), len(self.ends)):
            shard, end = self.listing.shard(int(self.positions[i])), int(self.ends[i])
            n = shard.samples
            a, b = max(lo - end + n, 0), min(hi - end + n, n)
            if a == 0 and b == n and n:
                yield i, Part(shard, 0, shard.members)  # the whole shard: no need to know where samples start
            elif a < b:
                starts = shard.sample_starts()
                first = starts[a] if a else 0  # from member 0: members before the first sample go along
                last = starts[b] if b < n else shard.members
                yield i, Part(shard, first, last - first)
            if end >= hi:
                break


def cut(total: int, ranks: int, workers: int, rank: int, worker: int, even: bool) -> tuple[int, int]:
    """The run ``[lo, hi)`` of the epoch's ``total`` samples that worker ``worker`` of rank ``rank`` reads."""
    keep = total - total % ranks if even else total
    lo, hi = rank * keep // ranks, (rank + 1) * keep // ranks
    return lo + worker * (hi - lo) // workers, lo + (worker + 1) * (hi - lo) // workers


def members_per_sample(listing: Listing) -> int | None:
    """The members of every sample if all samples of the listing have as many (then a run's members are
    known without its order), else ``None``."""
    pairs = set(zip(listing.column("members"), listing.column("samples")))
    ratios = {m // n if n and not m % n else -1 for m, n in pairs if n or m}
    return ratios.pop() if len(ratios) == 1 and -1 not in ratios else None


def planned(pipe: Any, what: str) -> int:
    """``planned(what)`` of the ``read_s3`` a pipe reads from (through ``source_datapipe``)."""
    source = pipe.source_datapipe
    while not hasattr(source, "planned"):
        source = getattr(source, "source_datapipe", None)
        if source is None:
            raise TypeError(f"{type(pipe).__name__}'s length is known only after read_s3 over an indexed prefix")
    return source.planned(what)
