"""Synthetic datasets for tests: small PNG images with labels, packed as tar or zip shards."""

from __future__ import annotations

import io
import tarfile
import zipfile

from PIL import Image


def png(i: int, size: int = 8) -> bytes:
    """A tiny PNG whose colour encodes ``i``, so an image can be checked against its label."""
    img = Image.new("RGB", (size, size), (i % 256, (i // 256) % 256, 7))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def label_of(png_bytes: bytes) -> int:
    r, g, _ = Image.open(io.BytesIO(png_bytes)).convert("RGB").getpixel((0, 0))
    return r + 256 * g


def samples(start: int, count: int) -> list[tuple[str, bytes]]:
    """Members of ``count`` samples, label before image, as webdataset writers lay them out."""
    out = []
    for i in range(start, start + count):
        out += [(f"s{i:05d}.cls", str(i).encode()), (f"s{i:05d}.png", png(i))]
    return out


def tar_bytes(members: list[tuple[str, bytes]], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def zip_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in members:
            z.writestr(name, data)
    return buf.getvalue()
