"""S3Lister: prefixes or object URLs in, object URLs out."""

from __future__ import annotations

import fnmatch
from typing import Iterable, Iterator, Sequence, TypedDict

from torch.utils.data import IterDataPipe
from torch.utils.data.datapipes._decorator import functional_datapipe
from torch.utils.data.datapipes.iter import IterableWrapper

from ..config import S3Config
from ..s3 import S3Client
from ..stores import client_for
from ._state import Cursor, Mark, Resumable


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

    def _begin(self) -> ListPos:
        return {"epoch": self.epoch, "source": None, "yielded": 0}

    def _source(self, start: ListPos) -> Cursor:
        return Cursor(self.source_datapipe)  # the prefixes are listed again: skipping by URL is exact

    def _run(self, start: ListPos, src: Cursor) -> Iterator[str]:
        skip = done = start["yielded"]
        for prefix in src:
            found = False
            for obj in client_for(prefix, self.client.config).list(prefix):
                name = obj.url.rsplit("/", 1)[-1]
                if not self.masks or any(fnmatch.fnmatchcase(name, m) for m in self.masks):
                    found = True
                    if skip:  # resuming: listing again is cheap, yielding again would repeat
                        skip -= 1
                        continue
                    done += 1
                    self._pos = {**start, "yielded": done}
                    yield obj.url
            if not found:
                raise FileNotFoundError(f"{prefix}: no objects match {self.masks}; check the prefix and masks")
