"""S3Lister: prefixes or object URLs in, object URLs out."""

from __future__ import annotations

import fnmatch
import logging
from typing import Iterable, Iterator, Sequence, TypedDict

from torch.utils.data import IterDataPipe, get_worker_info
from torch.utils.data.datapipes._decorator import functional_datapipe
from torch.utils.data.datapipes.iter import IterableWrapper

from .. import _dist
from ..config import S3Config
from ..index import INDEX_NAME, Shard, find_index
from ..s3 import S3Client
from ..s3.usage import process_usage
from ..stores import client_for
from ._state import Cursor, Mark, Resumable

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
class S3Lister(Resumable[ListPos, str], IterDataPipe[str]):
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
        log.info("list_s3: %d objects%s: %s", len(listing.urls), " (from the index)" if listing.shards else "",
                 process_usage() - before)
        return listing

    def _list(self) -> Listing:
        listing = Listing()
        for prefix in self.source_datapipe:
            index = find_index(prefix, self.client.config) if prefix.endswith("/") else None
            shards = index if index is not None else (o for o in client_for(prefix, self.client.config).list(prefix)
                                                      if not o.url.endswith("/" + INDEX_NAME))
            kept = [obj for obj in shards if matches(obj.url, self.masks)] if self.masks else list(shards)
            found = bool(kept)
            listing.urls += [obj.url for obj in kept]
            if index is not None:
                listing.shards.update((s.url, s) for s in kept)  # type: ignore[misc]
            if not found:
                raise FileNotFoundError(f"{prefix}: no objects match {self.masks}; check the prefix and masks")
        return listing

    def _begin(self) -> ListPos:
        return {"epoch": self.epoch, "source": None, "yielded": 0}

    def _source(self, start: ListPos) -> Cursor:
        return Cursor(())  # the listing is taken once and kept

    def _run(self, start: ListPos, src: Cursor) -> Iterator[str]:
        done = start["yielded"]
        for url in self.listing().urls[done:]:
            done += 1
            self._pos = {**start, "yielded": done}
            yield url

    def __len__(self) -> int:
        return len(self.listing().urls)


class Listing:
    """The URLs a lister yields, and the index entries of those under an indexed prefix. Not a
    collection on purpose: torch's graph walk (each epoch) pickles the collections a pipe holds, and
    skips other objects."""

    def __init__(self) -> None:
        self.urls: list[str] = []
        self.shards: dict[str, Shard] = {}
