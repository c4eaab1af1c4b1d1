"""The images rows of benchmarks/run.py: s3pipes' ``decode()`` against webdataset's own ``.decode()``.

Issue 14 asks that ``read_s3().load_tar().group_samples().decode()`` deliver at least webdataset's
images/s from ``WebDataset(urls).decode(...)``, on the same shards from the same nginx with the same
number of DataLoader workers, at 0 ms, and three times as many behind the delay proxy's round trip.
Both sides decode to RGB uint8 tensors (3, H, W), ``torchrgb8``, pick ``("jpg", "cls")`` and are
batched by the same DataLoader; each client yields every image's byte count, so the rows' MB/s are of
pixels, not of the shards.

The shards are webdataset's layout: ``000123.jpg`` (256x256, JPEG quality 90, gradients and noise as
benchmarks/decode_images.py makes them, so that they compress as photos do) then ``000123.cls``.
webdataset reads an ``http://`` shard its own way, through ``curl`` in a pipe (its ``gopen``); nginx
serves the bucket's files at ``/bucket/key``, so the URL is the endpoint's and the key's.

"Decode CPU ms/image" is measured apart from the read, in the client's process before its DataLoader
starts: each side's decoding stage over the same samples (the first shards, fetched untimed), the best
of five passes, so that it is decoding alone, without reading, parsing tars or passing tensors.
"""

from __future__ import annotations

import io
import itertools
import shutil
import tarfile
import time
import urllib.request
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

WORKERS = 2  # DataLoader workers, the same on both sides
# Batches, as training takes them: one shared-memory tensor per batch, where batch_size=None would pass
# every image through shared memory on its own and time that more than the decoding.
BATCH = 64
SPEC = "torchrgb8"
SIZE = 256


def write_shards(base: Path, keys: list[str], per_shard: int) -> None:
    """Write the image shards ``keys`` under ``base`` (the bucket's folder)."""
    from decode_images import encoded, photo_like

    for n, key in enumerate(keys):
        (base / key).parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(base / key, "w") as tar:
            for i in range(n * per_shard, (n + 1) * per_shard):
                for ext, data in (("jpg", encoded(photo_like(SIZE, seed=i), "JPEG")), ("cls", str(i % 10).encode())):
                    info = tarfile.TarInfo(f"{i:06d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


# ------------------------------------------------------------------------------------------ clients


def c_s3pipes_images(urls: list[str], ep: str, backend: str = "pil") -> Iterator[int]:
    from torch.utils.data import DataLoader
    from torch.utils.data.datapipes.iter import IterableWrapper

    import s3pipes

    cfg = s3pipes.S3Config(endpoint_url=ep)  # the region and keys: the environment run.one() sets
    dp = (IterableWrapper(urls).read_s3(config=cfg).load_tar().group_samples()
          .decode(SPEC, image_backend=backend).to_tuple("jpg", "cls"))
    yield from _per_image(DataLoader(dp, batch_size=BATCH, num_workers=WORKERS))


def c_webdataset_images(urls: list[str], ep: str) -> Iterator[int]:
    import webdataset as wds
    from torch.utils.data import DataLoader

    if shutil.which("curl") is None:  # else every worker fails on its first shard with a pipe error
        raise SystemExit("webdataset reads http:// shards through curl, which is missing: apt-get install curl")
    # shardshuffle=False: in the shards' order, as ours; webdataset warns when it is left unset.
    ds = wds.WebDataset([f"{ep}/{u[5:]}" for u in urls], shardshuffle=False).decode(SPEC).to_tuple("jpg", "cls")
    yield from _per_image(DataLoader(ds, batch_size=BATCH, num_workers=WORKERS))


def _per_image(loader: Iterable[tuple[Any, Any]]) -> Iterator[int]:
    """Each image's byte count, from batches of (images, labels)."""
    for batch, _ in loader:
        yield from itertools.repeat(batch[0].nbytes, len(batch))


# Each side's decoding stage alone, over samples already in memory: what the pipelines above apply.
def _s3pipes_stage(samples: list[dict[str, Any]], backend: str = "pil") -> Iterable[Any]:
    from torch.utils.data.datapipes.iter import IterableWrapper

    import s3pipes  # noqa: F401 - registers decode()

    return IterableWrapper(samples).decode(SPEC, image_backend=backend)


def _webdataset_stage(samples: list[dict[str, Any]]) -> Iterable[Any]:
    import webdataset as wds

    return wds.decode(SPEC)(iter(samples))


CLIENTS: dict[str, Callable[[list[str], str], Iterator[int]]] = {
    "s3pipes decode": c_s3pipes_images,
    "s3pipes decode auto": partial(c_s3pipes_images, backend="auto"),
    "webdataset decode": c_webdataset_images,
}
_STAGES: dict[str, Callable[[list[dict[str, Any]]], Iterable[Any]]] = {
    "s3pipes decode": _s3pipes_stage,
    "s3pipes decode auto": partial(_s3pipes_stage, backend="auto"),
    "webdataset decode": _webdataset_stage,
}


def _samples(urls: list[str], ep: str) -> list[dict[str, Any]]:
    """The samples of the first two shards, as a tar reader groups them (the key, then fields of bytes)."""
    samples: dict[str, dict[str, Any]] = {}
    for url in urls[:2]:
        with urllib.request.urlopen(f"{ep}/{url[5:]}") as r:
            data = r.read()
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                samples.setdefault(key, {"__key__": key})[ext] = tar.extractfile(member).read()
    return list(samples.values())


def decode_cost(client: str, urls: list[str], ep: str) -> dict[str, float]:
    """``{"decode_cpu_ms_per_image": ...}`` for an images client (``{}`` for the others): the CPU time of
    its decoding stage alone, per image, in this process, the best of five passes over the same samples."""
    if client not in _STAGES:
        return {}
    samples = _samples(urls, ep)
    best = float("inf")
    for _ in range(5):  # the best of five: a busy neighbour slows a pass, never speeds one up
        start = time.process_time()
        for _ in _STAGES[client](samples):
            pass
        best = min(best, time.process_time() - start)
    return {"decode_cpu_ms_per_image": 1000 * best / len(samples)}


def table(results: list[dict[str, Any]]) -> list[str]:
    """The images rows as a markdown table; client CPU counts the DataLoader workers (and webdataset's curl)."""
    rows = [r for r in results if r["data"] == "images"]
    if not rows:
        return []
    lines = ["| workload | client | images/s | client CPU ms/image | decode CPU ms/image (alone) | server CPU % |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['workload']} | {r['client']} | skipped: {r['error'][:60]} | | | |")
        else:
            lines.append(f"| {r['workload']} | {r['client']} | {r['items_per_s']:.0f} | {r['cpu_ms_per_item']:.2f} | "
                         f"{r['decode_cpu_ms_per_image']:.3f} | {r['server_cpu_pct']:.0f} |")
    return ["", *lines]
