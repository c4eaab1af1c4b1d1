"""What the archive pipes share: turning a payload into a file object, and naming corruption."""

from __future__ import annotations

import io
from contextlib import contextmanager
from typing import BinaryIO, Iterator, Union

from ..errors import CorruptArchiveError

Payload = Union[bytes, bytearray, memoryview, BinaryIO]


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
