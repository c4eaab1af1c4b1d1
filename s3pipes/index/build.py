"""Building and finding the index of a prefix. Many shards are scanned at once (threads, each a few
ranged GETs); under ``torch.distributed`` (``torchrun --nproc_per_node N``, across nodes too) the
shards are split over the ranks and rank 0 merges and writes: torch.distributed is the only engine."""

from __future__ import annotations

import logging
from typing import Any

import torch.distributed as dist
from tqdm import tqdm

from .. import _dist
from .._concurrent import imap
from ..config import S3Config
from ..errors import CorruptArchiveError
from ..s3 import ObjectInfo
from ..stores import client_for
from .format import INDEX_NAME, Index, Shard, as_prefix, index_url
from .scan import scan

log = logging.getLogger("s3pipes")


def listed(prefix: str, config: S3Config | None = None) -> list[ObjectInfo]:
    """The objects under ``prefix`` that an index describes: all but the index itself."""
    return [o for o in client_for(prefix, config).list(prefix) if not o.url.endswith("/" + INDEX_NAME)]


def build_index(prefix: str, *, config: S3Config | None = None, concurrency: int = 32,
                progress: bool = False) -> Index:
    """Scan every object under ``prefix`` and write its index, ``prefix + "_s3pipes_index.jsonl.gz"``.

    Uncompressed tars are read header by header with ranged GETs (small members are read through,
    large ones skipped), zips through their central directory, compressed tars in full; ``concurrency``
    shards at a time. Under ``torch.distributed`` call it on every rank: rank 0 lists, each rank scans
    its share, rank 0 writes the merged index, and every rank returns it. ``list_s3``, ``read_s3``
    and the datasets then use it: one GET instead of the listing, exact lengths, equal samples per rank,
    and resumes that start at the next member. Rebuild it when shards change: a stale index is an error.

    Args:
        prefix: the prefix (``s3://bucket/train/``, a local directory, ``memory://``...).
        config: how to reach S3 (default ``None``: read from the environment).
        concurrency: shards scanned at once by each rank (default 32).
        progress: show a progress bar (default ``False``).

    Example:
        >>> import fsspec, io, tarfile
        >>> import s3pipes
        >>> for i in range(2):
        ...     buf = io.BytesIO()
        ...     with tarfile.open(fileobj=buf, mode="w") as t:
        ...         for name in ["s0.png", "s0.cls", "s1.png", "s1.cls"]:
        ...             info = tarfile.TarInfo(name); info.size = 1; t.addfile(info, io.BytesIO(b"x"))
        ...     fsspec.filesystem("memory").pipe(f"/index-doc/shard-{i}.tar", buf.getvalue())
        >>> index = s3pipes.build_index("memory://index-doc/")
        >>> [(s.url, s.members, s.samples) for s in index]
        [('memory://index-doc/shard-0.tar', 4, 2), ('memory://index-doc/shard-1.tar', 4, 2)]
    """
    prefix = as_prefix(prefix)
    rank, world = _dist.current() or (0, 1)
    objects: Any = listed(prefix, config) if rank == 0 else None
    if world > 1:
        box = [objects]
        dist.broadcast_object_list(box, src=0)
        objects = box[0]
    store = client_for(prefix, config)
    mine = objects[rank::world]

    def one(obj: ObjectInfo) -> Shard:
        try:
            return scan(store, obj)
        except (OSError, ValueError, EOFError) as e:
            if isinstance(e, (FileNotFoundError, PermissionError, CorruptArchiveError)):
                raise
            raise CorruptArchiveError(f"{obj.url}: cannot be indexed: {e}") from e

    shards: list[Shard] = []
    with tqdm(total=len(mine), unit=" shards", desc=f"index rank {rank}" if world > 1 else "index",
              disable=not progress) as bar:
        for _, shard in imap(one, mine, concurrency):
            shards.append(shard)
            bar.update(1)
    if world > 1:
        parts: list[Any] = [None] * world
        dist.all_gather_object(parts, shards)
        shards = [parts[i % world][i // world] for i in range(len(objects))]  # back in key order
    index = Index.of(prefix, shards)
    if rank == 0:
        with store.open_write(index_url(prefix)) as f:
            f.write(index.dumps())
        log.info("indexed %s: %d shards, %d members, %d samples", prefix, len(shards),
                 sum(s.members for s in shards), sum(s.samples for s in shards))
    if world > 1:
        dist.barrier()  # the index is written before any rank goes on to read through it
    return index


def find_index(prefix: str, config: S3Config | None = None) -> Index | None:
    """The index of ``prefix`` if it has one (one GET), else ``None``."""
    prefix = as_prefix(prefix)
    try:
        data = client_for(prefix, config).read_metadata(index_url(prefix))
    except (FileNotFoundError, IsADirectoryError):
        return None
    return Index.loads(data, prefix)
