"""ZipExpander: a zip shard in, one ``(name, bytes)`` per file out."""

from __future__ import annotations

import zipfile
import zlib
from typing import Iterator

from torch.utils.data.datapipes._decorator import functional_datapipe

from ._payload import ArchiveExpander, Payload, naming_corruption, payload_file

_CORRUPT = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError)


def iter_zip(shard: str, payload: Payload, dirs: bool = False) -> Iterator[tuple[str, bytes]]:
    """``(shard/member, bytes)`` for each file of one zip; a stream payload is read by ranges.
    Directory entries are skipped, or with ``dirs=True`` yielded with empty bytes (as the Amazon S3
    plugin's ``zipdata`` did)."""
    member = [""]
    with payload_file(payload) as f, naming_corruption("zip", shard, _CORRUPT, member):
        with zipfile.ZipFile(f) as archive:
            for info in archive.infolist():
                if info.is_dir() and not dirs:
                    continue
                member[0] = info.filename
                yield f"{shard}/{info.filename}", archive.read(info)


@functional_datapipe("load_zip")
class ZipExpander(ArchiveExpander):
    """Expands ``(name, payload)`` of a zip into ``(name + "/" + member, bytes)`` for each file, in
    central-directory order (functional name: ``load_zip``).

    Given a seekable stream (``read_s3(stream=True)``), it reads the central directory from the end
    of the object and then each member by range, instead of downloading the archive first. A damaged
    archive or a member failing its CRC raises ``CorruptArchiveError`` naming the shard and the member;
    ``skip_corrupt=True`` logs a warning, counts it in ``skipped`` and goes on with the next shard.

    Args:
        source_datapipe: ``(name, payload)`` of each zip, usually ``read_s3``; the payload is bytes or a
            file object (``read_s3(stream=True)``), which is closed when read.
        skip_corrupt: log a corrupt archive, count it in ``skipped`` and go on (default ``False``: raise
            ``CorruptArchiveError``).

    Example:
        >>> import fsspec, io, zipfile
        >>> from torch.utils.data.datapipes.iter import IterableWrapper
        >>> import s3pipes
        >>> buf = io.BytesIO()
        >>> with zipfile.ZipFile(buf, "w") as z:
        ...     z.writestr("s0.cls", b"3")
        >>> fsspec.filesystem("memory").pipe("/zip-doc/shard.zip", buf.getvalue())
        >>> list(IterableWrapper(["memory://zip-doc/shard.zip"]).read_s3(stream=True).load_zip())
        [('memory://zip-doc/shard.zip/s0.cls', b'3')]
    """

    expand = staticmethod(iter_zip)
