"""A local disk cache of whole shards under a byte limit, least recently used out first, shared safely
by every DataLoader worker and process on the machine."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from typing import IO, Iterator

from .stores import Store

log = logging.getLogger(__name__)

_LOCKS = ".locks"
_DEAD_DOWNLOAD = 3600  # seconds without a write after which a temporary file is a crashed download


class ShardCache:
    """Whole objects kept in ``directory``, at most ``max_bytes`` in all (the shard being read is kept
    even when it alone is larger). A hit refreshes the file's mtime; after each download the least
    recently used files go until the total fits.

    Several processes may share one directory: a download goes to a temporary file that is renamed
    into place, so a reader never sees a partial shard, and a lock per shard (striped over 256 lock
    files) makes the workers wanting the same shard download it once. Objects are assumed not to
    change under their URL, as training shards do not; clear the directory when they do.

    >>> import fsspec, tempfile
    >>> from s3pipes.stores import client_for
    >>> fsspec.filesystem("memory").pipe("/c/a.tar", b"x" * 10)
    >>> cache = ShardCache(tempfile.mkdtemp(), max_bytes=1 << 20)
    >>> cache.read("memory://c/a.tar", client_for("memory://c/a.tar"))
    b'xxxxxxxxxx'
    """

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
        self.directory = os.fspath(directory)
        self.max_bytes = max_bytes

    def __repr__(self) -> str:
        return f"ShardCache({self.directory!r}, max_bytes={self.max_bytes})"

    def _file(self, url: str) -> tuple[str, str]:
        digest = hashlib.sha256(url.encode()).hexdigest()
        readable = re.sub(r"[^A-Za-z0-9._-]", "_", url.rsplit("/", 1)[-1])[-80:]
        return os.path.join(self.directory, f"{digest[:32]}-{readable}"), digest[:2]

    @contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        locks = os.path.join(self.directory, _LOCKS)
        os.makedirs(locks, exist_ok=True)
        with open(os.path.join(locks, name), "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # released when the file is closed
            yield

    def path(self, url: str, store: Store) -> str:
        """The local copy of ``url``, downloaded from ``store`` when it is not cached yet."""
        path, stripe = self._file(url)
        try:
            _touch(path)  # a hit: now the most recently used
            return path
        except FileNotFoundError:
            pass
        with self._lock(stripe):
            if not os.path.exists(path):  # another worker may have fetched it while we waited
                self._download(url, store, path)
            _touch(path)
        self._evict(keep=path)
        return path

    def _download(self, url: str, store: Store, path: str) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, store.open(url) as src:
                shutil.copyfileobj(src, out, 1 << 20)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        log.debug("cached %s as %s", url, path)

    def _evict(self, keep: str) -> None:
        with self._lock("evict"):
            files = []
            now = time.time()
            for e in os.scandir(self.directory):
                try:
                    st = e.stat()
                except FileNotFoundError:
                    continue
                if not e.name.startswith("."):
                    files.append((st.st_mtime_ns, st.st_size, e.path))
                elif e.name.endswith(".part") and now - st.st_mtime > _DEAD_DOWNLOAD:
                    _remove(e.path)  # left by a process killed mid-download
            total = sum(size for _, size, _ in files)
            for _, size, path in sorted(files):
                if total <= self.max_bytes:
                    break
                if path == keep:
                    continue
                _remove(path)  # a worker still reading it keeps its open file
                total -= size
                log.debug("evicted %s", path)

    def open(self, url: str, store: Store) -> IO[bytes]:
        """The cached shard as a local file (downloaded first on a miss)."""
        for _ in range(3):
            try:
                return open(self.path(url, store), "rb")
            except FileNotFoundError:
                continue  # evicted by another worker between the download and the open
        raise FileNotFoundError(f"{url}: evicted from {self.directory} as soon as it was cached; raise max_bytes")

    def read(self, url: str, store: Store) -> bytes:
        with self.open(url, store) as f:
            return f.read()


def _touch(path: str) -> None:
    # An explicit time: the kernel's own "now" is only as fine as a jiffy, which ties shards used in a row.
    now = time.time_ns()
    os.utime(path, ns=(now, now))


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
