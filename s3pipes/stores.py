"""The one place that knows the protocol: :func:`client_for` gives :class:`~s3pipes.s3.S3Client` for
``s3://`` and an fsspec-backed :class:`FsspecClient` with the same methods for anything else (plain local
paths, ``file://``, ``memory://``, and any protocol an installed fsspec plugin adds, e.g. ``gs://``).
Both are a :class:`Store`, and the pipes use nothing else of them.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from typing import IO, Any, BinaryIO, ContextManager, Iterable, Iterator, Protocol

import fsspec
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from ._concurrent import imap
from .config import S3Config
from .s3 import ObjectInfo, S3Client, S3Url

# Reads FsspecClient.read_many runs at once when not told: enough to hide a network filesystem's
# latency, few enough for a local disk.
_CONCURRENCY = 16
# S3's rule for bucket names: 3 to 63 lower-case letters, digits, dots and hyphens, a letter or digit at each end.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


class Store(Protocol):
    """What :func:`client_for` returns for any URL: the methods the pipes, datasets and cache use."""

    def list(self, url: str) -> Iterator[ObjectInfo]: ...

    def size(self, url: str) -> int: ...

    def exists(self, url: str) -> bool: ...

    def read(self, url: str) -> bytes: ...

    def read_range(self, url: str, start: int, end: int, etag: str | None = None) -> bytes:
        """Bytes ``[start, end)``; with ``etag``, of that version only (else ``ObjectChangedError``)."""

    def read_metadata(self, url: str) -> bytes:
        """A small object that goes with a listing (a prefix's index)."""

    def read_many(self, urls: Iterable[str], concurrency: int | None = None,
                  ordered: bool = True) -> Iterator[tuple[str, bytes]]: ...

    def open(self, url: str) -> BinaryIO: ...

    def open_write(self, url: str) -> ContextManager[IO[bytes]]: ...


class FsspecClient:
    """Lists, sizes, checks, reads and writes the files of one fsspec filesystem with the methods of
    :class:`~s3pipes.s3.S3Client`, so the pipes treat a local directory like a bucket. URLs come back
    spelled as given (``memory://data/a.tar``, ``/tmp/data/a.tar``, ``data/a.tar``); a missing path raises
    ``FileNotFoundError`` naming the URL, and reading or sizing a directory ``IsADirectoryError``.

    >>> import fsspec
    >>> fsspec.filesystem("memory").pipe("/doc/a.bin", b"abc")
    >>> fs = client_for("memory://doc/")
    >>> [(o.url, o.size) for o in fs.list("memory://doc/")], fs.read_range("memory://doc/a.bin", 1, 3)
    ([('memory://doc/a.bin', 3)], b'bc')
    """

    def __init__(self, fs: fsspec.AbstractFileSystem) -> None:
        self.fs = fs

    def __repr__(self) -> str:
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return f"FsspecClient(protocol={protocol!r})"

    # Equal over one filesystem, like S3Client over one config, so runs of URLs can be grouped by store.
    def __eq__(self, other: object) -> bool:
        return isinstance(other, FsspecClient) and other.fs == self.fs

    def __hash__(self) -> int:
        return hash(self.fs)

    def _path(self, url: str) -> str:
        return self.fs._strip_protocol(url)

    def _not_a_file(self, url: str) -> IsADirectoryError:
        return IsADirectoryError(f"{url}: is a directory, not a file; list it (list_s3, list_files) "
                                 f"to get the files under it")

    @contextmanager
    def _naming(self, url: str) -> Iterator[None]:
        try:
            yield
        except IsADirectoryError as e:
            raise self._not_a_file(url) from e
        except FileNotFoundError as e:
            if self.fs.isdir(self._path(url)):  # memory:// and others say "not found" for a directory
                raise self._not_a_file(url) from e
            raise FileNotFoundError(f"{url}: no such file; check the path{self._s3_hint(url)}") from e

    def _s3_hint(self, url: str) -> str:
        """For a missing relative path shaped like ``bucket/prefix`` whose first part does not exist
        here either: the hint that it may be a bucket with ``s3://`` left off (it was read as a local
        path). Only in an error message, so a real local path is never taken for a bucket."""
        first, sep, _ = url.partition("/")
        if not isinstance(self.fs, LocalFileSystem) or "://" in url or not sep or not _BUCKET.fullmatch(first):
            return ""
        return "" if os.path.lexists(first) else f"; did you mean s3://{url}?"

    def _is_file(self, path: str, info: dict[str, Any]) -> bool:
        """Whether a listed entry is a file. A symlink comes back from a listing as type "other"; it is
        looked at again, through the link: a link to a file is a file, a link to a directory is
        skipped. Not followed, because a link back into the tree (or to an ancestor) would list the
        same files twice, or forever, and every sample must come once per epoch; ``find`` and
        ``os.walk`` do not follow them either. List the linked directory by its own path to read it."""
        kind = info.get("type")
        if kind == "other":
            try:
                kind = self.fs.info(path).get("type")  # a path string (not a listing entry) is followed
            except OSError:
                return True  # a dangling link: listed, so that reading it names it
        return kind != "directory"

    def list(self, url: str) -> Iterator[ObjectInfo]:
        """Files under a directory, recursively, in path order; a URL naming a file yields it alone."""
        path = self._path(url)
        if self.fs.isfile(path):
            yield ObjectInfo(url, int(self.fs.size(path)))
            return
        try:
            found = self.fs.find(path, detail=True)
        except FileNotFoundError:
            found = {}
        files = sorted(p for p, info in found.items() if self._is_file(p, info))
        if not files:
            raise FileNotFoundError(f"{url}: no files under this path; check the path{self._s3_hint(url)}")
        root, base = path.rstrip("/"), url.rstrip("/")
        for p in files:
            yield ObjectInfo(f"{base}/{p[len(root):].lstrip('/')}", int(found[p]["size"]))

    def size(self, url: str) -> int:
        with self._naming(url):
            info = self.fs.info(self._path(url))
        if info.get("type") == "directory":
            raise self._not_a_file(url)
        return int(info["size"])

    def exists(self, url: str) -> bool:
        return bool(self.fs.isfile(self._path(url)))

    def read(self, url: str) -> bytes:
        with self._naming(url):
            return bytes(self.fs.cat_file(self._path(url)))

    def read_metadata(self, url: str) -> bytes:
        """``read``: what S3 reads apart (see :meth:`S3Client.read_metadata`) is a plain read here."""
        return self.read(url)

    def read_range(self, url: str, start: int, end: int, etag: str | None = None) -> bytes:
        if start < 0 or end < start:
            raise ValueError(f"{url}: bad byte range [{start}, {end})")
        if etag is not None:  # our listings give these files none; a caller holding one must not go unpinned
            raise ValueError(f"{url}: {self!r} cannot pin a read to an ETag ({etag})")
        with self._naming(url):
            return bytes(self.fs.cat_file(self._path(url), start, end))

    def read_many(self, urls: Iterable[str], concurrency: int | None = None,
                  ordered: bool = True) -> Iterator[tuple[str, bytes]]:
        """``(url, bytes)`` for each URL, ``concurrency`` reads (default 16) at once in threads, in
        input order unless ``ordered=False``; URLs are pulled only as slots free up."""
        return imap(self.read, urls, concurrency or _CONCURRENCY, ordered)

    def open(self, url: str) -> BinaryIO:
        with self._naming(url):
            return self.fs.open(self._path(url), "rb")

    def _writable(self, url: str) -> str:
        """The path ``url`` names, if it names a file that can be written; checked before any write
        because fsspec strips "" to the working directory and "dir/" to "dir"."""
        if not url.strip():
            raise ValueError(f"empty URL {url!r}: name a file to write, e.g. 'ckpt/model.pt'")
        if url.endswith(("/", os.sep)):
            raise ValueError(f"{url!r} ends in '/'; name a file to write, e.g. '{url}model.pt'")
        path = self._path(url)
        if self.fs.isdir(path):
            raise IsADirectoryError(f"{url}: is a directory; name a file to write, e.g. "
                                    f"'{url.rstrip('/')}/model.pt'")
        return path

    @contextmanager
    def open_write(self, url: str) -> Iterator[IO[bytes]]:
        """A binary file to write ``url``; it is committed when the block ends without an error and
        discarded otherwise (an fsspec transaction: local files are written aside and renamed). An
        empty name, a name ending in '/', or an existing directory is refused before anything is
        touched: committing onto a directory would move the file into it and chmod the directory."""
        path = self._writable(url)
        self.fs.makedirs(self.fs._parent(path), exist_ok=True)
        with self.fs.transaction, self.fs.open(path, "wb") as f:
            yield f


def client_for(url: str, config: S3Config | None = None, **storage_options: Any) -> Store:
    """The client for ``url``'s protocol: S3 (configured by ``config``) for ``s3://``, fsspec
    (configured by ``storage_options``) for everything else.

    >>> client_for("s3://bucket/train/")  # doctest: +ELLIPSIS
    S3Client(S3Config(...))
    >>> client_for("/data/train/"), client_for("memory://train/")
    (FsspecClient(protocol='file'), FsspecClient(protocol='memory'))
    """
    if not isinstance(url, str):
        raise TypeError(f"expected a URL or path string, got {url!r}")
    if not url.strip():
        # Not the working directory: an unset variable would otherwise read whatever lies where the job runs.
        raise ValueError(f"empty URL {url!r}: pass an S3 URL (s3://bucket/prefix/) or a path; for the "
                         f"current directory say so with '.'")
    if url.lower().startswith(("s3:", "s3a:", "s3n:")):
        S3Url.parse(url)  # a mistyped S3 URL is a ValueError showing the form, not a missing local path
        return S3Client(config)
    return FsspecClient(url_to_fs(url, **storage_options)[0])
