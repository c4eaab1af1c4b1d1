"""The clients benchmarks/run.py measures, s3pipes' and its peers', by name in ``CLIENTS``.

s3pipes (``read_s3()``, ``read_s3().load_tar()``, ``S3IterableDataset``), boto3 (one GET at a time, and
64 threads), s3fs's ``cat``, obstore's async GETs gathered in batches, and s3torchconnector's
``S3IterableDataset``; the images clients are benchmarks/images.py's. Each reads ``s3://BUCKET/key`` URLs
from the endpoint ``ep`` (run.py's nginx, or the delay proxy in front of it) and yields byte counts.
Also here: what every client is given, the bucket, the region requests are signed for, and the
concurrency.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Any, Callable, Iterator

import images

BUCKET = "bench"
KiB, MiB = 1 << 10, 1 << 20
REGION = "us-east-1"
CONCURRENCY = 64


# ------------------------------------------------------------------------------------------ clients
# Each returns an iterator of byte counts, one per object or sample, so the caller can stop at the cap.


def c_s3pipes(urls: list[str], ep: str) -> Iterator[int]:
    from torch.utils.data.datapipes.iter import IterableWrapper

    import s3pipes

    cfg = s3pipes.S3Config(endpoint_url=ep, region=REGION, max_concurrency=CONCURRENCY)
    for _, data in IterableWrapper(urls).read_s3(config=cfg):
        yield len(data)


def c_s3pipes_tar(urls: list[str], ep: str, stream: bool = False) -> Iterator[int]:
    from torch.utils.data.datapipes.iter import IterableWrapper

    import s3pipes

    cfg = s3pipes.S3Config(endpoint_url=ep, region=REGION, max_concurrency=CONCURRENCY)
    for _, data in IterableWrapper(urls).read_s3(stream=stream, config=cfg).load_tar():
        yield len(data)


def c_s3pipes_dataset(urls: list[str], ep: str) -> Iterator[int]:
    import s3pipes

    os.environ["S3_ENDPOINT_URL"] = ep
    for _, data in s3pipes.S3IterableDataset(urls):
        yield len(data)


def _boto(ep: str) -> Any:
    import boto3
    import botocore.config

    cfg = botocore.config.Config(s3={"addressing_style": "path"}, max_pool_connections=CONCURRENCY + 4)
    return boto3.client("s3", endpoint_url=ep, region_name=REGION, config=cfg)


def c_boto3_seq(urls: list[str], ep: str) -> Iterator[int]:
    s3 = _boto(ep)
    for u in urls:
        b, _, k = u[5:].partition("/")
        yield len(s3.get_object(Bucket=b, Key=k)["Body"].read())


def c_boto3_threads(urls: list[str], ep: str) -> Iterator[int]:
    from concurrent.futures import ThreadPoolExecutor

    s3 = _boto(ep)

    def get(u: str) -> int:
        b, _, k = u[5:].partition("/")
        return len(s3.get_object(Bucket=b, Key=k)["Body"].read())

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        yield from pool.map(get, urls)


def c_s3fs(urls: list[str], ep: str) -> Iterator[int]:
    import s3fs

    fs = s3fs.S3FileSystem(key="bench", secret="bench", client_kwargs={"endpoint_url": ep, "region_name": REGION},
                           config_kwargs={"s3": {"addressing_style": "path"}})
    for i in range(0, len(urls), CONCURRENCY):
        for data in fs.cat([u[5:] for u in urls[i : i + CONCURRENCY]]).values():
            yield len(data)


def c_obstore(urls: list[str], ep: str, join: bool = False) -> Iterator[int]:
    """obstore's async GETs: an object's first part, then the rest as parallel ranged parts of 8 MiB, all
    in flight at once up to the concurrency; ``join`` makes each object's parts one ``bytes``, as a
    reader that hands on contiguous bytes must."""
    import asyncio

    import obstore
    from obstore.store import S3Store

    store = S3Store(BUCKET, endpoint=ep, region=REGION, virtual_hosted_style_request=False,  # signed, as ours
                    client_options={"allow_http": True}, access_key_id="bench", secret_access_key="bench")
    part = 8 * MiB

    async def one(key: str, gate: asyncio.Semaphore) -> int:
        async with gate:
            res = await obstore.get_async(store, key, options={"range": (0, part)})
            size = res.meta["size"]
            first = await res.bytes_async()
        if size <= part:
            return len(first.to_bytes() if join else first)

        async def rng(s: int) -> Any:
            async with gate:
                return await obstore.get_range_async(store, key, start=s, end=min(s + part, size))

        parts = [first, *await asyncio.gather(*(rng(s) for s in range(part, size, part)))]
        return len(b"".join(parts)) if join else sum(len(p) for p in parts)

    async def batch(keys: list[str]) -> list[int]:
        gate = asyncio.Semaphore(CONCURRENCY)
        return await asyncio.gather(*(one(k, gate) for k in keys))

    keys = [u[5:].partition("/")[2] for u in urls]
    for i in range(0, len(keys), 4 * CONCURRENCY):  # batches, so the time cap can stop it
        yield from asyncio.run(batch(keys[i : i + 4 * CONCURRENCY]))


def c_s3torchconnector(urls: list[str], ep: str) -> Iterator[int]:
    from s3torchconnector import S3ClientConfig, S3IterableDataset

    ds = S3IterableDataset.from_objects(urls, region=REGION, endpoint=ep,
                                        s3client_config=S3ClientConfig(force_path_style=True))
    for obj in ds:
        yield len(obj.read())


CLIENTS: dict[str, Callable[[list[str], str], Iterator[int]]] = {
    "s3pipes": c_s3pipes, "s3pipes tar": c_s3pipes_tar, "s3pipes tar streamed": partial(c_s3pipes_tar, stream=True),
    "s3pipes S3IterableDataset": c_s3pipes_dataset,
    "boto3 sequential": c_boto3_seq, "boto3 64 threads": c_boto3_threads, "s3fs cat": c_s3fs,
    "obstore gather": c_obstore, "obstore gather joined": partial(c_obstore, join=True), "s3torchconnector": c_s3torchconnector, **images.CLIENTS,
}
