"""The bucket of benchmarks/fakes3.py: millions of generated keys, never held as a list, merged in key
order with the objects PUT."""

from __future__ import annotations

import hashlib
import threading
from bisect import bisect_left, bisect_right
from typing import Iterator


class Bucket:
    """``count`` generated objects named ``template.format(i)`` (sorted as their numbers are: the number
    is zero-padded), and the objects PUT, merged in one key order."""

    def __init__(self, name: str, count: int, size: int, template: str = "train/shard-{:08d}.bin") -> None:
        self.name, self.count, self.size, self.template = name, count, size, template
        self.stored: dict[str, tuple[bytes, str]] = {}  # key -> (data, etag)
        self.stored_keys: list[str] = []  # sorted
        self.uploads: dict[str, dict[int, bytes]] = {}  # multipart upload id -> parts
        self.lock = threading.Lock()

    def key(self, i: int) -> str:
        return self.template.format(i)

    def body(self, i: int) -> bytes:
        """Object ``i``'s bytes: its key and a newline, repeated to ``size``."""
        line = (self.key(i) + "\n").encode()
        return (line * (self.size // len(line) + 1))[: self.size]

    def first_after(self, key: str, inclusive: bool) -> int:
        """The number of the first generated key ``>= key`` (``> key`` unless ``inclusive``)."""
        lo, hi = 0, self.count
        while lo < hi:
            mid = (lo + hi) // 2
            k = self.key(mid)
            if k < key or (k == key and not inclusive):
                lo = mid + 1
            else:
                hi = mid
        return lo

    def find(self, key: str) -> tuple[bytes, str] | None:
        """``(data, etag)`` of the object at ``key``, if there is one."""
        with self.lock:
            if key in self.stored:
                return self.stored[key]
        i = self.first_after(key, inclusive=True)
        if i < self.count and self.key(i) == key:
            data = self.body(i)
            return data, etag_of(data)
        return None

    def put(self, key: str, data: bytes) -> str:
        etag = etag_of(data)
        with self.lock:
            if key not in self.stored:
                self.stored_keys.insert(bisect_left(self.stored_keys, key), key)
            self.stored[key] = (data, etag)
        return etag

    def delete(self, key: str) -> None:
        with self.lock:
            if self.stored.pop(key, None) is not None:
                self.stored_keys.pop(bisect_left(self.stored_keys, key))

    def walk(self, prefix: str, after: str) -> Iterator[tuple[str, int, str]]:
        """``(key, size, etag)`` of every object under ``prefix`` after ``after``, in key order: the
        generated keys and the stored ones merged."""
        start = max(prefix, after)
        i = self.first_after(start, inclusive=start != after)
        with self.lock:
            stored = self.stored_keys[bisect_right(self.stored_keys, after) if after >= prefix
                                      else bisect_left(self.stored_keys, prefix):]
        j = 0
        while True:
            gen = self.key(i) if i < self.count else None
            own = stored[j] if j < len(stored) else None
            if gen is not None and not gen.startswith(prefix):
                gen = None
            if own is not None and not own.startswith(prefix):
                own = None
            if gen is None and own is None:
                return
            if own is None or (gen is not None and gen < own):
                data = self.body(i)
                yield gen, len(data), etag_of(data)  # type: ignore[misc]
                i += 1
            else:
                found = self.find(own)
                if found is not None:  # deleted meanwhile
                    yield own, len(found[0]), found[1]
                j += 1


def etag_of(data: bytes) -> str:
    return '"' + hashlib.md5(data).hexdigest() + '"'
