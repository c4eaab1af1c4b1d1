"""SampleDecoder: samples of bytes in, the same samples with their members decoded out."""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping

from torch.utils.data import IterDataPipe
from torch.utils.data.datapipes._decorator import functional_datapipe

from ..decoders import BASIC, IMAGE_EXTENSIONS, ImageDecoder
from ..errors import DecodeError
from ._per_sample import DROPPED, PerSample, naming

log = logging.getLogger("s3pipes")

Handler = Callable[[bytes], Any]


@functional_datapipe("decode")
class SampleDecoder(PerSample[dict[str, Any]]):
    """Decodes each member of a sample by its extension (functional name: ``decode``), as webdataset's
    ``.decode()`` does:

    - ``jpg``, ``jpeg``, ``png``, ``webp``: an image as ``images`` says, by default a ``uint8`` tensor
      of shape (3, H, W), RGB;
    - ``cls``, ``cls2``, ``index``, ``inx``, ``id``: ``int``; ``txt``, ``text``, ``transcript``: ``str``
      (UTF-8); ``json``, ``jsn``: parsed JSON; ``npy``: a numpy array (``allow_pickle=False``);
      ``pt``, ``pth``: ``torch.load(weights_only=True, map_location="cpu")``;
    - any other extension stays bytes, and so does every ``__key__``-like field (starting ``__``) and
      every value that is not bytes (decoded already).

    A field's extension is everything after the first dot of the member's name (``s0.seg.png`` is
    field ``seg.png``), decoded by its last part (``png``), case aside. ``handlers`` win over the
    built-in decoders: a handler given for ``seg.png`` decodes only that field, one for ``png`` every
    field ending in it.

    A member that does not decode raises :class:`~s3pipes.DecodeError` (a ``ValueError``) naming the
    shard and member; with ``skip_corrupt=True`` the sample is logged as a warning, counted in
    ``skipped`` (in this process: each DataLoader worker counts its own) and left out. ``len()`` is the
    source's; with ``skip_corrupt`` it counts the samples left out too, as what is corrupt is known only
    once decoded (torch's DataLoader takes an iterable dataset's length as an estimate, and warns only
    when more arrive).

    Args:
        source_datapipe: samples, the dicts ``group_samples()`` yields.
        images: what images decode to, a webdataset image spec: ``"torchrgb8"`` (default), ``"torchrgb"``
            or ``"torch"`` (float32 in [0, 1]), ``"torchl8"``/``"torchl"`` (greyscale, (1, H, W)),
            ``"torchrgba8"``/``"torchrgba"``; numpy (H, W, C) arrays ``"rgb8"``, ``"rgb"``, ``"l8"``, ``"l"``,
            ``"rgba8"``, ``"rgba"``; Pillow images ``"pil"``, ``"pilrgb"``, ``"pill"``, ``"pilrgba"``.
        handlers: extension -> function of the member's bytes, used before the built-in decoders;
            ``s3pipes.decoders.ImageDecoder(spec)`` decodes another extension as an image.
        image_backend: ``"pil"`` (default), ``"simplejpeg"`` (JPEG), ``"cv2"`` (OpenCV: JPEG and PNG), or
            ``"auto"``, the fastest installed for each format; formats and modes a backend lacks go to
            Pillow (``pip install 's3pipes[fast-images]'`` installs simplejpeg and OpenCV).
        skip_corrupt: leave out a sample with a member that does not decode, logged and counted in
            ``skipped`` (default ``False``: raise ``DecodeError``).

    Example:
        >>> import io, json
        >>> from PIL import Image
        >>> from torch.utils.data.datapipes.iter import IterableWrapper
        >>> import s3pipes
        >>> png = io.BytesIO(); Image.new("RGB", (4, 2), (255, 0, 0)).save(png, format="PNG")
        >>> sample = {"__key__": "s0", "png": png.getvalue(), "cls": b"3", "json": b'{"w": 4}', "bin": b"?"}
        >>> out, = IterableWrapper([sample]).decode()
        >>> out["png"].shape, out["png"].dtype, out["png"][:, 0, 0].tolist(), out["cls"], out["json"], out["bin"]
        (torch.Size([3, 2, 4]), torch.uint8, [255, 0, 0], 3, {'w': 4}, b'?')
    """

    def __init__(self, source_datapipe: IterDataPipe[dict[str, Any]], images: str = "torchrgb8", *,
                 handlers: Mapping[str, Handler] | None = None, image_backend: str = "pil",
                 skip_corrupt: bool = False) -> None:
        self.source_datapipe = source_datapipe
        self.image = ImageDecoder(images, image_backend)
        self.handlers = {ext.lower().lstrip("."): fn for ext, fn in (handlers or {}).items()}
        self.skip_corrupt = skip_corrupt
        self.skipped = 0
        self._found: dict[str, tuple[str, Handler] | None] = {}  # field -> (what it decodes as, handler)

    def _handler(self, field: str) -> tuple[str, Handler] | None:
        """How ``field`` decodes, or ``None`` (it stays bytes): the handler given for its longest
        suffix, else the built-in decoder of its last part. Looked up once per field name."""
        if field not in self._found:
            parts = field.lower().split(".")
            suffixes = [".".join(parts[i:]) for i in range(len(parts))]
            given = next((s for s in suffixes if s in self.handlers), None)
            if given is not None:
                self._found[field] = (f"the handler given for {given!r}", self.handlers[given])
            elif parts[-1] in IMAGE_EXTENSIONS:
                self._found[field] = (f"an image by {self.image!r}", self.image)
            else:
                self._found[field] = BASIC.get(parts[-1])
        return self._found[field]

    def _apply(self, sample: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for field, value in sample.items():
            found = None if field.startswith("__") or not isinstance(value, bytes) else self._handler(field)
            if found is None:
                out[field] = value
                continue
            what, decode = found
            try:
                out[field] = decode(value)
            except ImportError:
                raise  # a missing package, not a corrupt member: skipping would drop every sample
            except Exception as e:
                error = DecodeError(f"{naming(sample, field)} does not decode as {what} ({type(e).__name__}: "
                                    f"{e}); decode(skip_corrupt=True) leaves such samples out, and "
                                    f"decode(handlers={{{field!r}: ...}}) decodes the field your way")
                if not self.skip_corrupt:
                    raise error from e
                self.skipped += 1
                log.warning("skipping a sample that does not decode (%d so far in this process): %s",
                            self.skipped, error)
                return DROPPED
        return out
