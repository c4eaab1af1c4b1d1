"""The demo's parts, shared by ``s3pipes demo`` and ``notebooks/explore.ipynb``: a local S3 endpoint, a
synthetic image dataset in webdataset tar shards, and a tiny model trained on it straight from the bucket.

Needs the ``demo`` extra (``pip install 's3pipes[demo]'``: moto's server, and Pillow and numpy, which
write the PNGs and which ``decode()`` reads them with).
"""

from __future__ import annotations

import io
import logging
import os
import random
import tarfile
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, IterDataPipe
from torch.utils.data.datapipes.iter import IterableWrapper

from ._optional import need
from .accounting import usage
from .config import S3Config
from .s3 import S3Client, reset_clients
from .s3.usage import Usage
from .stores import client_for

log = logging.getLogger(__name__)

BUCKET = "s3pipes-demo"
CLASSES = 10
# One colour per class; the images are that colour, with noise and a random square, so a model must look.
_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
            (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (128, 128, 128)]


def _need(module: str) -> Any:
    return need(module, "the demo", "demo")


@dataclass
class Endpoint:
    """A moto S3 server on 127.0.0.1 holding the demo bucket. ``env`` is what a shell or notebook
    exports to reach it; :func:`start_endpoint` has already set it in this process."""

    server: Any
    url: str

    @property
    def env(self) -> dict[str, str]:
        return {"S3_ENDPOINT_URL": self.url, "AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo",
                "AWS_REGION": "us-east-1"}

    def stop(self) -> None:
        self.server.stop()

    def __enter__(self) -> Endpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_endpoint() -> Endpoint:
    """Start a local S3 endpoint on a free port, point this process (and the DataLoader workers it
    starts) at it through the environment, and create the ``s3pipes-demo`` bucket."""
    server = _need("moto.server").ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request would bury the demo
    server.start()
    host, port = server.get_host_and_port()
    endpoint = Endpoint(server, f"http://{host}:{port}")
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(name, None)  # the demo's keys, not a profile's, sign its requests
    os.environ.update(endpoint.env)
    reset_clients()  # a client built before would still point at the old endpoint
    S3Client(S3Config(endpoint_url=endpoint.url)).create_bucket(f"s3://{BUCKET}/")
    log.info("demo S3 endpoint at %s", endpoint.url)
    return endpoint


def image(label: int, rng: random.Random, size: int = 32) -> bytes:
    """A PNG of class ``label``: its colour, noise, and a random dark square."""
    Image = _need("PIL.Image")
    noise = torch.randint(-40, 41, (size, size, 3), generator=torch.Generator().manual_seed(rng.getrandbits(63)))
    pixels = (torch.tensor(_PALETTE[label]) + noise).clamp(0, 255).to(torch.uint8)
    img = Image.frombytes("RGB", (size, size), pixels.numpy().tobytes())
    x, y, s = rng.randrange(size // 2), rng.randrange(size // 2), rng.randrange(4, size // 2)
    img.paste((20, 20, 20), (x, y, x + s, y + s))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_dataset(prefix: str = f"s3://{BUCKET}/train/", shards: int = 8, per_shard: int = 250,
                  seed: int = 0) -> list[str]:
    """Write ``shards`` tar shards of ``per_shard`` labelled images under ``prefix`` (any store) in
    webdataset layout (``s00013.cls`` + ``s00013.png``); returns the shard URLs."""
    rng = random.Random(seed)
    urls = []
    for shard in range(shards):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for i in range(shard * per_shard, (shard + 1) * per_shard):
                label = rng.randrange(CLASSES)
                for ext, data in (("cls", str(label).encode()), ("png", image(label, rng))):
                    info = tarfile.TarInfo(f"s{i:05d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        url = f"{prefix.rstrip('/')}/shard-{shard:04d}.tar"
        with client_for(url).open_write(url) as f:
            f.write(buf.getvalue())
        urls.append(url)
    return urls


def tiny_model() -> nn.Module:
    """A small convolutional classifier for the demo's 32x32 images."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, CLASSES),
    )


def pipeline(prefix: str, config: S3Config | None = None) -> IterDataPipe[tuple[torch.Tensor, int]]:
    """The README's chain over the shards under ``prefix``, ending in ``(image, label)`` pairs: a uint8
    tensor (3, H, W) and an int, which a DataLoader with a ``batch_size`` stacks into two tensors."""
    # Shuffled before decoding, so that the buffer holds compressed PNGs rather than pixels.
    return (IterableWrapper([prefix]).list_s3(masks="*.tar", config=config).shuffle_shards()
            .read_s3(stream=True, config=config).load_tar().group_samples().shuffle_buffer(500)
            .decode().to_tuple("png", "cls"))


@dataclass
class EpochStats:
    samples: int
    bytes: int
    seconds: float
    first_loss: float
    last_loss: float
    usage: Usage  # the epoch's S3 requests, summed over the workers
    first_batch: str  # what the loader yielded, e.g. "images (64, 3, 32, 32) uint8, labels (64,) int64"

    # One rate, one meaning: samples over the epoch's wall clock, from asking for the first batch (so
    # worker start-up counts) to the last optimizer step; the CLI's progress bar averages over the same span.
    def __str__(self) -> str:
        return (f"{self.samples} samples, {self.bytes / 1e6:.1f} MB in {self.seconds:.1f} s: "
                f"{self.samples / self.seconds:.0f} samples/s, {self.bytes / 1e6 / self.seconds:.2f} MB/s "
                f"(epoch average, worker start-up included); loss {self.first_loss:.2f} -> {self.last_loss:.2f}")


def train_epoch(prefix: str, workers: int = 2, batch_size: int = 64, config: S3Config | None = None,
                progress: Callable[[int], object] | None = None) -> EpochStats:
    """Train :func:`tiny_model` for one epoch on the shards under ``prefix``, streamed through a
    DataLoader with ``workers`` workers. ``progress(0)`` is called once when the epoch's clock starts
    (just before the first batch is asked for), then ``progress(n)`` after each batch of ``n`` samples,
    so a progress bar can time the same span as the returned :class:`EpochStats`."""
    nbytes = sum(o.size for o in client_for(prefix, config).list(prefix) if o.url.endswith(".tar"))
    model = tiny_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = DataLoader(pipeline(prefix, config), batch_size=batch_size, num_workers=workers)
    losses: list[float] = []
    samples = 0
    first_batch = "no batch"
    if progress is not None:
        progress(0)
    start = time.perf_counter()
    for images, labels in loader:
        if not losses:
            first_batch = f"images {_shape(images)}, labels {_shape(labels)}"
        # The workers hand over uint8 pixels, a quarter of the bytes of floats; the model takes [0, 1].
        loss = nn.functional.cross_entropy(model(images.float() / 255), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        samples += len(labels)
        if progress is not None:
            progress(len(labels))
    seconds = time.perf_counter() - start
    tail = losses[-5:] or [float("nan")]
    return EpochStats(samples, nbytes, seconds, losses[0] if losses else float("nan"), sum(tail) / len(tail),
                      usage(loader), first_batch)


def _shape(tensor: torch.Tensor) -> str:
    return f"{tuple(tensor.shape)} {str(tensor.dtype).removeprefix('torch.')}"
