"""What the row pipes (``load_jsonl``, ``load_parquet``) share: an object's rows, resumable mid-object."""

from __future__ import annotations

import logging
from typing import Any, BinaryIO, Iterator, TypedDict, TypeVar

from torch.utils.data import IterDataPipe

from ..errors import CorruptDataError
from ._payload import Payload, marked, payload_file
from ._state import Cursor, Mark, Resumable

log = logging.getLogger("s3pipes")

T = TypeVar("T")
At = dict[str, Any]  # where in an object the next row starts, in the terms of the pipe that reads it


class RowPos(TypedDict):
    epoch: int
    source: Mark | None  # the object being read (or the next one)
    at: At | None  # where in it the next row starts (None: at its start)


class RowLoader(Resumable[RowPos, Any], IterDataPipe[Any]):
    """Base of the row pipes: :meth:`rows` (one object's rows, each with where the next one starts) over
    each object of the source. A restart reopens only the object it was in and hands :meth:`rows` the
    place reached, so a reader that can go there directly (a byte offset, a row group) reads nothing
    before it. With ``skip_corrupt``, a damaged object is logged as a warning and counted in ``skipped``
    instead of ending the epoch; the rows it yielded before the damage stay delivered.

    Not ``read_s3``'s ``resume_members``: that hint counts the members of an indexed tar, and a part of a
    plain object is always its whole, which these pipes then enter where they were."""

    def __init__(self, source_datapipe: IterDataPipe[tuple[str, Payload]], with_url: bool = False,
                 skip_corrupt: bool = False) -> None:
        self.source_datapipe = source_datapipe
        self.with_url = with_url
        self.skip_corrupt = skip_corrupt
        self.skipped = 0

    def rows(self, url: str, f: BinaryIO, at: At | None) -> Iterator[tuple[Any, At]]:
        """Each row of the object ``url`` from ``at`` on (``None``: its start), with where the row after
        it starts; damage raises :class:`CorruptDataError` naming ``url``."""
        raise NotImplementedError

    def _begin(self) -> RowPos:
        return {"epoch": self.epoch, "source": None, "at": None}

    def _run(self, start: RowPos, src: Cursor) -> Iterator[Any]:
        at = start["at"]
        for mark, (url, payload) in marked(src):
            url = str(url)  # a part of an indexed prefix is a str subclass that carries its index entry
            try:
                with payload_file(payload) as f:
                    for (row, after), last in ahead(self.rows(url, f, at)):
                        # After an object's last row the position points past it: a restart does not reopen it.
                        self._pos = {**start, "source": src.mark() if last else mark, "at": None if last else after}
                        yield (url, row) if self.with_url else row
            except CorruptDataError as e:
                if not self.skip_corrupt:
                    raise
                self.skip(e)
            at = None

    def skip(self, error: CorruptDataError) -> None:
        """Pass over damaged data (``skip_corrupt``): a warning, counted in ``skipped``."""
        self.skipped += 1
        log.warning("skipping corrupt data (%d so far in this process): %s", self.skipped, error)


_END = object()


def ahead(items: Iterator[T]) -> Iterator[tuple[T, bool]]:
    """Each item with whether it is the last, read one ahead. Damage found reading ahead is raised
    after the item before it is handed on, so every row before the damage is delivered."""
    current = next(items, _END)
    while current is not _END:
        try:
            following = next(items, _END)
        except CorruptDataError:
            yield current, True  # type: ignore[misc]
            raise
        yield current, following is _END  # type: ignore[misc]
        current = following
