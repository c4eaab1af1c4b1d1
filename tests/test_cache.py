"""The local shard cache, with every request counted at the HTTP level by a fault proxy that injects nothing."""

from __future__ import annotations

import collections
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
from faultproxy import FaultProxy
from shards import samples, tar_bytes
from torch.utils.data import DataLoader
from torch.utils.data.datapipes.iter import IterableWrapper

from s3pipes import S3Config, ShardCache, client_for


@pytest.fixture
def proxy(endpoint: str):  # noqa: ANN201
    with FaultProxy(endpoint) as p:
        yield p


def object_gets(proxy: FaultProxy) -> list[str]:
    """Paths of the GETs of objects (listing requests carry a query string)."""
    return [r.path for r in proxy.log if r.method == "GET" and "?" not in r.path
            and not r.path.endswith("/_s3pipes_index.jsonl.gz")]  # the lister's lookup of an index


def shards(put, bucket: str, n: int) -> list[str]:  # noqa: ANN001
    return [put(f"s3://{bucket}/train/shard-{i}.tar", tar_bytes(samples(i * 10, 10))) for i in range(n)]


def chain(bucket: str, cache_dir: str, proxy: FaultProxy, **read: object):  # noqa: ANN201
    cfg = S3Config(endpoint_url=proxy.url)
    return (IterableWrapper([f"s3://{bucket}/train/"]).list_s3(config=cfg).shuffle_shards()
            .read_s3(config=cfg, cache_dir=cache_dir, **read).load_tar())


def test_second_epoch_sends_no_gets(put, bucket: str, proxy: FaultProxy, tmp_path) -> None:  # noqa: ANN001
    urls = shards(put, bucket, 6)
    loader = DataLoader(chain(bucket, str(tmp_path), proxy, stream=True), batch_size=None, num_workers=2)
    first = collections.Counter(name for name, _ in loader)
    assert len(first) == 120 and set(first.values()) == {1}
    assert sorted(object_gets(proxy)) == sorted(f"/{bucket}/train/shard-{i}.tar" for i in range(6)), \
        "epoch one downloads each shard once"
    before = len(object_gets(proxy))
    second = collections.Counter(name for name, _ in loader)
    assert second == first
    assert len(object_gets(proxy)) == before, "epoch two reads every shard from disk"
    cached = [e for e in os.listdir(tmp_path) if not e.startswith(".")]
    assert len(cached) == len(urls) and all(e.endswith(".tar") for e in cached)


def test_workers_wanting_the_same_shard_download_it_once(put, bucket: str, proxy: FaultProxy,  # noqa: ANN001
                                                         tmp_path) -> None:  # noqa: ANN001
    shards(put, bucket, 4)
    dp = chain(bucket, str(tmp_path), proxy, shard=False)  # every worker reads every shard, at the same time
    got = collections.Counter(name for name, _ in DataLoader(dp, batch_size=None, num_workers=3))
    assert len(got) == 80 and set(got.values()) == {3}
    assert len(object_gets(proxy)) == 4, "the lock lets one worker download while the others wait for it"
    url = f"s3://{bucket}/train/shard-0.tar"
    store = client_for(url, S3Config(endpoint_url=proxy.url))
    cache = ShardCache(tmp_path / "threads", max_bytes=1 << 30)
    with ThreadPoolExecutor(8) as pool:
        datas = list(pool.map(lambda _: cache.read(url, store), range(8)))
    assert len(set(datas)) == 1 and len(object_gets(proxy)) == 5
    assert not [e for e in os.listdir(tmp_path / "threads") if e.endswith(".part")], "no partial files left"


def test_least_recently_used_out_under_the_limit(put, bucket: str, proxy: FaultProxy, tmp_path) -> None:  # noqa: ANN001
    urls = shards(put, bucket, 4)
    size = len(tar_bytes(samples(0, 10)))
    store = client_for(urls[0], S3Config(endpoint_url=proxy.url))
    cache = ShardCache(tmp_path, max_bytes=int(2.5 * size))

    def fetch(i: int) -> None:
        cache.read(urls[i], store)

    def cached() -> set[int]:
        return {i for i in range(4) if os.path.exists(cache._file(urls[i])[0])}

    dead, live = tmp_path / ".crashed.part", tmp_path / ".downloading.part"
    dead.write_bytes(b"x")
    live.write_bytes(b"y")
    os.utime(dead, (0, 0))
    for i in (0, 1, 2):
        fetch(i)
    assert not dead.exists() and live.exists(), "a download dead for an hour is removed, a live one kept"
    assert cached() == {1, 2}, "shard 0 was used least recently"
    fetch(1)  # a hit refreshes shard 1
    gets = len(object_gets(proxy))
    fetch(3)
    assert cached() == {1, 3} and len(object_gets(proxy)) == gets + 1, "shard 2 goes, not the refreshed 1"
    assert sum(os.path.getsize(cache._file(urls[i])[0]) for i in cached()) <= cache.max_bytes
    with pytest.raises(FileNotFoundError, match=f"s3://{bucket}/train/nope.tar"):
        cache.read(f"s3://{bucket}/train/nope.tar", store)
    assert [e for e in os.listdir(tmp_path) if e.endswith(".part")] == [live.name], "a failed download leaves nothing"
