"""benchmarks/fakes3.py in small: boto3 pages through it, and list_s3 takes one listing per pipe (with
DataLoader workers), or one GET of the index that build_index writes there: counted by the server."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import boto3
import pytest
from torch.utils.data import DataLoader
from torch.utils.data.datapipes.iter import IterableWrapper

import s3pipes
from s3pipes import S3Config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from fakes3 import FakeS3  # noqa: E402

KEYS = 2100  # 3 pages, the last one short
INDEX_KEY = "train/_s3pipes_index.jsonl.gz"


@pytest.fixture
def fake() -> Iterator[FakeS3]:
    """A fake endpoint of its own (in a thread, on a free port), not the session's moto server."""
    with FakeS3(keys=KEYS) as server:
        yield server


def counts(server: FakeS3) -> dict:
    return server.server.stats.snapshot()


def test_boto3_pages_through_every_key(fake: FakeS3) -> None:
    s3 = boto3.client("s3", endpoint_url=fake.url, region_name="us-east-1")
    pages = list(s3.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix="train/"))
    keys = [o["Key"] for p in pages for o in p["Contents"]]
    assert keys == [f"train/shard-{i:08d}.bin" for i in range(KEYS)]
    assert len(pages) == counts(fake)["LIST"] == 3
    after = s3.list_objects_v2(Bucket="bench", Prefix="train/", StartAfter="train/shard-00002097.bin")
    assert [o["Key"] for o in after["Contents"]] == ["train/shard-00002098.bin", "train/shard-00002099.bin"]


def _epoch(fake: FakeS3) -> list[str]:
    cfg = S3Config(endpoint_url=fake.url)
    dp = IterableWrapper(["s3://bench/train/"]).list_s3(config=cfg).shuffle_shards().read_s3(config=cfg)
    return [url for url, _ in DataLoader(dp, batch_size=None, num_workers=2)]


def test_list_s3_lists_once_with_workers_and_not_at_all_with_an_index(fake: FakeS3) -> None:
    urls = _epoch(fake)
    assert sorted(urls) == [f"s3://bench/train/shard-{i:08d}.bin" for i in range(KEYS)]
    assert counts(fake)["LIST"] == -(-KEYS // 1000), "one listing's pages, not one listing per worker"

    s3pipes.build_index("s3://bench/train/", config=S3Config(endpoint_url=fake.url))
    fake.server.stats.reset()
    assert sorted(_epoch(fake)) == sorted(urls)
    seen = counts(fake)
    assert seen.get("LIST", 0) == 0
    assert seen["stored_gets"] == {INDEX_KEY: 1}


def test_index_loads_what_it_dumps() -> None:
    from s3pipes.index import Index, Shard

    shards = (Shard("s3://b/p/a.bin", 3, '"e"', "object", 1, 1),
              Shard("s3://b/p/b.tar", 2048, None, "tar", 1, 1, (("s0.png", 0, 512, 3),)))
    index = Index.loads(Index.of("s3://b/p/", shards).dumps(), "s3://b/p/")
    assert tuple(index) == shards and index[-1] == shards[-1] and len(index) == 2


def test_a_cut_or_damaged_index_says_to_rebuild() -> None:
    from s3pipes.index import Index, Shard

    shards = (Shard("s3://b/p/a.tar", 2048, None, "tar", 1, 1, (("s0.png", 0, 512, 3),)),)
    data = Index.of("s3://b/p/", shards).dumps()
    for bad in (data[:-5], data[: len(data) // 3], b"not gzip at all"):
        with pytest.raises(ValueError, match=r"rebuild it with `s3pipes index s3://b/p/`"):
            Index.loads(bad, "s3://b/p/")[0]
