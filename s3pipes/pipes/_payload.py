"""What the archive pipes share: turning a payload into a file object, naming corruption, skipping it."""

from __future__ import annotations

import io
import logging
from contextlib import contextmanager
from typing import Any, BinaryIO, Callable, Iterator, TypedDict, Union

from ..errors import CorruptArchiveError
from torch.utils.data import IterDataPipe

from ._plan import planned
from ._state import Cursor, Mark, Resumable
from .._names import split_name

log = logging.getLogger("s3pipes")

Payload = Union[bytes, bytearray, memoryview, BinaryIO]
Expand = Callable[[str, Payload], Iterator[tuple[str, bytes]]]


@contextmanager
def payload_file(payload: Payload) -> Iterator[BinaryIO]:
    """A file object over ``payload``; a stream handed in is closed afterwards."""
    f = io.BytesIO(payload) if isinstance(payload, (bytes, bytearray, memoryview)) else payload
    try:
        yield f  # type: ignore[misc]
    finally:
        f.close()


@contextmanager
def naming_corruption(kind: str, shard: str, errors: tuple[type[BaseException], ...],
                      member: list[str]) -> Iterator[None]:
    """Re-raise ``errors`` as CorruptArchiveError naming the shard and ``member[0]``, the member reached."""
    try:
        yield
    except errors as e:
        where = f" at member {member[0]!r}" if member and member[0] else ""
        raise CorruptArchiveError(f"{shard}: corrupt {kind} archive{where}: {e}") from e


class ExpandPos(TypedDict):
    epoch: int
    source: Mark | None  # the shard being expanded (or the next one)
    members: int  # members of it yielded so far


class ArchiveExpander(Resumable[ExpandPos, tuple[str, bytes]], IterDataPipe[tuple[str, bytes]]):
    """Base of the archive pipes: ``expand`` (one archive's members) over each shard of the source, so a
    resumed epoch reopens only the shard it was in. With ``skip_corrupt``, a corrupt shard is logged as a
    warning and counted in ``skipped`` instead of ending the epoch: the samples it yielded whole before
    the damage stay delivered, the sample the damage broke is dropped."""

    expand: Expand
    # Whether the members ``expand`` yields are the shard's regular members, one for one, as the
    # index counts them: then a restart inside an indexed shard fetches from the next member on.
    resume_by_offset = True

    def __init__(self, source_datapipe: IterDataPipe[tuple[str, Payload]], skip_corrupt: bool = False) -> None:
        self.source_datapipe = source_datapipe
        self.skip_corrupt = skip_corrupt
        self.skipped = 0

    def _begin(self) -> ExpandPos:
        return {"epoch": self.epoch, "source": None, "members": 0}

    def __len__(self) -> int:
        """The members this pipe yields in an epoch, here (a DataLoader worker's share, or in the main
        process a rank's): known from the prefix's index, else ``TypeError``."""
        return planned(self, "members")

    def _source(self, start: ExpandPos) -> Cursor:
        if self.resume_by_offset and hasattr(self.source_datapipe, "resume_members"):
            self.source_datapipe.resume_members = start.get("members", 0)  # read_s3 honours it for an indexed tar
        return super()._source(start)

    def _run(self, start: ExpandPos, src: Cursor) -> Iterator[tuple[str, bytes]]:
        done = start["members"]
        for mark, (shard, payload) in marked(src):
            members = self.expand(shard, payload)
            if self.skip_corrupt:
                members = whole_samples(members)
            try:
                for _ in range(done - getattr(shard, "resumed", 0)):  # delivered before the restart, and fetched
                    next(members, None)
                current, error = next(members, _END), None
                while current is not _END:
                    # Reading one member ahead tells whether this one ends the shard: then a state taken
                    # now points past the shard, and a restart does not download it again.
                    try:
                        following = next(members, _END)
                    except CorruptArchiveError as e:
                        following, error = _END, e
                    done += 1
                    last = following is _END
                    self._pos = {**start, "source": src.mark() if last else mark, "members": 0 if last else done}
                    yield current
                    current = following
                if error is not None:
                    raise error
            except CorruptArchiveError as e:
                if not self.skip_corrupt:
                    raise
                self.skipped += 1
                log.warning("skipping a corrupt shard (%d so far in this process): %s", self.skipped, e)
            done = 0


_END = object()


def marked(src: Cursor) -> Iterator[tuple[Mark, Any]]:
    """Each item of ``src`` with the mark before it: a restart inside the item pulls it again from there."""
    while True:
        mark = src.mark()
        try:
            item = next(src)
        except StopIteration:
            return
        yield mark, item


def whole_samples(members: Iterator[tuple[str, bytes]]) -> Iterator[tuple[str, bytes]]:
    """The members of each sample once the sample is whole: when the next sample begins, or the archive
    ends cleanly. A member of a damaged archive that raises then drops the sample it broke in, where
    yielding member by member would hand ``group_samples`` half a sample (a label without its image)."""
    held: list[tuple[str, bytes]] = []
    for name, data in members:
        if held and split_name(held[0][0])[:2] != split_name(name)[:2]:
            yield from held
            held = []
        held.append((name, data))
    yield from held
