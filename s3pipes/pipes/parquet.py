"""ParquetLoader: Parquet objects in, one dict per row (or Arrow record batches) out."""

from __future__ import annotations

import io
from types import ModuleType
from typing import Any, BinaryIO, Callable, Iterator, Sequence

from torch.utils.data import IterDataPipe
from torch.utils.data.datapipes._decorator import functional_datapipe

from ..errors import CorruptDataError
from ._payload import Payload
from .._optional import need
from ._rows import At, RowLoader

_ROWS_AT_ONCE = 1024  # rows decoded and turned into dicts at a time when yielding rows


def _pyarrow() -> tuple[ModuleType, ModuleType]:
    """pyarrow and pyarrow.parquet, or an ImportError that says how to install them."""
    return need("pyarrow", "load_parquet", "parquet"), need("pyarrow.parquet", "load_parquet", "parquet")


class _Ranges(io.RawIOBase):
    """The file pyarrow reads an object through: every read is one ranged read of exactly the bytes
    asked for. Parquet readers know their ranges (the footer, then each column chunk wanted), and
    through the buffered stream a seek and read would fetch a whole part of ``part_size`` from there
    and read on ahead. An S3 stream does it with :meth:`S3RawFile.read_range` (one GET pinned to the
    ETag); any other file, whose seek and read cost no request, with those. A failure of the stream is
    kept in ``error``, so that it is told apart from damage pyarrow finds."""

    def __init__(self, f: BinaryIO) -> None:
        super().__init__()
        ranged = getattr(getattr(f, "raw", None), "read_range", None)
        self._read: Callable[[int, int], bytes] = ranged or self._seek_read
        self._f, self._pos = f, 0
        self._size = f.seek(0, io.SEEK_END)
        self.error: BaseException | None = None

    def _seek_read(self, start: int, end: int) -> bytes:
        self._f.seek(start)
        return self._f.read(end - start)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._pos = offset + (0, self._pos, self._size)[whence]
        return self._pos

    def read(self, n: int = -1) -> bytes:  # type: ignore[override]
        end = self._size if n < 0 else min(self._pos + n, self._size)
        try:
            data = self._read(self._pos, end) if end > self._pos else b""
        except BaseException as e:
            self.error = e
            raise
        self._pos += len(data)
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def _after(group: int, done: int, rows: int) -> At:
    """Where the row after ``done`` rows of row group ``group`` (of ``rows``) is."""
    return {"group": group, "rows": done} if done < rows else {"group": group + 1, "rows": 0}


@functional_datapipe("load_parquet")
class ParquetLoader(RowLoader):
    """Reads ``(url, payload)`` of Parquet objects into one dict per row, or with ``batches=True`` into
    ``pyarrow.RecordBatch`` es of up to ``batch_size`` rows, in file order (functional name: ``load_parquet``).

    Through ``read_s3(stream=True)`` only the footer and the column chunks of ``columns`` are fetched,
    each with one ranged GET of exactly its bytes (chunks side by side share a GET): one column of ten
    costs about a tenth of the object. One row group's chunks of those columns are held at a time.
    Needs pyarrow: ``pip install 's3pipes[parquet]'``.

    Row groups are the unit of resume: a restart from a saved state (``state_dict``, which
    ``StatefulDataLoader`` saves) reopens only the object it was in, reads its footer, and fetches
    from the row group it was in, skipping the rows of it already delivered.
    An object that is not Parquet, or is damaged, raises ``CorruptDataError`` (a ``ValueError``) naming it;
    ``skip_corrupt=True`` logs a warning, counts it in ``skipped`` and goes on with the next object.
    A column that is not in an object raises ``ValueError`` naming both.

    Args:
        source_datapipe: ``(url, payload)`` of each object, usually ``read_s3(stream=True)``; the payload
            is bytes or a seekable file object, which is closed when read.
        columns: the columns to read (a nested field by its path, ``"a.b"``, or by ``"a"`` for all of it;
            default ``None``: all).
        batches: yield record batches instead of rows (default ``False``: one dict per row).
        batch_size: the most rows in a batch (default 65,536); a batch never spans row groups.
        with_url: yield ``(url, row)`` (or ``(url, batch)``) instead (default ``False``).
        skip_corrupt: log a damaged object, count it in ``skipped`` and go on (default ``False``: raise
            ``CorruptDataError``).

    Example:
        >>> import fsspec, io
        >>> import pyarrow as pa, pyarrow.parquet as pq
        >>> from torch.utils.data.datapipes.iter import IterableWrapper
        >>> import s3pipes
        >>> buf = io.BytesIO()
        >>> pq.write_table(pa.table({"id": [1, 2], "text": ["hello", "world"]}), buf)
        >>> fsspec.filesystem("memory").pipe("/parquet-doc/part-0.parquet", buf.getvalue())
        >>> dp = IterableWrapper(["memory://parquet-doc/"]).list_s3().read_s3(stream=True)  # or s3://bucket/prefix/
        >>> list(dp.load_parquet(columns=["text"]))
        [{'text': 'hello'}, {'text': 'world'}]
        >>> [batch.num_rows for batch in dp.load_parquet(batches=True)]
        [2]
    """

    def __init__(self, source_datapipe: IterDataPipe[tuple[str, Payload]], columns: Sequence[str] | None = None,
                 batches: bool = False, batch_size: int = 65_536, with_url: bool = False,
                 skip_corrupt: bool = False) -> None:
        _pyarrow()  # missing, an error here in the main process, not in every DataLoader worker
        super().__init__(source_datapipe, with_url, skip_corrupt)
        self.columns = None if columns is None else list(columns)
        self.batches, self.batch_size = batches, batch_size

    def rows(self, url: str, f: BinaryIO, at: At | None) -> Iterator[tuple[Any, At]]:
        pa, pq = _pyarrow()
        group, skip = (at["group"], at["rows"]) if at else (0, 0)
        src = _Ranges(f)
        try:
            # pre_buffer: the chunks of one row group are fetched together, neighbours in one GET.
            pf = pq.ParquetFile(src, pre_buffer=True)
            self._check_columns(url, pf)
            for g in range(group, pf.num_row_groups):
                rows, done = pf.metadata.row_group(g).num_rows, skip
                size = self.batch_size if self.batches else _ROWS_AT_ONCE
                for batch in pf.iter_batches(size, row_groups=[g], columns=self.columns):
                    if skip >= batch.num_rows:  # delivered before a restart
                        skip -= batch.num_rows
                        continue
                    batch, skip = batch.slice(skip), 0
                    if self.batches:
                        done += batch.num_rows
                        yield batch, _after(g, done, rows)
                        continue
                    for row in batch.to_pylist():
                        done += 1
                        yield row, _after(g, done, rows)
        except (pa.ArrowException, OSError) as e:
            if src.error is not None:  # the stream failed (a ConnectionError...), not the data
                raise
            raise CorruptDataError(f"{url}: not a readable Parquet file: {e}") from e

    def _check_columns(self, url: str, pf: Any) -> None:
        paths = [c.path for c in pf.schema]
        missing = [c for c in self.columns or () if not any(p == c or p.startswith(c + ".") for p in paths)]
        if missing:
            names = pf.schema_arrow.names
            raise ValueError(f"{url}: no column {', '.join(map(repr, missing))} in this Parquet file; it has {names}")
