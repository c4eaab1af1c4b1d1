"""JsonlLoader: JSON lines objects in (plain, gzip or zstandard), one parsed object per line out."""

from __future__ import annotations

import collections
import gzip
import io
import itertools
import json
import zlib
from types import ModuleType
from typing import Any, BinaryIO, Callable, Iterator

from torch.utils.data import IterDataPipe
from torch.utils.data.datapipes._decorator import functional_datapipe

from ..errors import CorruptDataError, ObjectChangedError
from ._payload import Payload
from .._optional import need
from ._rows import At, RowLoader

_GZIP, _ZSTD = b"\x1f\x8b", b"\x28\xb5\x2f\xfd"  # magic bytes; JSON text can start with neither
# Compressed bytes decompressed at a time: what is held is at most this times the compression ratio,
# which reaches hundreds for repetitive text.
_CHUNK = 1 << 13


class _BadStream(Exception):
    """A zstandard stream that cannot be decompressed: damaged, or cut inside a frame."""


_DAMAGED = (EOFError, zlib.error, gzip.BadGzipFile, _BadStream)  # what gzip raises for a cut or garbled stream


class _Zstd(io.RawIOBase):
    """Zstandard frames one after another, decompressed as they are read. zstandard's own stream reader
    ends quietly where a stream was cut, dropping the lines after the cut unseen; here that is an error."""

    def __init__(self, f: BinaryIO, zstd: ModuleType) -> None:
        super().__init__()
        self._f, self._zstd = f, zstd
        self._d = zstd.ZstdDecompressor().decompressobj()
        self._out = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._out:
            data = self._f.read(_CHUNK)
            if not data:
                if not self._d.eof:
                    raise _BadStream("the zstandard stream ends inside a frame (cut short?)")
                return 0
            self._out = memoryview(self._decompress(data))
        n = min(len(b), len(self._out))
        b[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def _decompress(self, data: bytes) -> bytes:
        out = []
        while data:
            if self._d.eof:  # a frame ended: the next one begins (concatenated .zst files are one stream)
                self._d = self._zstd.ZstdDecompressor().decompressobj()
            try:
                out.append(self._d.decompress(data))
            except self._zstd.ZstdError as e:
                raise _BadStream(f"zstandard: {e}") from e
            data = self._d.unused_data if self._d.eof else b""
        return b"".join(out)


def _text(url: str, f: BinaryIO) -> tuple[BinaryIO, bool]:
    """The object's lines as a stream, decompressed if its first bytes say so (its name is not asked:
    ``.json.gz``, ``.ndjson.zst`` or no suffix at all read the same); and whether they are its own bytes."""
    head = f.read(4)
    f.seek(-len(head), io.SEEK_CUR)  # within the first buffer: nothing is fetched again
    if head.startswith(_GZIP):
        return gzip.GzipFile(fileobj=f), False  # type: ignore[return-value]
    if head.startswith(_ZSTD):
        zstd = need("zstandard", f"{url}: zstandard-compressed JSON lines", "zstd")
        return io.BufferedReader(_Zstd(f, zstd)), False  # type: ignore[return-value]
    return f, True


def _from_byte(url: str, f: BinaryIO, offset: int) -> BinaryIO:
    """Plain text ``f`` from byte ``offset``, which ended the last line delivered before a restart."""
    f.seek(offset - 1)
    if f.read(1) != b"\n":
        raise ObjectChangedError(f"{url}: byte {offset} no longer starts a line, as it did when the loader's "
                                 f"state was saved: the object changed since; start the epoch again")
    return f


@functional_datapipe("load_jsonl")
class JsonlLoader(RowLoader):
    """Parses ``(url, payload)`` of JSON lines objects into one object per line, in file order
    (functional name: ``load_jsonl``).

    It yields the parsed object itself (a dict for the usual ``{"text": ...}`` lines of LLM data), since
    that is what a tokenizer or collate function takes; ``with_url=True`` yields ``(url, obj)`` instead,
    for mixing sources or tracing a sample back. Blank lines are skipped.

    Gzip (``.jsonl.gz``) and zstandard (``.jsonl.zst``, needs ``pip install 's3pipes[zstd]'``) are told by
    the first bytes and decompressed as the object streams in, concatenated frames or members included:
    with ``read_s3(stream=True)`` memory stays at a few parts of the object whatever its size (one line
    is held whole). A line that is not JSON raises ``CorruptDataError`` (a ``ValueError``) naming the
    object and the line number, after the lines before it; so does a cut or damaged compressed stream.
    ``skip_corrupt=True`` logs a warning and counts it in ``skipped`` instead: a bad line is passed over,
    a damaged stream ends its object.

    A restart from a saved state (``state_dict``, which ``StatefulDataLoader`` saves) reopens only the
    object it was in. Plain text is entered at the byte after the last line delivered: the stream seeks
    there before its first GET, so nothing before it is fetched again. A compressed object is read from
    its start again and the lines delivered are skipped unparsed, as a compressed stream cannot be
    entered midway. The number of lines is not known without reading every object, so there is no ``len()``.

    Args:
        source_datapipe: ``(url, payload)`` of each object, usually ``read_s3(stream=True)``; the payload
            is bytes or a seekable file object, which is closed when read.
        with_url: yield ``(url, obj)`` instead of ``obj`` (default ``False``).
        skip_corrupt: log a bad line or damaged object, count it in ``skipped`` and go on (default
            ``False``: raise ``CorruptDataError``).
        loads: parses one line's bytes (default ``json.loads``; ``orjson.loads`` is several times faster).

    Example:
        >>> import fsspec, gzip
        >>> from torch.utils.data.datapipes.iter import IterableWrapper
        >>> import s3pipes
        >>> fs = fsspec.filesystem("memory")
        >>> fs.pipe("/jsonl-doc/a.jsonl", b'{"text": "hello"}\\n\\n{"text": "world"}\\n')
        >>> fs.pipe("/jsonl-doc/b.jsonl.gz", gzip.compress(b'{"text": "again"}\\n'))
        >>> dp = IterableWrapper(["memory://jsonl-doc/"]).list_s3().read_s3(stream=True)  # or s3://bucket/prefix/
        >>> list(dp.load_jsonl())
        [{'text': 'hello'}, {'text': 'world'}, {'text': 'again'}]
        >>> next(iter(dp.load_jsonl(with_url=True)))
        ('memory://jsonl-doc/a.jsonl', {'text': 'hello'})
    """

    def __init__(self, source_datapipe: IterDataPipe[tuple[str, Payload]], with_url: bool = False,
                 skip_corrupt: bool = False, loads: Callable[[bytes], Any] = json.loads) -> None:
        super().__init__(source_datapipe, with_url, skip_corrupt)
        self.loads = loads

    def rows(self, url: str, f: BinaryIO, at: At | None) -> Iterator[tuple[Any, At]]:
        # ``lines``: lines read so far, blank and skipped ones included; ``offset``: the bytes they take
        # (plain text only), where a restart goes on.
        lines, offset = (at["lines"], at["offset"]) if at else (0, 0)
        try:
            if offset:
                text = _from_byte(url, f, offset)
            else:
                text, plain = _text(url, f)
                offset = 0 if plain else None
                collections.deque(itertools.islice(text, lines), maxlen=0)  # delivered before a restart
            for data in text:
                lines += 1
                if offset is not None:
                    offset += len(data)
                try:
                    row = self.loads(data)
                except ValueError as e:  # json's errors, and bytes that are not UTF-8
                    if data.isspace():
                        continue
                    error = CorruptDataError(f"{url}: line {lines} is not JSON ({e}): {bytes(data[:60])!r}")
                    if not self.skip_corrupt:
                        raise error from e
                    self.skip(error)
                    continue
                yield row, {"lines": lines, "offset": offset}
        except _DAMAGED as e:
            raise CorruptDataError(f"{url}: damaged compressed stream after line {lines}: {e}") from e
