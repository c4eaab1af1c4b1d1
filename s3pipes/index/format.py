"""The index of a prefix: one object, ``_s3pipes_index.jsonl.gz``, beside the shards it describes.

Why gzip'd JSON lines: every tool reads it (``zcat index | head``, ``jq``), it needs no extra dependency
(Parquet would make pyarrow a requirement of every user), member names compress about tenfold, and it is
loaded with one GET and one ``json.loads`` of the whole text (the lines joined into one array), which
parses a million shards in well under a second. The first line describes the index; each further line is
one shard::

    {"format": "s3pipes-index", "version": 1, "prefix": "s3://b/train/", "shards": 2}
    {"key": "shard-000.tar", "size": 40960, "etag": "\\"9a0...\\"", "kind": "tar", "members": 20,
     "samples": 10, "offsets": [["s0.png", 0, 512, 1234], ...]}

``offsets`` (uncompressed tars only) gives each regular member's name, the offset of its header (where a
tar stream may start), the offset of its data and its size. A compressed tar records ``starts``, the
member each sample begins with, instead: an offset into a compressed stream cannot start a ranged GET.
Zips record counts only.
"""

from __future__ import annotations

import gc
import gzip
import json
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, NamedTuple

from ..errors import StaleIndexError
from .._names import split_name

INDEX_NAME = "_s3pipes_index.jsonl.gz"
FORMAT, VERSION = "s3pipes-index", 1

Member = tuple[str, int, int, int]  # (name in the archive, header offset, data offset, size)


class Shard(NamedTuple):
    """One object of an indexed prefix. (A named tuple: a frozen dataclass took 2 s more to load a
    million of them.)"""

    url: str
    size: int
    etag: str | None
    kind: str  # "tar", "tar.gz" (any compressed tar), "zip" or "object"
    members: int  # items load_tar / load_zip yield for it (1 for a plain object)
    samples: int  # samples group_samples makes of them
    offsets: tuple[Member, ...] | None = None  # uncompressed tars only
    starts: tuple[int, ...] | None = None  # compressed tars: the member each sample begins with

    def sample_starts(self) -> list[int]:
        """The index of each sample's first member among the shard's members (members without an
        extension, which ``group_samples`` passes over, belong to no sample)."""
        if self.offsets is not None:
            return sample_starts([m[0] for m in self.offsets])
        return list(self.starts) if self.starts is not None else list(range(self.samples))

    def stale(self, why: str) -> StaleIndexError:
        prefix = self.url.rsplit("/", 1)[0] + "/"
        return StaleIndexError(f"{self.url}: the index of {prefix} is stale ({why}); rebuild it with "
                               f"`s3pipes index {prefix}` (or s3pipes.build_index), or delete "
                               f"{prefix}{INDEX_NAME} to list the prefix instead")

    def check(self, size: int | None, etag: str | None) -> None:
        """Raise :class:`StaleIndexError` if the object read is not the one indexed."""
        if size is not None and size != self.size:
            raise self.stale(f"it is {size} bytes now, {self.size} when indexed")
        if etag and self.etag and etag != self.etag:
            raise self.stale(f"its ETag is {etag} now, {self.etag} when indexed")


def sample_starts(names: Iterable[str]) -> list[int]:
    starts, last = [], None
    for i, name in enumerate(names):
        where, key, ext = split_name(name)
        if ext and (where, key) != last:
            starts.append(i)
            last = (where, key)
    return starts


def count_samples(names: Iterable[str]) -> int:
    """How many samples ``group_samples`` makes of members with these names, in this order."""
    return len(sample_starts(names))


@dataclass(frozen=True)
class Index:
    """The shards of one prefix, in key order."""

    prefix: str
    shards: tuple[Shard, ...]

    @property
    def url(self) -> str:
        return index_url(self.prefix)

    def dumps(self) -> bytes:
        """The index object's bytes."""
        lines = [json.dumps({"format": FORMAT, "version": VERSION, "prefix": self.prefix, "shards": len(self.shards)})]
        base = len(self.prefix)
        for s in self.shards:
            row: dict[str, Any] = {"key": s.url[base:], "size": s.size, "etag": s.etag, "kind": s.kind,
                                   "members": s.members, "samples": s.samples}
            if s.offsets is not None:
                row["offsets"] = s.offsets
            if s.starts is not None:
                row["starts"] = s.starts
            lines.append(json.dumps(row, separators=(",", ":")))
        return gzip.compress(("\n".join(lines) + "\n").encode(), compresslevel=6)

    @classmethod
    def loads(cls, data: bytes, prefix: str) -> Index:
        """Read the bytes of the index of ``prefix`` (shard URLs are made under ``prefix`` as given,
        so an index read through another spelling of the prefix names shards as the reader does)."""
        text = gzip.decompress(data).decode()
        head, _, body = text.partition("\n")
        meta = json.loads(head)
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ValueError(f"{index_url(prefix)}: not an s3pipes index of version {VERSION} "
                             f"(header {head[:100]!r}); rebuild it with `s3pipes index {prefix}`")
        with _collector_paused():
            rows = json.loads("[" + body.rstrip("\n").replace("\n", ",") + "]") if body.strip() else []
            shards = tuple(
                Shard(prefix + r["key"], r["size"], r["etag"], r["kind"], r["members"], r["samples"],
                      tuple(map(tuple, r["offsets"])) if "offsets" in r else None,  # type: ignore[arg-type]
                      tuple(r["starts"]) if "starts" in r else None)
                for r in rows)
        if len(shards) != meta.get("shards"):
            raise ValueError(f"{index_url(prefix)}: holds {len(shards)} shards, its header says "
                             f"{meta.get('shards')} (cut short?); rebuild it with `s3pipes index {prefix}`")
        return cls(prefix, shards)

    def __iter__(self) -> Iterator[Shard]:
        return iter(self.shards)

    def __len__(self) -> int:
        return len(self.shards)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off: a million shards (and their rows) are new objects that hold
    no cycles, and the collector would otherwise walk the growing heap again and again while they are
    made, which costs a third of the time ``loads`` takes (5.5 s of CPU for 1M shards, 3.5 s without)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def as_prefix(url: str) -> str:
    """``url`` ending in ``/``: the prefix an index describes."""
    return url if url.endswith("/") else url + "/"


def index_url(prefix: str) -> str:
    return as_prefix(prefix) + INDEX_NAME
