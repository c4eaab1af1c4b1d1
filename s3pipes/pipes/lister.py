"""S3Lister: prefixes or object URLs in, object URLs out."""

from __future__ import annotations

import fnmatch
import logging
from bisect import bisect_right
from typing import Any, Iterable, Iterator, Sequence, TypedDict

import torch
from torch.utils.data import IterDataPipe, get_worker_info
from torch.utils.data.datapipes._decorator import functional_datapipe
from torch.utils.data.datapipes.iter import IterableWrapper

from .. import _dist
from ..config import S3Config
from ..index import INDEX_NAME, Index, Shard, find_index
from ..s3 import S3Client
from ..s3.usage import process_usage
from ..stores import client_for
from ._state import Counted, Cursor, Listed, Mark, Resumable

log = logging.getLogger(__name__)


def matches(url: str, masks: Sequence[str]) -> bool:
    """Whether the file name of ``url`` matches any of the glob patterns ``masks`` (any does if none)."""
    name = url.rsplit("/", 1)[-1]
    return not masks or any(fnmatch.fnmatchcase(name, m) for m in masks)


class ListPos(TypedDict):
    epoch: int
    source: Mark | None
    yielded: int  # URLs yielded so far


@functional_datapipe("list_s3")
class S3Lister(Listed, Resumable[ListPos, str], IterDataPipe[str]):
    """Lists the objects under each prefix, in key order, fetching pages as they are consumed
    (functional name: ``list_s3``).

    A URL naming an object yields itself; ``s3://b/dir`` with no object of that name lists ``s3://b/dir/``.
    A prefix with no (matching) objects raises ``FileNotFoundError`` naming it. Local directories,
    ``file://``, ``memory://`` and other fsspec URLs are listed recursively the same way.

    Args:
        source_datapipe: prefixes or object URLs (``s3://bucket/prefix/``, ``s3://bucket/key``, local
            paths, ``memory://``...): an ``IterDataPipe`` or iterable of them, or one URL.
        masks: glob patterns matched against each object's file name (``"*.tar"``); any may match
            (default ``()``: every object).
        config: how to reach S3 (default ``None``: read from the environment).

    Example:
        >>> import fsspec
        >>> from torch.utils.data.datapipes.iter import IterableWrapper
        >>> import s3pipes
        >>> fs = fsspec.filesystem("memory")
        >>> for name in ["shard-000.tar", "shard-001.tar", "notes.txt"]:
        ...     fs.pipe(f"/lister-doc/train/{name}", b"x")
        >>> dp = IterableWrapper(["memory://lister-doc/train/"]).list_s3(masks="*.tar")
        >>> list(dp)  # an s3://bucket/train/ prefix lists the same way
        ['memory://lister-doc/train/shard-000.tar', 'memory://lister-doc/train/shard-001.tar']
    """

    def __init__(self, source_datapipe: Iterable[str] | str, masks: str | Sequence[str] = (),
                 config: S3Config | None = None) -> None:
        if isinstance(source_datapipe, str):
            source_datapipe = [source_datapipe]
        if not isinstance(source_datapipe, IterDataPipe):
            source_datapipe = IterableWrapper(source_datapipe, deepcopy=False)
        self.source_datapipe = source_datapipe
        self.masks = [masks] if isinstance(masks, str) else list(masks)
        self.client = S3Client(config)
        self._listing: Listing | None = None

    def set_seed(self, seed: int) -> S3Lister:
        """Takes the listing. The DataLoader calls ``set_seed`` on the pipes of its graph in the main
        process as each iteration begins, before it starts workers (and in persistent workers as later
        epochs begin): the one moment every kind of worker start can inherit from. The seed is unused."""
        if get_worker_info() is None:
            self.listing()
        return self

    def listing(self, per_rank: bool = False) -> Listing:
        """The URLs this pipe yields each epoch, taken once (one GET of each prefix's index where it has
        one, else its LIST pages) and kept: workers get it with the pipe and do not list. Under
        ``torch.distributed``, in the DataLoader's main process, rank 0 takes it and sends it to the
        others (a collective) unless ``per_rank``."""
        if self._listing is None:
            if get_worker_info() is not None:
                log.debug("list_s3: listing in a DataLoader worker: the DataLoader did not reach this pipe "
                          "in its main process (is it inside another dataset?)")
                self._listing = self._take()
            else:
                self._listing = self._take() if per_rank else _dist.from_rank0(self._take)
        return self._listing

    def _take(self) -> Listing:
        before = process_usage()
        listing = self._list()
        log.info("list_s3: %d objects%s: %s", len(listing.urls), " (from the index)" if listing.indexed else "",
                 process_usage() - before)
        return listing

    def _list(self) -> Listing:
        listing = Listing()
        for prefix in self.source_datapipe:
            before = len(listing.urls)
            index = find_index(prefix, self.client.config) if prefix.endswith("/") else None
            if index is not None:
                urls = index.urls()
                rows = [i for i, url in enumerate(urls) if matches(url, self.masks)] if self.masks else None
                listing.add_index(index, urls if rows is None else [urls[i] for i in rows], rows)
            else:
                listing.add([o.url for o in client_for(prefix, self.client.config).list(prefix)
                             if not o.url.endswith("/" + INDEX_NAME) and matches(o.url, self.masks)])
            if len(listing.urls) == before:
                raise FileNotFoundError(f"{prefix}: no objects match {self.masks}; check the prefix and masks")
        return listing

    def _begin(self) -> ListPos:
        return {"epoch": self.epoch, "source": None, "yielded": 0}

    def _source(self, start: ListPos) -> Cursor:
        return Cursor(())  # the listing is taken once and kept

    def _run(self, start: ListPos, src: Cursor) -> Iterator[str]:
        urls = self.listing().urls
        self._counted = Counted(start, urls, range(len(urls)))  # type: ignore[arg-type]
        yield from self._counted

    def __len__(self) -> int:
        return len(self.listing().urls)


class Listing:
    """The URLs a lister yields and, for those under an indexed prefix, their index entries, looked up by
    position in ``urls``. Not a collection on purpose: torch's graph walk (each epoch) pickles the
    collections a pipe holds, and skips other objects."""

    def __init__(self) -> None:
        self.urls: list[str] = []
        self._runs: list[tuple[int, Index, list[int] | None]] = []  # (first position, index, rows kept or None: all)
        self._firsts: list[int] = []  # each run's first position, for bisect
        self._unindexed = 0  # URLs with no index entry
        self._where: dict[str, int] | None = None  # URL -> position, made when first needed
        self._columns: dict[str, list[Any]] = {}
        self._samples: torch.Tensor | None = None
        self._kinds: set[str] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # What is made from the rest is made again where needed: a worker started by spawn gets less to
        # unpickle, and no tensor in shared memory (which is how torch pickles tensors to workers).
        return {**self.__dict__, "_where": None, "_samples": None, "_columns": {}, "_kinds": None}

    def add(self, urls: list[str]) -> None:
        self.urls += urls
        self._unindexed += len(urls)

    def add_index(self, index: Index, urls: list[str], rows: list[int] | None) -> None:
        self._runs.append((len(self.urls), index, rows))
        self._firsts.append(len(self.urls))
        self.urls += urls

    @property
    def indexed(self) -> bool:
        """Whether any URL has an index entry."""
        return bool(self._runs)

    def kinds(self) -> set[str]:
        """The kinds of shard listed, if every URL has an index entry, else an empty set."""
        if self._kinds is None:
            self._kinds = set(self.column("kind")) if self.urls and not self._unindexed else set()
        return self._kinds

    def column(self, name: str) -> list[Any]:
        """An index column (see :class:`~s3pipes.index.Index`) with an entry per URL, in the order of
        ``urls``; only where every URL has an index entry."""
        if name not in self._columns:
            col: list[Any] = []
            for _, index, rows in self._runs:
                whole = index.column(name)
                col += whole if rows is None else [whole[i] for i in rows]
            self._columns[name] = col
        return self._columns[name]

    def samples(self) -> torch.Tensor:
        """The ``samples`` column as a tensor (for sums over a million shards)."""
        if self._samples is None:
            self._samples = torch.tensor(self.column("samples"), dtype=torch.int64)
        return self._samples

    def positions(self, urls: list[str]) -> list[int] | None:
        """Where each of ``urls`` is in the listing, or ``None`` if one is not listed."""
        if self._where is None:
            self._where = dict(zip(self.urls, range(len(self.urls))))
        found = list(map(self._where.get, urls))
        return None if None in found else found  # type: ignore[return-value]

    def shard(self, position: int) -> Shard:
        """The index entry of the URL at ``position``."""
        first, index, rows = self._runs[bisect_right(self._firsts, position) - 1]
        return index[position - first if rows is None else rows[position - first]]

    def shards(self) -> list[Shard]:
        """Every URL's index entry, in order (made one by one: for the few callers that need them all)."""
        return [self.shard(i) for i in range(len(self.urls))]
