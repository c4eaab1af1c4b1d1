"""S3Reader: object URLs in, ``(url, payload)`` out, many GETs in flight."""

from __future__ import annotations

from collections.abc import Sized
from typing import BinaryIO, Iterator, Union

from torch.utils.data import IterDataPipe
from torch.utils.data.datapipes._decorator import functional_datapipe
from torch.utils.data.graph import traverse_dps
from torch.utils.data.graph_settings import _is_sharding_datapipe, get_all_graph_pipes

from ..config import S3Config
from ..s3 import S3Client

Payload = Union[bytes, BinaryIO]


@functional_datapipe("read_s3")
class S3Reader(IterDataPipe[tuple[str, Payload]]):
    """Reads each object URL into ``(url, bytes)``, or ``(url, file)`` with ``stream=True``
    (functional name: ``read_s3``).

    Many GETs stay in flight (``concurrency``, default ``config.max_concurrency``; see
    :meth:`S3Client.read_many`), since one request at a time caps a worker at a few dozen objects a
    second; objects larger than two parts are fetched as parallel ranged GETs. Output keeps input order
    unless ``ordered=False``.

    It also splits the objects across ``torch.distributed`` ranks and DataLoader workers (the
    DataLoader calls ``apply_sharding``), by position, before any GET: no ``sharding_filter`` is
    needed, and one placed upstream is honoured instead. ``shard=False`` turns the split off.

    ``stream=True`` yields seekable file objects that stream with bounded memory (for large tar or zip
    shards); the consumer closes them, as ``load_tar`` and ``load_zip`` do.

    Example:
        >>> from torch.utils.data import DataLoader
        >>> from torch.utils.data.datapipes.iter import IterableWrapper
        >>> import s3pipes
        >>> dp = IterableWrapper(["s3://bucket/images/"]).list_s3().read_s3()  # doctest: +SKIP
        >>> for url, data in DataLoader(dp, batch_size=None, num_workers=4):  # doctest: +SKIP
        ...     pass
    """

    def __init__(self, source_datapipe: IterDataPipe[str], *, stream: bool = False,
                 concurrency: int | None = None, ordered: bool = True, shard: bool | None = None,
                 config: S3Config | None = None) -> None:
        self.source_datapipe = source_datapipe
        self.client = S3Client(config)
        self.stream, self.ordered = stream, ordered
        self.concurrency = concurrency or self.client.config.max_concurrency
        if shard is None:
            shard = not any(_is_sharding_datapipe(p) for p in get_all_graph_pipes(traverse_dps(source_datapipe)))
        self.shard = shard
        if not shard:
            self.apply_sharding = None  # type: ignore[assignment]  # torch's graph_settings then passes over it
        self.num_instances, self.instance_id = 1, 0

    def apply_sharding(self, num_of_instances: int, instance_id: int, sharding_group: object = None) -> None:
        if not 0 <= instance_id < num_of_instances:
            raise ValueError(f"instance_id {instance_id} must be in [0, {num_of_instances})")
        self.num_instances, self.instance_id = num_of_instances, instance_id

    def _mine(self) -> Iterator[str]:
        for i, url in enumerate(self.source_datapipe):
            if i % self.num_instances == self.instance_id:
                yield url

    def __iter__(self) -> Iterator[tuple[str, Payload]]:
        if self.stream:
            for url in self._mine():
                yield url, self.client.open(url)
        else:
            yield from self.client.read_many(self._mine(), self.concurrency, self.ordered)

    def __len__(self) -> int:
        if not isinstance(self.source_datapipe, Sized):
            raise TypeError(f"{type(self).__name__}'s length depends on a source without one")
        n, rest = divmod(len(self.source_datapipe), self.num_instances)
        return n + (self.instance_id < rest)

    def __repr__(self) -> str:
        # torch names this pipe in its "Sharding twice" error when a sharding_filter follows it.
        if self.shard:
            return ("S3Reader(read_s3 already splits objects across ranks and workers: remove the "
                    "sharding_filter after it, or pass read_s3(shard=False))")
        return "S3Reader(shard=False)"

    __str__ = __repr__
