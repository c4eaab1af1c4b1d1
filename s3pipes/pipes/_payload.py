"""What the archive pipes share: turning a payload into a file object, naming corruption, skipping it."""

from __future__ import annotations

import io
import logging
from contextlib import contextmanager
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Union

from ..errors import CorruptArchiveError

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


def expand_shards(pipe: Any, shards: Iterable[tuple[str, Payload]], expand: Expand) -> Iterator[tuple[str, bytes]]:
    """Expand each shard in turn. With ``pipe.skip_corrupt``, a corrupt shard is logged as a warning
    and counted in ``pipe.skipped`` (members it yielded before the damage stay delivered) instead of
    ending the epoch."""
    for shard, payload in shards:
        try:
            yield from expand(shard, payload)
        except CorruptArchiveError as e:
            if not pipe.skip_corrupt:
                raise
            pipe.skipped += 1
            log.warning("skipping a corrupt shard (%d so far in this process): %s", pipe.skipped, e)
