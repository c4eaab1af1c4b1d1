"""The index of a prefix: one object, ``_s3pipes_index.jsonl.gz``, beside the shards it describes.

Gzip'd JSON lines, the shards held as columns. The first line describes the index; each of the next six
is one column, a list with an entry per shard in key order; then, in a second gzip member (``zcat``
reads on through it), one line per shard gives what its members are::

    {"format": "s3pipes-index", "version": 2, "prefix": "s3://b/train/", "shards": 2}
    {"key": ["shard-000.tar", "shard-001.tar"]}
    {"size": [40960, 40960]}
    {"etag": ["\\"9a0...\\"", "\\"3b1...\\""]}
    {"kind": ["tar", "tar"]}
    {"members": [20, 20]}
    {"samples": [10, 10]}
    {"offsets": [["s0.png", 0, 512, 1234], ...]}
    {"offsets": [...]}

``offsets`` (uncompressed tars) gives each regular member's name, the offset of its header (where a tar
stream may start), the offset of its data and its size. A compressed tar records ``starts``, the member
each sample begins with, instead: an offset into a compressed stream cannot start a ranged GET. Zips and
plain objects have ``{}``.

Why this form: every tool reads it (``zcat index | head -2 | jq``), it needs no extra dependency (Parquet
would make pyarrow a requirement of every user), member names compress about tenfold, and it is loaded
with one GET. Why columns: the first sample over a million shards waits for the index to load, and a
million rows as JSON objects took 1.8 s to parse and 1.2 s more to make shards of, where the six columns
parse in about 0.5 s. Each column is parsed when first used, and the members of shards (for a tar of many
members, most of the index) are unzipped when a shard's members are first asked for.
"""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

from ..errors import StaleIndexError
from .._names import split_name

INDEX_NAME = "_s3pipes_index.jsonl.gz"
FORMAT, VERSION = "s3pipes-index", 2
COLUMNS = ("key", "size", "etag", "kind", "members", "samples")

Member = tuple[str, int, int, int]  # (name in the archive, header offset, data offset, size)


class Shard(NamedTuple):
    """One object of an indexed prefix."""

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


class Index(Sequence[Shard]):
    """The shards of one prefix, in key order: a sequence of :class:`Shard`, each made when asked for
    (making a million up front cost a second), from columns parsed when first used."""

    def __init__(self, prefix: str, n: int, columns: dict[str, Any], details: Sequence[Any] | bytes) -> None:
        self.prefix, self._n = prefix, n
        self._columns = columns  # name -> list, or the JSON line that holds it until first use
        # per shard: (offsets, starts) or the JSON line that holds them; or all those lines gzip'd, unread
        self._details = details

    @classmethod
    def of(cls, prefix: str, shards: Sequence[Shard]) -> Index:
        """The index of ``shards``, all under ``prefix``."""
        base = len(prefix)
        columns = {name: [s.url[base:] if name == "key" else getattr(s, name) for s in shards] for name in COLUMNS}
        return cls(prefix, len(shards), columns, [(s.offsets, s.starts) for s in shards])

    @property
    def url(self) -> str:
        return index_url(self.prefix)

    def column(self, name: str) -> list[Any]:
        """One column: ``"key"``, ``"size"``, ``"etag"``, ``"kind"``, ``"members"`` or ``"samples"``."""
        col = self._columns[name]
        if isinstance(col, str):
            col = json.loads(col).get(name) if col.startswith("{") else None
            if not isinstance(col, list) or len(col) != self._n:
                raise ValueError(f"{self.url}: its {name!r} column is not a list of {self._n} entries "
                                 f"(cut short?); rebuild it with `s3pipes index {self.prefix}`")
            self._columns[name] = col
        return col

    def urls(self) -> list[str]:
        return [self.prefix + key for key in self.column("key")]

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> Shard:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(f"{self.url}: shard {i} of {len(self)}")
        key, size, etag, kind, members, samples = (self.column(name)[i] for name in COLUMNS)
        return Shard(self.prefix + key, size, etag, kind, members, samples, *self._members(i, kind))

    def _members(self, i: int, kind: str) -> tuple[Any, Any]:
        """Shard ``i``'s (offsets, starts)."""
        if kind not in ("tar", "tar.gz"):  # zips and plain objects have none: nothing to unzip for them
            return None, None
        if isinstance(self._details, bytes):
            try:
                lines = gzip.decompress(self._details).decode().split("\n")
            except (OSError, EOFError, zlib.error, UnicodeDecodeError):
                lines = []  # cut short or damaged: the same error as a wrong count
            if len(lines) != self._n + 1 or lines[-1]:
                raise ValueError(f"{self.url}: holds members of {len(lines) - 1} shards, not {self._n} (cut "
                                 f"short?); rebuild it with `s3pipes index {self.prefix}`")
            self._details = lines[:-1]
        detail = self._details[i]
        if isinstance(detail, str):
            row = json.loads(detail)
            detail = (tuple(map(tuple, row["offsets"])) if "offsets" in row else None,
                      tuple(row["starts"]) if "starts" in row else None)
        return detail  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[Shard]:
        return (self[i] for i in range(len(self)))

    def dumps(self) -> bytes:
        """The index object's bytes."""
        head = [json.dumps({"format": FORMAT, "version": VERSION, "prefix": self.prefix, "shards": len(self)})]
        head += [json.dumps({name: self.column(name)}, separators=(",", ":")) for name in COLUMNS]
        details = []
        for shard in self:
            row = {"offsets": shard.offsets} if shard.offsets is not None else {}
            if shard.starts is not None:
                row["starts"] = shard.starts  # type: ignore[assignment]
            details.append(json.dumps(row, separators=(",", ":")) + "\n")
        return b"".join(gzip.compress(text.encode(), compresslevel=6) for text in ("\n".join(head) + "\n", "".join(details)))

    @classmethod
    def loads(cls, data: bytes, prefix: str) -> Index:
        """Read the bytes of the index of ``prefix`` (shard URLs are made under ``prefix`` as given,
        so an index read through another spelling of the prefix names shards as the reader does)."""
        unzip = zlib.decompressobj(wbits=31)  # gzip: the first member only, the rest when first needed
        try:
            lines = unzip.decompress(data).decode().split("\n")
        except (zlib.error, UnicodeDecodeError) as e:
            raise ValueError(f"{index_url(prefix)}: not a gzip'd s3pipes index ({e}); rebuild it with "
                             f"`s3pipes index {prefix}`") from e
        try:
            meta = json.loads(lines[0])
        except ValueError:
            meta = {}
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ValueError(f"{index_url(prefix)}: not an s3pipes index of version {VERSION} "
                             f"(header {lines[0][:100]!r}); rebuild it with `s3pipes index {prefix}`")
        n = meta.get("shards")
        if (not isinstance(n, int) or len(lines) != len(COLUMNS) + 2 or lines[-1] or not unzip.eof
                or not unzip.unused_data):  # the members' gzip member: cut off if missing
            raise ValueError(f"{index_url(prefix)}: cut short or not as written; rebuild it with "
                             f"`s3pipes index {prefix}`")
        return cls(prefix, n, dict(zip(COLUMNS, lines[1:-1])), unzip.unused_data)


def as_prefix(url: str) -> str:
    """``url`` ending in ``/``: the prefix an index describes."""
    return url if url.endswith("/") else url + "/"


def index_url(prefix: str) -> str:
    return as_prefix(prefix) + INDEX_NAME
