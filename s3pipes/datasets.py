"""The classic dataset names of the Amazon S3 plugin for PyTorch, built from the pipes.

``S3Dataset`` (map-style), ``S3IterableDataset`` (shards, split across ranks and workers by itself),
``ShuffleDataset`` (buffer shuffle), and the plugin's helpers ``list_files``, ``file_exists`` and
``get_file_size``. Code written for the plugin runs with only its import changed, or unchanged through
``awsio.python.lib.io.s3.s3dataset``.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence, TypedDict

from torch.utils.data import Dataset, IterableDataset

from . import _dist
from .config import S3Config
from .pipes._payload import ArchiveExpander
from .pipes._state import Cursor, Mark, Resumable
from .pipes.buffer_shuffler import BufferShuffler
from .pipes.lister import S3Lister
from .pipes.reader import S3Reader
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

    >>> ds = S3Dataset("s3://bucket/images/")   # doctest: +SKIP
    >>> len(ds), ds[0][0]                       # doctest: +SKIP
    (1000, 's3://bucket/images/00000.png')
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
        shuffle_urls: shuffle the shard order each epoch.
        seed: the seed of the shard order.
        skip_corrupt: log and count (``skipped``) a corrupt archive and go on, instead of raising.
        even_ranks: leave out the last ``N % world_size`` shards so every rank reads as many (default:
            on when several ranks read).
        shard: split the shards across ranks and workers (default); ``False`` reads all of them.
        config: how to reach S3; ``None`` reads the environment.

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

    @property
    def skipped(self) -> int:
        """Corrupt archives skipped in this process (with ``skip_corrupt=True``)."""
        return self._members.skipped if self._members is not None else self._skipped

    def __getstate__(self) -> dict[str, Any]:
        # Pickled in the main process as workers start: the last moment the rank is known for sure.
        return {**self.__dict__, "_dist": _dist.current() or self._dist, "_members": None, "_skipped": self.skipped}

    def _begin(self) -> IterPos:
        return {"epoch": self.epoch, "source": None}

    def _source(self, start: IterPos) -> Cursor:
        if self.shard:
            _dist.refuse_sharding_above(type(self).__name__)
        shards: Any = S3Lister(self.urls, config=self.config)
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
    """Members of an archive, named as in the archive (as the plugin named them); other objects whole."""
    if url.endswith(TAR_SUFFIXES) or url.endswith(".zip"):
        members = iter_tar(url, f) if url.endswith(TAR_SUFFIXES) else iter_zip(url, f)
        for name, data in members:
            yield name[len(url) + 1 :], data
    else:
        with f:
            yield url, f.read()


class _Members(ArchiveExpander):
    """The members of ``S3IterableDataset``'s shards, as the plugin named them."""

    expand = staticmethod(_expand_any)

    def __init__(self, source_datapipe: S3Reader, skip_corrupt: bool, skipped: int) -> None:
        super().__init__(source_datapipe, skip_corrupt)  # type: ignore[arg-type]
        self.skipped = skipped


class ShuffleDataset(IterableDataset[Any]):
    """Shuffles any iterable dataset through a buffer of ``buffer_size`` samples. The order is fixed
    by ``seed`` and the epoch; with ``seed=None`` it comes from torch's RNG, so ``torch.manual_seed``
    repeats a run. ``set_epoch`` is passed on to the wrapped dataset; ``state_dict`` holds the buffer
    and, when the wrapped dataset has one (``S3IterableDataset`` does), its state.

    >>> ds = ShuffleDataset(range(10), buffer_size=4, seed=0)
    >>> sorted(ds) == list(range(10))
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
    """Whether the object exists, as the plugin's ``file_exists``."""
    return client_for(url).exists(url)


def get_file_size(url: str) -> int:
    """The object's size in bytes, as the plugin's ``get_file_size``."""
    return client_for(url).size(url)
