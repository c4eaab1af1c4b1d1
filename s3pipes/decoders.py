"""Bytes to values, one format at a time: the decoders behind ``decode()``.

Format only: which field of a sample gets which decoder, and what a failure means for the epoch, is
the pipe's business (:mod:`s3pipes.pipes.decode`), and reading the bytes is the other pipes'. Kept
apart as webdataset keeps ``autodecode`` apart from its readers, so that a decoder can be used, or
replaced, on its own: ``decode(handlers={"tif": ImageDecoder("torchrgb8")})`` decodes one more
extension as an image.

Images are decoded by Pillow, or by simplejpeg (JPEG) or OpenCV (JPEG and PNG) when chosen; the
format is told by the bytes' signature, not the file name, so a PNG named ``.jpg`` still decodes. No
backend applies EXIF orientation (OpenCV would by default; it is told not to), so every backend hands
back the stored pixels, as webdataset's Pillow decoder does. Pillow and numpy come with
``pip install 's3pipes[images]'``, simplejpeg and OpenCV with ``s3pipes[fast-images]``; none is
imported before an image is decoded, so ``import s3pipes`` needs none of them.
"""

from __future__ import annotations

import functools
import importlib
import io
import json
from typing import Any, Callable, NamedTuple

import torch

from ._optional import need

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")

# webdataset's image specs (webdataset.autodecode.imagespecs), all of them: name -> (what comes back,
# element type, Pillow mode). numpy arrays are (H, W, C), or (H, W) for "l8"/"l", as webdataset's;
# torch tensors are (C, H, W), greyscale (1, H, W) where webdataset's are (H, W), so that a batch of
# them is (N, 1, H, W) as convolutions expect. Floats are float32 in [0, 1].
IMAGE_SPECS: dict[str, tuple[str, str | None, str]] = {
    "torchrgb8": ("torch", "uint8", "RGB"),
    "torchrgb": ("torch", "float", "RGB"),
    "torch": ("torch", "float", "RGB"),
    "torchl8": ("torch", "uint8", "L"),
    "torchl": ("torch", "float", "L"),
    "torchrgba8": ("torch", "uint8", "RGBA"),
    "torchrgba": ("torch", "float", "RGBA"),
    "rgb8": ("numpy", "uint8", "RGB"),
    "rgb": ("numpy", "float", "RGB"),
    "l8": ("numpy", "uint8", "L"),
    "l": ("numpy", "float", "L"),
    "rgba8": ("numpy", "uint8", "RGBA"),
    "rgba": ("numpy", "float", "RGBA"),
    "pil": ("pil", None, "RGB"),
    "pilrgb": ("pil", None, "RGB"),
    "pill": ("pil", None, "L"),
    "pilrgba": ("pil", None, "RGBA"),
}

_SIGNATURES = {"jpeg": b"\xff\xd8\xff", "png": b"\x89PNG\r\n\x1a\n"}


def _numpy() -> Any:
    return need("numpy", "decoding images and .npy", "images")


def _pil_image(data: bytes, mode: str) -> Any:
    Image = need("PIL.Image", "decoding images with Pillow", "images")
    img = Image.open(io.BytesIO(data))
    img.load()  # decode now, so that a damaged image fails here and not where its pixels are first used
    if img.mode.startswith("I;16"):  # 16-bit grey: Pillow's convert clips at 255, OpenCV keeps the high byte
        img = Image.fromarray((_numpy().asarray(img) >> 8).astype("uint8"))
    return img if img.mode == mode else img.convert(mode)


def _pil(data: bytes, mode: str) -> Any:
    arr = _numpy().asarray(_pil_image(data, mode))
    return arr[:, :, None] if arr.ndim == 2 else arr


def _simplejpeg(data: bytes, mode: str) -> Any:
    import simplejpeg

    return simplejpeg.decode_jpeg(data, colorspace="GRAY" if mode == "L" else mode)


def _cv2(data: bytes, mode: str) -> Any:
    import cv2

    grey = mode == "L"
    flags = (cv2.IMREAD_GRAYSCALE if grey else cv2.IMREAD_COLOR) | cv2.IMREAD_IGNORE_ORIENTATION
    arr = cv2.imdecode(_numpy().frombuffer(data, "uint8"), flags)
    if arr is None:  # OpenCV says nothing more
        raise ValueError("OpenCV cannot decode these bytes as an image")
    return arr[:, :, None] if grey else arr[:, :, ::-1]  # BGR to RGB: a view, copied once by the caller


class Backend(NamedTuple):
    module: str
    formats: tuple[str, ...]  # by signature; "other" is any format Pillow knows
    modes: tuple[str, ...]
    decode: Callable[[bytes, str], Any]  # (bytes, mode) -> (H, W, C) uint8 array


# Pillow is the default, and takes whatever a chosen backend cannot do (other formats, RGBA from OpenCV).
BACKENDS = {
    "pil": Backend("PIL.Image", ("jpeg", "png", "other"), ("RGB", "L", "RGBA"), _pil),
    "simplejpeg": Backend("simplejpeg", ("jpeg",), ("RGB", "L", "RGBA"), _simplejpeg),
    "cv2": Backend("cv2", ("jpeg", "png"), ("RGB", "L"), _cv2),
}
# "auto" takes the first installed backend of each list. Measured with benchmarks/decode_images.py on
# this project's shared 2-core machine (Pillow 13 with libjpeg-turbo, simplejpeg 1.9, OpenCV 5.0), ms per
# 256x256 RGB image to a (3, H, W) uint8 tensor, the best of three runs: JPEG (quality 90, 18 KB)
# Pillow 0.40, simplejpeg 0.26, OpenCV 0.33; PNG (135 KB) Pillow 1.00, OpenCV 1.01. All three JPEG
# decoders gave the same pixels. OpenCV is no faster on PNG, so "auto" leaves PNG to Pillow.
AUTO = {"jpeg": ("simplejpeg", "cv2", "pil"), "png": ("pil",), "other": ("pil",)}


@functools.lru_cache(maxsize=None)  # a failed import is not remembered by Python, and costs a path scan
def installed(backend: str) -> bool:
    """Whether ``backend``'s module imports here."""
    try:
        importlib.import_module(BACKENDS[backend].module)
    except ImportError:
        return False
    return True


class ImageDecoder:
    """Decodes image bytes to what ``spec`` names, a webdataset image spec (``torchrgb8``, ``torchrgb``,
    ``torchl8``, ``pil``, ... see ``IMAGE_SPECS``), each format by the backend picked for it when built
    (in the main process, before it travels to DataLoader workers): ``backend`` is ``"pil"``,
    ``"simplejpeg"``, ``"cv2"`` or ``"auto"`` (the fastest installed). As a handler,
    ``decode(handlers={"tif": ImageDecoder()})`` decodes one more extension as an image."""

    def __init__(self, spec: str = "torchrgb8", backend: str = "pil") -> None:
        if spec not in IMAGE_SPECS:
            raise ValueError(f"unknown image spec {spec!r}; use one of {', '.join(IMAGE_SPECS)}")
        if backend not in (*BACKENDS, "auto"):
            raise ValueError(f"unknown image backend {backend!r}; use 'auto' or one of {', '.join(BACKENDS)}")
        self.spec, self.backend = spec, backend
        self.kind, self.dtype, self.mode = IMAGE_SPECS[spec]
        if self.kind == "pil" and backend not in ("pil", "auto"):
            raise ValueError(f"image spec {spec!r} hands back Pillow images: use image_backend='pil' or 'auto'")
        if backend in ("simplejpeg", "cv2"):  # asked for by name: missing is an error now, not at the first image
            need(BACKENDS[backend].module, f"image_backend={backend!r}", "fast-images")
        self.by_format = {fmt: self._pick(fmt) for fmt in AUTO}

    def _pick(self, fmt: str) -> str:
        """The backend for images of ``fmt``: the one chosen (the first installed for "auto") if it can
        give this mode, else Pillow."""
        if self.kind == "pil":
            return "pil"
        for name in AUTO[fmt] if self.backend == "auto" else (self.backend,):
            if fmt in BACKENDS[name].formats and self.mode in BACKENDS[name].modes and installed(name):
                return name
        return "pil"

    def __repr__(self) -> str:
        return f"ImageDecoder({self.spec!r}, {self.backend!r})"

    def __call__(self, data: bytes) -> Any:
        if self.kind == "pil":
            return _pil_image(data, self.mode)
        fmt = next((f for f, signature in _SIGNATURES.items() if data.startswith(signature)), "other")
        arr = BACKENDS[self.by_format[fmt]].decode(data, self.mode)
        if self.kind == "numpy":
            if self.mode == "L":
                arr = arr[:, :, 0]
            # writable and contiguous, where Pillow's array is read-only and OpenCV's RGB a reversed view
            return arr.astype("float32") / 255 if self.dtype == "float" else _numpy().require(arr, requirements="CW")
        tensor = torch.from_numpy(arr.transpose(2, 0, 1).copy())  # one copy: channels first, contiguous
        return tensor.to(torch.float32).div_(255) if self.dtype == "float" else tensor


def _text(data: bytes) -> str:
    return data.decode("utf-8")


def _npy(data: bytes) -> Any:
    return _numpy().load(io.BytesIO(data), allow_pickle=False)  # a pickle from a bucket could run any code


def _torch(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


# extension -> (what it is decoded as, for error messages; the decoder): webdataset's simple ones, but
# not its pickles ("pyd", "pickle": loading one runs whatever code it holds) nor those needing more
# packages ("mp", "cbor", "ten"), which stay bytes unless a handler is given.
BASIC: dict[str, tuple[str, Callable[[bytes], Any]]] = {
    **dict.fromkeys(("cls", "cls2", "index", "inx", "id"), ("an integer", int)),
    **dict.fromkeys(("txt", "text", "transcript"), ("UTF-8 text", _text)),
    **dict.fromkeys(("json", "jsn"), ("JSON", json.loads)),
    "npy": ("a .npy array (no pickled objects)", _npy),
    **dict.fromkeys(("pt", "pth"), ("torch.load(weights_only=True)", _torch)),
}
