"""Which image backend of ``decode()`` is fastest here: ms per 256x256 RGB image, JPEG and PNG, to a
(3, H, W) uint8 tensor, through ``s3pipes.decoders.ImageDecoder`` as ``decode()`` calls it. A few
seconds on one core; backends not installed are left out. The order of ``decoders.AUTO`` comes from it.

    python benchmarks/decode_images.py            # pip install 's3pipes[fast-images]' for all three
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
from PIL import Image

from s3pipes.decoders import BACKENDS, ImageDecoder, installed


def photo_like(size: int, seed: int = 0) -> Image.Image:
    """Smooth gradients with a little noise: compresses as photos do, where pure noise would not. ``seed``
    shifts the gradients and draws other noise, so that the images of a dataset differ
    (benchmarks/images.py)."""
    y, x = np.mgrid[0:size, 0:size] / size
    shift = 0.37 * seed
    rgb = np.stack([np.sin(6 * x + shift) * 0.5 + 0.5, x * y, np.cos(4 * y + shift) * 0.5 + 0.5], axis=2) * 220
    rgb += np.random.default_rng(seed).normal(0, 8, rgb.shape)
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8))


def encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def ms_per_image(decoder: ImageDecoder, data: bytes, seconds: float) -> float:
    """The best of five runs of about ``seconds / 5`` each, so that a busy neighbour costs less."""
    decoder(data)  # warm up: imports, first allocations
    best = float("inf")
    for _ in range(5):
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 5:
            decoder(data)
            n += 1
        best = min(best, (time.perf_counter() - start) / n)
    return best * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=1.0, help="per backend and format")
    args = parser.parse_args()
    img = photo_like(args.size)
    for fmt, key in (("JPEG", "jpeg"), ("PNG", "png")):
        data = encoded(img, fmt)
        for name, backend in BACKENDS.items():
            if key in backend.formats and installed(name):
                ms = ms_per_image(ImageDecoder("torchrgb8", name), data, args.seconds)
                print(f"{fmt:4} {len(data):7,d} bytes  {name:10}  {ms:6.3f} ms")


if __name__ == "__main__":
    main()
