"""What the archive pipes share: turning a payload into a file object, naming corruption, skipping it."""

from __future__ import annotations

import io
import logging
from contextlib import contextmanager
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Union

from ..errors import CorruptArchiveError
from torch.utils.data import IterDataPipe

from ._state import ENDED, Cursor, Resumable

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


class ArchiveExpander(Resumable, IterDataPipe[tuple[str, bytes]]):
    """Base of the archive pipes: ``expand`` (one archive's members) over each shard of the source."""

    expand: Expand

    def __init__(self, source_datapipe: IterDataPipe[tuple[str, Payload]], skip_corrupt: bool = False) -> None:
        self.source_datapipe = source_datapipe
        self.skip_corrupt = skip_corrupt
        self.skipped = 0

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        return expand_shards(self, self.source_datapipe, type(self).expand, self._take_resume())


def expand_shards(holder: Any, shards: Iterable[tuple[str, Payload]], expand: Expand,
                  resume: dict[str, Any] | None) -> Iterator[tuple[str, bytes]]:
    """Expand each shard in turn, keeping ``holder._pos`` (the shard's source position and the members
    yielded from it) so a resumed epoch reopens only the shard it was in. With ``holder.skip_corrupt``,
    a corrupt shard is logged as a warning and counted in ``holder.skipped`` (members it yielded before
    the damage stay delivered) instead of ending the epoch."""
    if resume == ENDED:
        return holder._ended()
    src = Cursor(shards, resume and resume["shard"])
    done = resume["members"] if resume else 0
    holder._pos = {"shard": src.mark(), "members": done}
    return _expand(holder, src, expand, done)


_END = object()


def _expand(holder: Any, src: Cursor, expand: Expand, done: int) -> Iterator[tuple[str, bytes]]:
    while True:
        mark = src.mark()
        try:
            shard, payload = next(src)
        except StopIteration:
            break
        members = expand(shard, payload)
        try:
            for _ in range(done):  # delivered before the restart
                next(members, None)
            current, error = next(members, _END), None
            while current is not _END:
                # Reading one member ahead tells whether this one ends the shard: then a state taken now
                # points past the shard, and a restart does not download it again.
                try:
                    following = next(members, _END)
                except CorruptArchiveError as e:
                    following, error = _END, e
                done += 1
                last = following is _END
                holder._pos = {"shard": src.mark() if last else mark, "members": 0 if last else done}
                yield current
                current = following
            if error is not None:
                raise error
        except CorruptArchiveError as e:
            if not holder.skip_corrupt:
                raise
            holder.skipped += 1
            log.warning("skipping a corrupt shard (%d so far in this process): %s", holder.skipped, e)
        done = 0
    holder._pos = ENDED
