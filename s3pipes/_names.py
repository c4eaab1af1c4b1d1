"""How archive member names split into sample key and field: one rule for grouping and for the index."""

from __future__ import annotations


def split_name(name: str) -> tuple[str, str, str]:
    """``(where, key, extension)`` of a member name: ``s3://b/s.tar/a/s0.seg.png`` is
    ``("s3://b/s.tar/a", "s0", "seg.png")``. The members of one sample share ``where`` and ``key``."""
    where, _, base = name.rpartition("/")
    key, _, ext = base.partition(".")
    return where, key, ext
