"""S3Reader: object URLs in, ``(url, payload)`` out, many GETs in flight."""

from __future__ import annotations

import itertools
import logging
from collections import defaultdict, deque
from collections.abc import Sized
from typing import Any, BinaryIO, Iterable, Iterator, TypedDict, Union

from torch.utils.data import IterDataPipe, get_worker_info
from torch.utils.data.datapipes._decorator import functional_datapipe
from torch.utils.data.datapipes.iter import IterableWrapper
from torch.utils.data.graph import traverse_dps
from torch.utils.data.graph_settings import _is_sharding_datapipe, get_all_graph_pipes

from .._concurrent import imap
from ..cache import ShardCache
from ..config import S3Config
from ..s3 import S3Client
from ..stores import client_for
from ._state import Cursor, Mark, Resumable

log = logging.getLogger(__name__)

Payload = Union[bytes, BinaryIO]


class ReadPos(TypedDict):
    epoch: int
    source: Mark | None  # after the last object of an unbroken run of delivered ones
    done: list[int]  # source indices delivered beyond it, out of order (ordered=False)


@functional_datapipe("read_s3")
class S3Reader(Resumable[ReadPos, tuple[str, Payload]], IterDataPipe[tuple[str, Payload]]):
    """Reads each object URL into ``(url, bytes)``, or ``(url, file)`` with ``stream=True``
    (functional name: ``read_s3``).

    Many GETs stay in flight (``concurrency``, default ``config.max_concurrency``; see
    :meth:`S3Client.read_many`), since one request at a time caps a worker at a few dozen objects a
    second. The first GET of an object asks for its first part (``config.part_size``); the rest of a
    larger object comes as parallel ranged parts. Output keeps input order unless ``ordered=False``.

    It also splits the objects across ``torch.distributed`` ranks and DataLoader workers (the
    DataLoader calls ``apply_sharding``), by position, before any GET: no ``sharding_filter`` is
    needed, and one placed upstream is honoured instead. ``shard=False`` turns the split off.

    Under ``torch.distributed`` it also evens out the ranks (``even_ranks``, on by default when there
    are several): the last ``N % world_size`` objects of the epoch's order are left out, so every rank
    reads the same number of objects and DDP does not hang at the last step waiting for a rank that ran
    out early. With equal-sized shards every rank then yields the same number of samples; with
    ``shuffle_shards`` a different few objects are left out each epoch. ``even_ranks=False`` reads all.

    ``stream=True`` yields seekable file objects that stream with bounded memory (for large tar or zip
    shards); the consumer closes them, as ``load_tar`` and ``load_zip`` do.

    ``cache_dir`` keeps each object read on local disk, at most ``cache_limit`` bytes, least recently
    used out first (see :class:`~s3pipes.cache.ShardCache`): from the second epoch on, cached shards
    are read from disk. A cached object is downloaded whole before it is read, even with ``stream=True``.

    Besides ``s3://`` URLs it reads local paths, ``file://``, ``memory://`` and any fsspec protocol.

    Args:
        source_datapipe: object URLs, usually from ``list_s3``: an ``IterDataPipe`` or iterable of them,
            or one URL.
        stream: yield seekable streaming file objects instead of bytes (default ``False``: bytes).
        concurrency: GETs in flight (default ``None``: ``config.max_concurrency``).
        ordered: yield in input order (default ``True``); ``False`` yields each object as it arrives.
        shard: split the objects across ranks and workers (default ``None``: on, unless a
            ``sharding_filter`` is upstream).
        even_ranks: leave out the last ``N % world_size`` objects so every rank reads as many (default
            ``None``: on when several ranks read).
        config: how to reach S3 (default ``None``: read from the environment).
        cache_dir: a local directory to cache objects in (default ``None``: no cache).
        cache_limit: the cache's size limit in bytes (default 10 GiB).

    Example:
        >>> import fsspec
        >>> from torch.utils.data import DataLoader
        >>> from torch.utils.data.datapipes.iter import IterableWrapper
        >>> import s3pipes
        >>> fs = fsspec.filesystem("memory")
        >>> for i in range(3):
        ...     fs.pipe(f"/reader-doc/{i}.txt", str(i).encode())
        >>> dp = IterableWrapper(["memory://reader-doc/"]).list_s3().read_s3()  # or s3://bucket/prefix/
        >>> for url, data in DataLoader(dp, batch_size=None):  # num_workers=4 splits the objects
        ...     print(url, data)
        memory://reader-doc/0.txt b'0'
        memory://reader-doc/1.txt b'1'
        memory://reader-doc/2.txt b'2'
        >>> url, f = next(iter(IterableWrapper(["memory://reader-doc/1.txt"]).read_s3(stream=True)))
        >>> with f:
        ...     f.read()
        b'1'
    """

    def __init__(self, source_datapipe: IterDataPipe[str] | Iterable[str] | str, *, stream: bool = False,
                 concurrency: int | None = None, ordered: bool = True, shard: bool | None = None,
                 even_ranks: bool | None = None, config: S3Config | None = None, cache_dir: str | None = None,
                 cache_limit: int = 10 << 30) -> None:
        if isinstance(source_datapipe, str):  # one URL, or a plain list of them, as list_s3 takes
            source_datapipe = [source_datapipe]
        if not isinstance(source_datapipe, IterDataPipe):
            source_datapipe = IterableWrapper(source_datapipe, deepcopy=False)
        self.source_datapipe = source_datapipe
        self.client = S3Client(config)
        self.cache = ShardCache(cache_dir, cache_limit) if cache_dir else None
        self.stream, self.ordered = stream, ordered
        self.concurrency = concurrency or self.client.config.max_concurrency
        if shard is None:
            shard = not any(_is_sharding_datapipe(p) for p in get_all_graph_pipes(traverse_dps(source_datapipe)))
        self.shard = shard
        if not shard:
            self.apply_sharding = None  # type: ignore[assignment]  # torch's graph_settings then passes over it
        self.even_ranks = even_ranks
        self.num_instances, self.instance_id = 1, 0

    def apply_sharding(self, num_of_instances: int, instance_id: int, sharding_group: object = None) -> None:
        if not 0 <= instance_id < num_of_instances:
            raise ValueError(f"instance_id {instance_id} must be in [0, {num_of_instances})")
        self.num_instances, self.instance_id = num_of_instances, instance_id

    def _ranks(self) -> int:
        # The DataLoader numbers ranks x workers together; its workers are the inner factor.
        info = get_worker_info()
        return self.num_instances // (info.num_workers if info is not None else 1)

    def _mine(self, src: Cursor, done: set[int]) -> Iterator[tuple[str, int, Mark]]:
        """This instance's URLs with their index in the source and the source position after them."""
        own = ((url, src.count - 1, src.mark()) for url in src
               if (src.count - 1) % self.num_instances == self.instance_id and src.count - 1 not in done)
        ranks = self._ranks()
        if ranks > 1 and self.even_ranks is not False:
            own = list(own)  # type: ignore[assignment]
            total = src.count
            keep = evened(total, ranks, self.even_ranks)
            if keep < total:
                log.info("read_s3: leaving out %d of %d objects this epoch so that %d ranks read %d each",
                         total - keep, total, ranks, keep // ranks)
            own = (item for item in own if item[1] < keep)
        return own

    def _read(self, url: str) -> bytes:
        store = client_for(url, self.client.config)
        return self.cache.read(url, store) if self.cache else store.read(url)

    def _read_many(self, urls: Iterator[str]) -> Iterator[tuple[str, bytes]]:
        """Each run of consecutive URLs of one store through that store's ``read_many`` (many GETs in
        flight on one S3 client), so a source may mix stores and keep its order; cached objects one per
        thread, ``concurrency`` at a time."""
        if self.cache is not None:
            yield from imap(self._read, urls, self.concurrency, self.ordered)
            return
        for store, run in itertools.groupby(urls, lambda url: client_for(url, self.client.config)):
            yield from store.read_many(run, self.concurrency, self.ordered)

    def _open(self, url: str) -> BinaryIO:
        store = client_for(url, self.client.config)
        return self.cache.open(url, store) if self.cache else store.open(url)  # type: ignore[return-value]

    def _begin(self) -> ReadPos:
        return {"epoch": self.epoch, "source": None, "done": []}

    def _run(self, start: ReadPos, src: Cursor) -> Iterator[tuple[str, Payload]]:
        progress = _Progress(start)
        own = progress.track(self._mine(src, progress.done))
        if self.stream:
            for url, index, _ in own:
                self._pos = progress.delivered(index)
                yield url, self._open(url)
        else:
            waiting: dict[str, deque[int]] = defaultdict(deque)  # url -> indices in flight, oldest first

            def urls() -> Iterator[str]:
                for url, index, _ in own:
                    waiting[url].append(index)
                    yield url

            for url, data in self._read_many(urls()):
                self._pos = progress.delivered(waiting[url].popleft())
                yield url, data

    def __len__(self) -> int:
        if not isinstance(self.source_datapipe, Sized):
            raise TypeError(f"{type(self).__name__}'s length depends on a source without one")
        return share(len(self.source_datapipe), self._ranks(), self.num_instances, self.instance_id,
                     self.even_ranks)

    def __repr__(self) -> str:
        # torch names this in its "Sharding twice" error when a sharding_filter follows: shard=True is the hint.
        return f"S3Reader(shard={self.shard})"

    __str__ = __repr__


def evened(total: int, ranks: int, even_ranks: bool | None) -> int:
    """How many of ``total`` objects the ranks read: all, less the remainder when ranks are evened out."""
    return total - total % ranks if ranks > 1 and even_ranks is not False else total


def share(total: int, ranks: int, instances: int, instance: int, even_ranks: bool | None) -> int:
    """How many of ``total`` objects instance ``instance`` of ``instances`` reads: they are dealt out by
    position (the DataLoader numbers ranks x workers ``worker * ranks + rank``)."""
    n, rest = divmod(evened(total, ranks, even_ranks), instances)
    return n + (instance < rest)


class _Progress:
    """Where a resumed reader goes on: the source position after the last object of an unbroken run of
    delivered ones, plus the objects delivered beyond it out of order (``ordered=False``)."""

    def __init__(self, start: ReadPos) -> None:
        self.start, self.base, self.done = start, start["source"], set(start["done"])
        self.pending: dict[int, list[Any]] = {}  # index -> [position after it, delivered], in index order

    def track(self, own: Iterator[tuple[str, int, Mark]]) -> Iterator[tuple[str, int, Mark]]:
        for item in own:
            self.pending[item[1]] = [item[2], False]
            yield item

    def delivered(self, index: int) -> ReadPos:
        self.pending[index][1] = True
        while self.pending and self.pending[first := next(iter(self.pending))][1]:
            self.base = self.pending.pop(first)[0]
        return self.state()

    def state(self) -> ReadPos:
        beyond = {i for i in self.done if i >= self.base["count"]}
        beyond.update(i for i, (_, delivered) in self.pending.items() if delivered)
        return {**self.start, "source": self.base, "done": sorted(beyond)}
