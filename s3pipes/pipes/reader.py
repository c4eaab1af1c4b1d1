"""S3Reader: object URLs in, ``(url, payload)`` out, many GETs in flight."""

from __future__ import annotations

import itertools
import logging
from collections import defaultdict, deque
from collections.abc import Sized
from typing import Any, BinaryIO, Callable, Iterable, Iterator, TypedDict, TypeVar, Union

from torch.utils.data import IterDataPipe, get_worker_info
from torch.utils.data.datapipes._decorator import functional_datapipe
from torch.utils.data.datapipes.iter import IterableWrapper
from torch.utils.data.graph import traverse_dps
from torch.utils.data.graph_settings import _is_sharding_datapipe, get_all_graph_pipes

from .. import _dist
from .._concurrent import imap
from ..cache import ShardCache
from ..config import S3Config
from ..s3 import S3Client
from ..errors import ObjectChangedError, StaleIndexError
from ..stores import client_for
from ._plan import Epoch, Part, cut, members_per_sample
from ._state import Cursor, Mark, Resumable
from .lister import Listing, S3Lister

log = logging.getLogger(__name__)

Payload = Union[bytes, BinaryIO]
T = TypeVar("T")


class ReadPos(TypedDict):
    epoch: int
    source: Mark | None  # after the last object of an unbroken run of delivered ones
    done: list[int]  # source indices delivered beyond it, out of order (ordered=False)
    first: Mark | None  # the source at the epoch's start: an epoch planned by samples needs all of it


@functional_datapipe("read_s3")
class S3Reader(Resumable[ReadPos, tuple[str, Payload]], IterDataPipe[tuple[str, Payload]]):
    """Reads each object URL into ``(url, bytes)``, or ``(url, file)`` with ``stream=True``
    (functional name: ``read_s3``).

    Many GETs stay in flight (see :meth:`S3Client.read_many`), since one request at a time caps a
    worker at a few dozen objects a second: by default ``config.max_concurrency`` to start with, more
    while the store's latency is what the reader waits on, and half as many each time S3 throttles.
    The first GET of an object asks for its first part (``config.part_size``); the rest of a larger
    object comes as parallel ranged parts. Output keeps input order unless ``ordered=False``.

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
        concurrency: objects in flight at most (default ``None``: adapted, from
            ``config.max_concurrency`` up to four times that); fewer while S3 throttles.
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
        self.concurrency = concurrency
        if shard is None:
            shard = not any(_is_sharding_datapipe(p) for p in get_all_graph_pipes(traverse_dps(source_datapipe)))
        self.shard = shard
        if not shard:
            self.apply_sharding = None  # type: ignore[assignment]  # torch's graph_settings then passes over it
        self.even_ranks = even_ranks
        self.num_instances, self.instance_id = 1, 0
        self.resume_members = 0  # set by load_tar on a restart inside a shard: see ArchiveExpander
        self._resumed_at = 0  # the parts a planned epoch had delivered before a restart

    def apply_sharding(self, num_of_instances: int, instance_id: int, sharding_group: object = None) -> None:
        if not 0 <= instance_id < num_of_instances:
            raise ValueError(f"instance_id {instance_id} must be in [0, {num_of_instances})")
        self.num_instances, self.instance_id = num_of_instances, instance_id

    def _ranks(self) -> int:
        # The DataLoader numbers ranks x workers together; its workers are the inner factor.
        info = get_worker_info()
        return self.num_instances // (info.num_workers if info is not None else 1)

    def _split(self) -> tuple[int, int, int, int]:
        """``(ranks, workers, rank, worker)`` of this reader; the DataLoader numbers its instances
        ``worker * ranks + rank``. Before the DataLoader shards it (in its main process, for ``len``),
        this rank's workers together: one worker."""
        if self.num_instances == 1 and self.shard:
            rank, ranks = _dist.current() or (0, 1)
            return ranks, 1, rank, 0
        ranks = self._ranks()
        return ranks, self.num_instances // ranks, self.instance_id % ranks, self.instance_id // ranks

    def _listing(self) -> Listing | None:
        """The listing of the lister upstream, whose index entries (if any) plan the epoch by samples."""
        listers = [p for p in get_all_graph_pipes(traverse_dps(self.source_datapipe)) if isinstance(p, S3Lister)]
        return listers[0].listing() if len(listers) == 1 else None

    def _mine(self, src: Cursor, done: set[int]) -> Iterator[tuple[str, int, Mark]]:
        """This instance's URLs (or parts of them) with their index in the source and the source
        position after them."""
        items: Iterator[tuple[str, int, Mark]] = ((url, src.count - 1, src.mark()) for url in src)
        listing = self._listing()
        if listing is not None and listing.indexed:
            # A restart goes on after the run of parts delivered before it; the cut needs the whole
            # epoch's order, so the source is read from the epoch's start (see _source).
            delivered, self._resumed_at = self._resumed_at or src.count, 0
            if src.count:
                src = Cursor(self.source_datapipe, self._first)
            epoch = Epoch.of(listing, src.rest(), src.positions())
            if epoch is not None:
                yield from self._planned(epoch, done | set(range(delivered)))
                return
            src = Cursor(self.source_datapipe, self._first)
            items = ((url, src.count - 1, src.mark()) for url in src if src.count > delivered)
            log.info("read_s3: an index covers only some of the URLs (or a zip): reading whole objects")
        own = (item for item in items if item[1] % self.num_instances == self.instance_id and item[1] not in done)
        ranks = self._ranks()
        if ranks > 1 and self.even_ranks is not False:
            own = list(own)  # type: ignore[assignment]
            total = src.count
            keep = evened(total, ranks, self.even_ranks)
            if keep < total:
                log.info("read_s3: leaving out %d of %d objects this epoch so that %d ranks read %d each",
                         total - keep, total, ranks, keep // ranks)
            own = (item for item in own if item[1] < keep)
        yield from own

    def _planned(self, epoch: Epoch, done: set[int]) -> Iterator[tuple[str, int, Mark]]:
        ranks, workers, rank, worker = self._split()
        total = epoch.total
        lo, hi = cut(total, ranks, workers, rank, worker, ranks > 1 and self.even_ranks is not False)
        if rank == worker == 0 and total % ranks and ranks > 1 and self.even_ranks is not False:
            log.info("read_s3: leaving out %d of %d samples this epoch so that %d ranks read %d each",
                     total % ranks, total, ranks, total // ranks)
        resumed, self.resume_members = self.resume_members, 0
        for index, part in epoch.parts(lo, hi):
            if index in done:
                continue
            if resumed:  # the part a restart was in: fetch only the members it had not delivered
                part, resumed = part.resume(resumed), 0
            # Positions only count: a planned epoch resumes from its start (see _source), never from a
            # source's state at each shard, which would cost seconds over a million shards.
            yield part, index, {"count": index + 1, "source": None, "planned": True}  # type: ignore[typeddict-item]

    def planned(self, what: str) -> int:
        """How many samples (``what="samples"``) or archive members (``"members"``) this reader's share
        of an epoch holds, from the index; ``TypeError`` where that is not known before the epoch."""
        listing = self._listing()
        epoch = Epoch.of(listing, listing.urls, range(len(listing.urls))) if listing is not None else None
        if epoch is None:
            raise TypeError(f"the number of {what} is known beforehand only with an index of the prefix "
                            f"(`s3pipes index PREFIX`) covering every shard read, tar or plain objects")
        ranks, workers, rank, worker = self._split()
        lo, hi = cut(epoch.total, ranks, workers, rank, worker, ranks > 1 and self.even_ranks is not False)
        if what == "samples":
            return hi - lo
        per = members_per_sample(epoch.listing)
        if per is not None:
            return (hi - lo) * per
        if ranks == workers == 1:
            return sum(epoch.listing.column("members"))
        raise TypeError("the members of a reader's share depend on the epoch's shard order when samples "
                        "have different numbers of members; len() of group_samples() is exact")

    def _read(self, url: str) -> bytes:
        store = client_for(url, self.client.config)
        if isinstance(url, Part):
            return _checked(url, lambda: store.read(url) if url.whole else store.read_range(url, url.start, url.end, url.shard.etag))
        return self.cache.read(url, store) if self.cache else store.read(url)

    def _read_many(self, urls: Iterator[str]) -> Iterator[tuple[str, bytes]]:
        """Each run of consecutive URLs of one store through that store's ``read_many`` (many GETs in
        flight on one S3 client), so a source may mix stores and keep its order; cached objects and
        parts of shards (with an index) one per thread, as many at once as :meth:`S3Client.window` says."""
        for store, run in itertools.groupby(urls, lambda url: (client_for(url, self.client.config),
                                                               self.cache is None and not isinstance(url, Part))):
            if store[1]:
                yield from store[0].read_many(run, self.concurrency, self.ordered)
            else:
                yield from imap(self._read, run, self.client.window(self.concurrency), self.ordered)

    def _open(self, url: str) -> BinaryIO:
        store = client_for(url, self.client.config)
        if isinstance(url, Part):
            f = _checked(url, lambda: store.open(url))
            f.seek(url.start)  # the stream of an indexed tar starts at its first member's header
            return f  # type: ignore[return-value]
        return self.cache.open(url, store) if self.cache else store.open(url)  # type: ignore[return-value]

    def _begin(self) -> ReadPos:
        return {"epoch": self.epoch, "source": None, "done": [], "first": None}

    def _source(self, start: ReadPos) -> Cursor:
        mark = start["source"]
        if mark is not None and mark.get("planned"):  # type: ignore[attr-defined]
            self._resumed_at = mark["count"]  # a planned epoch reads its source again from the start
            return Cursor(self.source_datapipe, start["first"])
        return super()._source(start)

    def _run(self, start: ReadPos, src: Cursor) -> Iterator[tuple[str, Payload]]:
        if start.get("first") is None:  # nothing delivered yet: the source is at the epoch's start
            start = {**start, "first": start["source"]}
        self._first = start["first"]
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
        listing = self._listing()
        if listing is not None and Epoch.of(listing, listing.urls, range(len(listing.urls))) is not None:
            if self._split()[:2] != (1, 1):
                raise TypeError("with an index, read_s3 splits shards by samples, and how many parts a reader "
                                "reads depends on the epoch's shard order; len() of load_tar() or "
                                "group_samples() is exact")
        if not isinstance(self.source_datapipe, Sized):
            raise TypeError(f"{type(self).__name__}'s length depends on a source without one")
        return share(len(self.source_datapipe), self._ranks(), self.num_instances, self.instance_id,
                     self.even_ranks)

    def __repr__(self) -> str:
        # torch names this in its "Sharding twice" error when a sharding_filter follows: shard=True is the hint.
        return f"S3Reader(shard={self.shard})"

    __str__ = __repr__


def _checked(part: Part, fetch: Callable[[], T]) -> T:
    """``fetch()`` of an indexed shard, its size checked against the index: a stale index is an error."""
    try:
        data = fetch()
    except FileNotFoundError as e:
        raise part.shard.stale("it is gone") from e
    except ObjectChangedError as e:
        if isinstance(e, StaleIndexError):
            raise
        raise part.shard.stale("its ETag changed") from e
    if isinstance(data, (bytes, bytearray)):
        want = part.shard.size if part.whole else part.end - part.start  # type: ignore[operator]
        if len(data) != want:
            raise part.shard.stale(f"{len(data)} bytes were read where the index has {want}")
    return data


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
