"""TarSamples: random access to the samples inside the uncompressed tar shards of an indexed prefix."""

from __future__ import annotations

import bisect
import itertools
import operator
from typing import Any, Sequence

from torch.utils.data import Dataset

from ._concurrent import imap
from .config import S3Config
from .errors import ObjectChangedError, StaleIndexError
from .index import INDEX_NAME, find_index
from .index.format import Member
from ._names import split_name
from .pipes.grouper import add_member
from .pipes.lister import matches
from .stores import Store, client_for

# Neighbouring samples of one shard closer than this are fetched by one GET: a request costs more round
# trip than 64 KiB of unwanted bytes takes to arrive.
_GAP = 64 << 10
# ...unless the GET would grow past this: longer spans arrive sooner as several GETs in flight.
_MOST = 8 << 20

Span = tuple[int, int, int]  # (shard number, first byte, end byte)


class TarSamples(Dataset[dict[str, Any]]):
    """Map-style: ``ds[i]`` is the i-th sample of the uncompressed tar shards under ``prefix``, the dict
    ``read_s3().load_tar().group_samples()`` yields for it (``{"__key__", "__url__", ext: bytes...}``),
    fetched by one ranged GET from its first member's data to its last member's end (the tar headers
    between its members come along and are skipped). With ``DistributedSampler`` (or any sampler) this
    is a global shuffle of samples, not of shards. A DataLoader with ``batch_size`` calls
    ``__getitems__``, which fetches a batch with ``concurrency`` GETs in flight and one GET for
    neighbours in the same shard.

    It needs the prefix's index (``s3pipes index <prefix>`` or :func:`~s3pipes.build_index`), read once
    here: the index gives every member's offsets. Every GET is pinned to the shard's indexed ETag (where
    the store has none, its size is checked first), so a shard replaced, resized or deleted since it was
    indexed raises :class:`~s3pipes.StaleIndexError` naming it, never other bytes. The dataset pickles
    to DataLoader workers as the index and config; each process makes its own client.

    Args:
        prefix: an indexed prefix (``s3://bucket/train/``, a local directory, ``memory://``...).
        masks: glob patterns matched against each shard's file name (``"*.tar"``), any may match (default
            ``()``: every object in the index). Every shard kept must be an uncompressed tar: a compressed
            tar or zip has no member offsets, and a plain object is no tar (use ``S3Dataset``).
        concurrency: GETs in flight in ``__getitems__`` (default 32).
        config: how to reach S3 (default ``None``: read from the environment).

    Example:
        >>> import fsspec, io, tarfile
        >>> import s3pipes
        >>> buf = io.BytesIO()
        >>> with tarfile.open(fileobj=buf, mode="w") as t:
        ...     for name, data in [("s0.cls", b"0"), ("s0.png", b"P0"), ("s1.cls", b"1"), ("s1.png", b"P1")]:
        ...         info = tarfile.TarInfo(name); info.size = len(data); t.addfile(info, io.BytesIO(data))
        >>> fsspec.filesystem("memory").pipe("/samples-doc/shard-0.tar", buf.getvalue())
        >>> _ = s3pipes.build_index("memory://samples-doc/")
        >>> ds = s3pipes.TarSamples("memory://samples-doc/")  # or s3://bucket/train/
        >>> len(ds), ds[-1]
        (2, {'__key__': 's1', '__url__': 'memory://samples-doc/shard-0.tar', 'cls': b'1', 'png': b'P1'})
        >>> [s["cls"] for s in ds.__getitems__([1, 0])]  # what a DataLoader with batch_size calls
        [b'1', b'0']
    """

    def __init__(self, prefix: str, *, masks: str | Sequence[str] = (), concurrency: int = 32,
                 config: S3Config | None = None) -> None:
        index = find_index(prefix, config)
        if index is None:
            raise FileNotFoundError(f"{prefix}: no index ({INDEX_NAME}) to find samples by; build it with "
                                    f"`s3pipes index {prefix}` (or s3pipes.build_index)")
        masks = [masks] if isinstance(masks, str) else list(masks)
        self.shards = tuple(s for s in index if matches(s.url, masks))
        if not self.shards:
            raise FileNotFoundError(f"{prefix}: no shard in its index matches {masks}; check the masks")
        for s in self.shards:
            if s.offsets is None:
                what = ("not a tar (S3Dataset reads plain objects)" if s.kind == "object" else
                        f"a {s.kind} shard, whose members have no byte offsets to fetch by range")
                raise ValueError(f"{s.url}: {what}; TarSamples reads uncompressed tar shards: pass "
                                 f"masks='*.tar' to leave it out")
        self.prefix, self.config, self.concurrency = index.prefix, config, concurrency
        self._ends = list(itertools.accumulate(s.samples for s in self.shards))  # samples up to each shard's end
        self._store: Store | None = None
        self._starts: dict[int, list[int]] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Workers get the index and config and make their own client: clients hold per-process state.
        return {**self.__dict__, "_store": None, "_starts": {}}

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def __getitem__(self, idx: int) -> dict[str, Any]:
        where = self._locate(idx)
        span = self._span(*where)
        return self._sample(*where, self._read(span), span[1])

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """The samples at ``indices``, in that order: neighbours in one shard (less than 64 KiB apart)
        share a GET, and up to ``concurrency`` GETs are in flight."""
        wanted = [self._locate(i) for i in indices]
        runs: list[tuple[Span, list[int]]] = []  # a GET, and the samples of its shard it covers
        for n, j in sorted(set(wanted)):
            _, start, end = self._span(n, j)
            if runs and runs[-1][0][0] == n and start - runs[-1][0][2] < _GAP and end - runs[-1][0][1] <= _MOST:
                (_, first, last), js = runs[-1]
                runs[-1] = ((n, first, max(last, end)), [*js, j])
            else:
                runs.append(((n, start, end), [j]))
        got = {}
        for (span, js), data in imap(lambda run: self._read(run[0]), runs, self.concurrency, ordered=False):
            for j in js:
                got[span[0], j] = self._sample(span[0], j, data, span[1])
        return [got[w] for w in wanted]

    def _locate(self, idx: int) -> tuple[int, int]:
        """(shard number, sample number in it) of sample ``idx``, counted from the end when negative."""
        i = operator.index(idx)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"TarSamples index {idx} out of range for {len(self)} samples")
        n = bisect.bisect_right(self._ends, i)
        return n, i - (self._ends[n - 1] if n else 0)

    def _members(self, n: int, j: int) -> list[Member]:
        """The members of sample ``j`` of shard ``n`` that ``group_samples`` files under an extension."""
        shard = self.shards[n]
        if n not in self._starts:
            self._starts[n] = shard.sample_starts()
        starts = self._starts[n]
        run = shard.offsets[starts[j] : starts[j + 1] if j + 1 < len(starts) else None]  # type: ignore[index]
        return [m for m in run if split_name(m[0])[2]]

    def _span(self, n: int, j: int) -> Span:
        members = self._members(n, j)
        return n, members[0][2], members[-1][2] + members[-1][3]

    def _sample(self, n: int, j: int, data: bytes, base: int) -> dict[str, Any]:
        """Sample ``j`` of shard ``n`` cut out of ``data``, the shard's bytes from ``base`` on."""
        url, members = self.shards[n].url, self._members(n, j)
        where, key, _ = split_name(f"{url}/{members[0][0]}")
        sample: dict[str, Any] = {"__key__": key, "__url__": where}
        for name, _, offset, size in members:
            add_member(sample, f"{url}/{name}", split_name(name)[2], data[offset - base : offset - base + size])
        return sample

    @property
    def _client(self) -> Store:
        """This process's client for the prefix, made on first use."""
        if self._store is None:
            self._store = client_for(self.prefix, self.config)
        return self._store

    def _read(self, span: Span) -> bytes:
        """Bytes ``[start, end)`` of shard ``n`` as it was indexed, or :class:`StaleIndexError`."""
        n, start, end = span
        shard = self.shards[n]
        try:
            if shard.etag is None:  # nothing to pin the GET to (fsspec files): check the size at least
                shard.check(self._client.size(shard.url), None)
            data = self._client.read_range(shard.url, start, end, shard.etag)
        except StaleIndexError:
            raise
        except ObjectChangedError as e:
            raise shard.stale("it changed since it was indexed") from e
        except FileNotFoundError as e:
            raise shard.stale("it is gone") from e
        if len(data) != end - start:
            raise shard.stale(f"it ends before byte {end}")
        return data
