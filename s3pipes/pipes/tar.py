"""TarExpander: a tar shard in, one ``(name, bytes)`` per regular member out, streaming."""

from __future__ import annotations

import gzip
import lzma
import tarfile
import zlib
from typing import Iterator

from torch.utils.data import IterDataPipe
from torch.utils.data.datapipes._decorator import functional_datapipe

from ._payload import Payload, naming_corruption, payload_file

_CORRUPT = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError)


@functional_datapipe("load_tar")
class TarExpander(IterDataPipe[tuple[str, bytes]]):
    """Expands ``(name, payload)`` of a tar (plain, ``.tar.gz``/``.tgz``, ``.tar.xz``) into
    ``(name + "/" + member, bytes)`` for each regular file, in archive order (functional name: ``load_tar``).

    The tar is read as a stream, one member at a time, so with ``read_s3(stream=True)`` a shard of any
    size is never held whole in memory. A damaged or truncated archive raises ``CorruptArchiveError``
    (a ``ValueError``) naming the shard and the member.

    Example:
        >>> import io, tarfile
        >>> from torch.utils.data.datapipes.iter import IterableWrapper
        >>> import s3pipes
        >>> buf = io.BytesIO()
        >>> with tarfile.open(fileobj=buf, mode="w") as t:
        ...     info = tarfile.TarInfo("s0.cls"); info.size = 1; t.addfile(info, io.BytesIO(b"3"))
        >>> list(IterableWrapper([("s3://b/shard.tar", buf.getvalue())]).load_tar())
        [('s3://b/shard.tar/s0.cls', b'3')]
    """

    def __init__(self, source_datapipe: IterDataPipe[tuple[str, Payload]]) -> None:
        self.source_datapipe = source_datapipe

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        for shard, payload in self.source_datapipe:
            member = [""]
            with payload_file(payload) as f, naming_corruption("tar", shard, _CORRUPT, member):
                with tarfile.open(fileobj=f, mode="r|*") as tar:
                    for info in tar:
                        member[0] = info.name
                        if not info.isreg():
                            continue
                        data = tar.extractfile(info).read()  # type: ignore[union-attr]
                        if len(data) != info.size:
                            raise tarfile.ReadError(f"member ends after {len(data)} of {info.size} bytes")
                        yield f"{shard}/{info.name}", data
