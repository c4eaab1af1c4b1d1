"""What one shard holds, read with as few bytes as the store allows: an uncompressed tar by hopping from
header to header with ranged GETs, a zip through its central directory, a compressed tar read through."""

from __future__ import annotations

import io
import tarfile
import zipfile
from typing import Any

from ..pipes.tar import _COMPRESSED, _StrictTarInfo
from ..s3 import ObjectInfo
from ..stores import Store
from .format import Member, Shard, count_samples, sample_starts

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.bz2")
# The first ranged GET of a shard, and the most one GET asks for as reading goes on in order.
_FIRST, _MOST = 64 << 10, 8 << 20


class _Window(io.RawIOBase):
    """A seekable file over ``read_range``: reading in order doubles each GET (up to 8 MiB), as readahead
    does, so a tar of small members is read through in a few large GETs; a seek past what was fetched
    (tarfile skipping a large member's data) starts again with a small GET at the next header."""

    def __init__(self, store: Store, url: str, size: int) -> None:
        super().__init__()
        self.store, self.url, self.size = store, url, size
        self.pos, self.start, self.buf, self.ask = 0, 0, b"", _FIRST
        self.fetched = 0  # bytes fetched, for the tests and the summary

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, b: Any) -> int:
        if self.pos >= self.size:
            return 0
        off = self.pos - self.start
        if not 0 <= off < len(self.buf):
            in_order = off == len(self.buf)
            self.ask = min(self.ask * 2, _MOST) if in_order else _FIRST
            self.buf = self.store.read_range(self.url, self.pos, min(self.pos + self.ask, self.size))
            self.start, off = self.pos, 0
            self.fetched += len(self.buf)
        n = min(len(b), len(self.buf) - off)
        b[:n] = self.buf[off : off + n]
        self.pos += n
        return n


def scan(store: Store, obj: ObjectInfo) -> Shard:
    """The index entry of one listed object."""
    url = obj.url
    if url.endswith(".zip"):
        with zipfile.ZipFile(io.BufferedReader(_Window(store, url, obj.size))) as z:
            names = [i.filename for i in z.infolist() if not i.is_dir()]
        return Shard(url, obj.size, obj.etag, "zip", len(names), count_samples(names))
    if not url.endswith(TAR_SUFFIXES):
        return Shard(url, obj.size, obj.etag, "object", 1, 1)
    window = _Window(store, url, obj.size)
    f = io.BufferedReader(window, buffer_size=512)  # small: tarfile's seeks must reach the window unread
    compressed = f.peek(6)[:6].startswith(_COMPRESSED)
    if compressed:
        f = store.open(url)  # type: ignore[assignment]  # read through once: no offsets to hop between
    members: list[Member] = []
    with f, tarfile.open(fileobj=f, mode="r|*" if compressed else "r:", tarinfo=_StrictTarInfo) as tar:
        for info in tar:
            tar.members.clear()
            if info.isreg():
                members.append((info.name, info.offset, info.offset_data, info.size))
    names = [m[0] for m in members]
    if compressed:
        starts = sample_starts(names)
        return Shard(url, obj.size, obj.etag, "tar.gz", len(names), len(starts), None, tuple(starts))
    return Shard(url, obj.size, obj.etag, "tar", len(names), count_samples(names), tuple(members))
