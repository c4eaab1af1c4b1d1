"""The classic dataset names of the Amazon S3 plugin for PyTorch, built from the pipes.

``S3Dataset`` (map-style), ``S3IterableDataset`` (shards, split across ranks and workers by itself),
``ShuffleDataset`` (buffer shuffle), and the plugin's helpers ``list_files``, ``file_exists``,
``get_file_size``, ``tardata``, ``zipdata`` and ``reraise_exception``. Code written for the plugin runs
with only its import changed, or unchanged through ``awsio.python.lib.io.s3.s3dataset``.
"""

from __future__ import annotations

import re
from typing import IO, Any, Callable, Iterable, Iterator, Sequence, TypedDict

from torch.utils.data import Dataset, IterableDataset

from . import _dist
from .config import S3Config
from .errors import BucketNotFoundError
from .pipes._payload import ArchiveExpander, Payload
from .pipes._plan import Epoch
from .pipes._state import Cursor, Mark, Resumable
from .pipes.buffer_shuffler import BufferShuffler
from .pipes.lister import S3Lister
from .pipes.reader import S3Reader, share
from .pipes.shard_shuffler import ShardShuffler
from .pipes.tar import iter_tar
from .pipes.zip import iter_zip
from .stores import client_for

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def _as_list(urls: str | Sequence[str]) -> list[str]:
    return [urls] if isinstance(urls, str) else list(urls)


class S3Dataset(Dataset[tuple[str, bytes]]):
    """Map-style: ``ds[i]`` is ``(url, bytes)`` of the i-th object under ``urls`` (prefixes, object
    URLs, or a list of either), listed once here. Works with ``DistributedSampler`` and workers;
    subclass it and call ``super().__getitem__(idx)`` to decode.

    Args:
        urls: prefixes or object URLs (``s3://``, local paths, ``memory://``...), or a list of them.
        config: how to reach S3 (default ``None``: read from the environment).

    Example:
        >>> import fsspec
        >>> fs = fsspec.filesystem("memory")
        >>> for i in range(3):
        ...     fs.pipe(f"/dataset-doc/images/{i:05d}.png", b"P%d" % i)
        >>> ds = S3Dataset("memory://dataset-doc/images/")  # or s3://bucket/images/
        >>> len(ds), ds[0]
        (3, ('memory://dataset-doc/images/00000.png', b'P0'))
    """

    def __init__(self, urls: str | Sequence[str], *, config: S3Config | None = None) -> None:
        self.config = config
        self.urls = [o.url for u in _as_list(urls) for o in client_for(u, config).list(u)]

    def __len__(self) -> int:
        return len(self.urls)

    def __getitem__(self, idx: int) -> tuple[str, bytes]:
        url = self.urls[idx]
        return url, client_for(url, self.config).read(url)


class IterPos(TypedDict):
    epoch: int
    source: Mark | None  # the position in this epoch's members


class S3IterableDataset(Resumable[IterPos, tuple[str, bytes]], IterableDataset[tuple[str, bytes]]):
    """Yields ``(name, bytes)`` for every object under ``urls``; a ``.tar``, ``.tar.gz``, ``.tgz`` or
    ``.zip`` object yields its members instead (``(member_name, bytes)``, in archive order, streamed).

    Shards are split across ``torch.distributed`` ranks and DataLoader workers by this dataset itself,
    also when it is wrapped in your own ``IterableDataset``; under ``torch.distributed`` every rank gets
    the same number of shards (see ``S3Reader``'s ``even_ranks``). A torch ``sharding_filter`` after
    ``IterableWrapper(S3IterableDataset(...))`` would split them twice and lose data, so it is refused
    with an error; with ``shard=False`` every rank and worker reads every shard and such a filter splits
    the members instead.

    With ``shuffle_urls=True`` the shard order is a function of ``seed`` and the epoch, the same on
    every rank and worker. The epoch moves on with each iteration where the same object iterates (in
    the main process, or persistent workers); DataLoader workers that are not persistent get a fresh
    copy each epoch, so call ``set_epoch(e)`` before each epoch, as the plugin documented.
    ``state_dict``/``load_state_dict`` resume an epoch mid-way with ``StatefulDataLoader``.

    Args:
        urls: prefixes or object URLs (``s3://``, local paths, ``memory://``...), or a list of them.
        shuffle_urls: shuffle the shard order each epoch (default ``False``: listed order).
        seed: the seed of the shard order (default ``0``).
        skip_corrupt: log and count (``skipped``) a corrupt archive and go on (default ``False``: raise).
        even_ranks: leave out the last ``N % world_size`` shards so every rank reads as many (default
            ``None``: on when several ranks read).
        shard: split the shards across ranks and workers (default ``True``); ``False`` reads all of them.
        config: how to reach S3 (default ``None``: read from the environment).

    Example:
        >>> import fsspec
        >>> fs = fsspec.filesystem("memory")
        >>> for i in range(3):
        ...     fs.pipe(f"/iterable-doc/{i}.txt", str(i).encode())
        >>> ds = S3IterableDataset("memory://iterable-doc/", shuffle_urls=True)
        >>> ds.set_epoch(0)
        >>> sorted(data for _, data in ds)
        [b'0', b'1', b'2']
    """

    def __init__(self, urls: str | Sequence[str], shuffle_urls: bool = False, *, seed: int = 0,
                 skip_corrupt: bool = False, even_ranks: bool | None = None, shard: bool = True,
                 config: S3Config | None = None) -> None:
        self.urls = _as_list(urls)
        self.shuffle_urls, self.seed, self.config, self.even_ranks = shuffle_urls, seed, config, even_ranks
        self.shard, self.skip_corrupt, self._skipped = shard, skip_corrupt, 0
        self._members: _Members | None = None
        self._dist = _dist.current()
        # Listed here, once per rank, as the plugin did: workers get the listing with the dataset.
        self._lister = S3Lister(self.urls, config=config)
        self._lister.listing(per_rank=True)

    @property
    def skipped(self) -> int:
        """Corrupt archives skipped in this process (with ``skip_corrupt=True``)."""
        return self._members.skipped if self._members is not None else self._skipped

    def __len__(self) -> int:
        """How many ``(url, bytes)`` this process's iteration yields, summed over its DataLoader workers:
        the number of objects (listed once, then cached), or under ``torch.distributed`` this rank's
        share of them (as even as ``even_ranks`` makes it), which is what the DataLoader of each rank
        compares with what arrives. With an index of the prefix (``s3pipes index``) over uncompressed tars,
        the number of members this rank yields (ranks then get equal samples); without one an archive
        object raises ``TypeError``: its members, the items it yields, are not known without reading it."""
        listing = self._lister.listing(per_rank=True)
        if getattr(self, "_indexed_members", None) is None:  # the listing is taken once: so is this, over every shard
            self._indexed_members = Epoch.of(listing, listing.urls, range(len(listing.urls))) is not None and all(
                s.kind != "tar.gz" and not any(re.match(_META, m[0]) for m in s.offsets or ()) for s in listing.shards())
        if self._indexed_members:
            return S3Reader(self._lister, shard=self.shard, even_ranks=self.even_ranks).planned("members")
        if getattr(self, "_objects", None) is None:
            self._objects = _count_objects(listing.urls)
        if not self.shard:
            return self._objects  # every rank reads every object
        rank, world = _dist.current() or self._dist or (0, 1)
        return share(self._objects, world, world, rank, self.even_ranks)  # a rank's workers, summed

    def __getstate__(self) -> dict[str, Any]:
        # Pickled in the main process as workers start: the last moment the rank is known for sure.
        return {**self.__dict__, "_dist": _dist.current() or self._dist, "_members": None, "_skipped": self.skipped}

    def _begin(self) -> IterPos:
        return {"epoch": self.epoch, "source": None}

    def _source(self, start: IterPos) -> Cursor:
        if self.shard:
            _dist.refuse_sharding_above(type(self).__name__)
        shards: Any = self._lister
        if self.shuffle_urls:
            shards = ShardShuffler(shards, seed=self.seed)
            shards.set_epoch(start["epoch"])
        reader = S3Reader(shards, stream=True, shard=self.shard, even_ranks=self.even_ranks, config=self.config)
        if self.shard:
            reader.apply_sharding(*_dist.instance(self._dist))
        self._members = _Members(reader, skip_corrupt=self.skip_corrupt, skipped=self.skipped)
        return Cursor(self._members, start["source"])

    def _run(self, start: IterPos, src: Cursor) -> Iterator[tuple[str, bytes]]:
        for item in src:
            self._pos = {**start, "source": src.mark()}
            yield item


def _expand_any(url: str, f: Any) -> Iterator[tuple[str, bytes]]:
    """Members of an archive, named as in the archive (as the plugin named them); other objects whole.
    As the plugin did, a zip's directory entries come with empty bytes, and tar members named like
    ``__meta__`` (webdataset metadata) are skipped."""
    if url.endswith(TAR_SUFFIXES):
        yield from _unprefixed(url, iter_tar(url, f), _META)
    elif url.endswith(".zip"):
        yield from _unprefixed(url, iter_zip(url, f, dirs=True), None)
    else:
        with f:
            yield url, f.read()


class _Members(ArchiveExpander):
    """The members of ``S3IterableDataset``'s shards, as the plugin named them."""

    expand = staticmethod(_expand_any)
    resume_by_offset = False  # members named __meta__ are left out, so they do not count as the index does

    def __init__(self, source_datapipe: S3Reader, skip_corrupt: bool, skipped: int) -> None:
        super().__init__(source_datapipe, skip_corrupt)  # type: ignore[arg-type]
        self.skipped = skipped


class ShuffleDataset(IterableDataset[Any]):
    """Shuffles any iterable dataset through a buffer of ``buffer_size`` samples. The order is fixed
    by ``seed`` and the epoch; with ``seed=None`` it comes from torch's RNG, so ``torch.manual_seed``
    repeats a run. ``set_epoch`` is passed on to the wrapped dataset; ``state_dict`` holds the buffer
    and, when the wrapped dataset has one (``S3IterableDataset`` does), its state.

    Args:
        dataset: the iterable dataset (or any iterable) to shuffle.
        buffer_size: how many samples the buffer holds; memory is that many samples.
        seed: the seed of the order (default ``None``: drawn from torch's RNG).

    Example:
        >>> import fsspec
        >>> fs = fsspec.filesystem("memory")
        >>> for i in range(10):
        ...     fs.pipe(f"/shuffle-doc/{i}.txt", str(i).encode())
        >>> ds = ShuffleDataset(S3IterableDataset("memory://shuffle-doc/"), buffer_size=4, seed=0)
        >>> ds.set_epoch(0)
        >>> sorted(int(data) for _, data in ds) == list(range(10))
        True
    """

    def __init__(self, dataset: Iterable[Any], buffer_size: int, *, seed: int | None = None) -> None:
        self.dataset = dataset
        self._shuffler = BufferShuffler(dataset, buffer_size, seed=seed)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        self._shuffler.set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        return self._shuffler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._shuffler.load_state_dict(state)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._shuffler)  # at once: a state taken right after iter() describes the new epoch


def list_files(url: str) -> list[str]:
    """Every object URL under a prefix (or the object itself), as the plugin's ``list_files``."""
    return [o.url for o in client_for(url).list(url)]


def file_exists(url: str) -> bool:
    """Whether the object exists, as the plugin's ``file_exists``: ``False`` also when its bucket does
    not exist (the object does not either)."""
    try:
        return client_for(url).exists(url)
    except BucketNotFoundError:
        return False


def get_file_size(url: str) -> int:
    """The object's size in bytes, as the plugin's ``get_file_size``."""
    return client_for(url).size(url)


def _count_objects(urls: list[str]) -> int:
    """The number of objects listed; ``TypeError`` at the first archive."""
    count = 0
    for url in urls:
        if url.endswith(TAR_SUFFIXES) or url.endswith(".zip"):
            raise TypeError(
                f"len() of S3IterableDataset: {url} is an archive, and the number of members it yields is "
                f"not known without reading it. Index the prefix once (`s3pipes index PREFIX`), or count them "
                f"(n = sum(1 for _ in dataset)) and return n from __len__ in a subclass, or do without len "
                f"(DataLoader does not need it)")
        count += 1
    return count


# Tar members the plugin's tardata skipped by default: webdataset metadata such as "__key__" or "__x__/y".
_META = r"__[^/]*__($|/)"


def reraise_exception(exn: BaseException) -> bool:
    """The plugin's default ``handler`` for ``tardata``/``zipdata``: raise the error."""
    raise exn


def tardata(fileobj: IO[bytes] | bytes, skip_meta: str | None = _META,
            handler: Callable[[BaseException], Any] = reraise_exception) -> Iterator[tuple[str, bytes]]:
    """``(member_name, bytes)`` for each regular file of a tar (plain or compressed) read from
    ``fileobj`` as a stream, as the plugin's ``tardata``; names matching ``skip_meta`` are skipped.
    An error reading the archive (``CorruptArchiveError``) goes to ``handler``: the default raises it;
    a handler that returns instead ends the archive there. ``fileobj`` is left open."""
    name = _name_of(fileobj)
    yield from _handled(_unprefixed(name, iter_tar(name, _unclosed(fileobj)), skip_meta), handler)


def zipdata(fileobj: IO[bytes] | bytes,
            handler: Callable[[BaseException], Any] = reraise_exception) -> Iterator[tuple[str, bytes]]:
    """``(member_name, bytes)`` for each entry of a zip read from a seekable ``fileobj``, directory
    entries with empty bytes, as the plugin's ``zipdata``. Errors go to ``handler`` as for
    ``tardata``. ``fileobj`` is left open."""
    name = _name_of(fileobj)
    yield from _handled(_unprefixed(name, iter_zip(name, _unclosed(fileobj), dirs=True), None), handler)


def _name_of(fileobj: Any) -> str:
    name = getattr(fileobj, "name", None)
    return name if isinstance(name, str) and name else "<archive>"


def _unprefixed(shard: str, members: Iterator[tuple[str, bytes]], skip: str | None) -> Iterator[tuple[str, bytes]]:
    """Members named as in the archive (``iter_tar``/``iter_zip`` say ``shard/member``), less those
    matching ``skip``."""
    for name, data in members:
        name = name[len(shard) + 1 :]
        if skip is None or not re.match(skip, name):
            yield name, data


def _handled(members: Iterator[tuple[str, bytes]],
             handler: Callable[[BaseException], Any]) -> Iterator[tuple[str, bytes]]:
    try:
        yield from members
    except Exception as e:  # a generator that raised cannot go on: the archive ends here unless re-raised
        handler(e)


class _Unclosed:
    """A caller's file object that the archive readers (which close what they are handed) leave open."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def close(self) -> None:
        pass


def _unclosed(fileobj: IO[bytes] | bytes) -> Payload:
    if isinstance(fileobj, (bytes, bytearray, memoryview)):
        return fileobj
    return _Unclosed(fileobj)  # type: ignore[return-value]
