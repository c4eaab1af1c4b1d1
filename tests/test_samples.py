"""TarSamples (random access to the samples in tar shards) against moto's server."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import pytest
from faultproxy import FaultProxy
from shards import samples, tar_bytes, zip_bytes
from torch.utils.data import DataLoader, DistributedSampler
from torch.utils.data.datapipes.iter import IterableWrapper

import s3pipes
from s3pipes import S3Config, StaleIndexError, TarSamples

BIG = 100 << 10  # a member larger than the gap TarSamples fetches through


def shard_2() -> list[tuple[str, bytes]]:
    """Samples 20 to 25, with a member group_samples passes over and a sample with a large member."""
    return [*samples(20, 2), ("README", b"not a sample"), ("s00022.cls", b"22"), ("s00022.bin", b"x" * BIG),
            *samples(23, 3)]


@pytest.fixture(scope="module")
def data(boto, module_bucket: str) -> dict:  # noqa: ANN001
    shards = {"shard-0.tar": tar_bytes(samples(0, 10)), "shard-1.tar": tar_bytes(samples(10, 10)),
              "shard-2.tar": tar_bytes(shard_2())}
    for name, body in shards.items():
        boto.put_object(Bucket=module_bucket, Key=f"train/{name}", Body=body)
    prefix = f"s3://{module_bucket}/train/"
    s3pipes.build_index(prefix)
    expected = list(IterableWrapper([prefix]).list_s3().read_s3().load_tar().group_samples())
    return {"prefix": prefix, "shards": shards, "expected": expected}


def spans(tar: bytes) -> dict[str, tuple[int, int]]:
    """Each sample key's bytes in the shard, first member's data to last member's end, read by tarfile."""
    out: dict[str, tuple[int, int]] = {}
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        for info in t:
            key, _, ext = info.name.partition(".")
            if ext:
                out[key] = (out.get(key, (info.offset_data, 0))[0], info.offset_data + info.size)
    return out


def test_samples_equal_the_streaming_pipes(data: dict) -> None:
    ds, expected = TarSamples(data["prefix"]), data["expected"]
    assert len(ds) == len(expected) == 26
    assert [ds[i] for i in range(len(ds))] == expected
    assert ds.__getitems__(list(range(len(ds)))) == expected
    assert ds[-1] == expected[-1] and ds[-26] == expected[0]
    for bad in (26, -27):
        with pytest.raises(IndexError, match="out of range"):
            ds[bad]


def test_one_ranged_get_per_sample_covering_only_it(data: dict, spy: FaultProxy) -> None:
    ds = TarSamples(data["prefix"], config=S3Config(endpoint_url=spy.url))
    spy.log.clear()
    for i in (0, 13, 21, 22, 25):
        sample = ds[i]
        (get,) = spy.gets()
        spy.log.clear()
        shard = sample["__url__"].rsplit("/", 1)[-1]
        start, end = spans(data["shards"][shard])[sample["__key__"]]
        assert get.path.endswith(f"/train/{shard}")
        assert get.headers["range"] == f"bytes={start}-{end - 1}"
        assert get.headers["if-match"]  # pinned to the indexed ETag


def test_getitems_coalesces_neighbours_and_keeps_the_order(data: dict, spy: FaultProxy) -> None:
    ds = TarSamples(data["prefix"], config=S3Config(endpoint_url=spy.url))
    spy.log.clear()
    indices = [0, 5, 3, 12, 21, 20, 23, 0]
    assert ds.__getitems__(indices) == [data["expected"][i] for i in indices]
    # shard-0: 0, 3, 5 together; shard-1: 12; shard-2: 20 and 21 together, 23 alone (100 KiB past 21)
    gets = sorted((g.path.rsplit("/", 1)[-1], g.headers["range"]) for g in spy.gets())
    assert [shard for shard, _ in gets] == ["shard-0.tar", "shard-1.tar", "shard-2.tar", "shard-2.tar"]
    at = spans(data["shards"]["shard-0.tar"])
    assert ("shard-0.tar", f"bytes={at['s00000'][0]}-{at['s00005'][1] - 1}") in gets


def test_distributed_sampler_covers_every_sample_once(data: dict) -> None:
    ds = TarSamples(data["prefix"])
    keys = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0)
        keys += [s["__key__"] for s in ds.__getitems__(list(sampler))]
    assert sorted(keys) == sorted(s["__key__"] for s in data["expected"])
    assert keys != sorted(keys)  # shuffled across shards


def test_dataloader_with_2_workers(data: dict) -> None:
    ds = TarSamples(data["prefix"])
    ds[0]  # a client made here stays here: workers get the index and config
    assert pickle.loads(pickle.dumps(ds))._store is None
    loader = DataLoader(ds, batch_size=4, shuffle=True, num_workers=2, collate_fn=list)  # samples differ in keys
    keys = [s["__key__"] for batch in loader for s in batch]
    assert sorted(keys) == sorted(s["__key__"] for s in data["expected"])


def test_replaced_or_resized_shard_is_a_stale_index(bucket: str, put) -> None:  # noqa: ANN001
    prefix = f"s3://{bucket}/train/"
    put(prefix + "a.tar", tar_bytes(samples(0, 4)))
    s3pipes.build_index(prefix)
    ds = TarSamples(prefix)
    put(prefix + "a.tar", tar_bytes(samples(100, 4)))  # the same size, other bytes
    with pytest.raises(StaleIndexError, match=rf"{prefix}a.tar: .* stale \(it changed .*`s3pipes index {prefix}`"):
        ds[1]
    put(prefix + "a.tar", tar_bytes(samples(0, 2)))  # cut short
    with pytest.raises(StaleIndexError, match=rf"{prefix}a.tar: .*stale"):
        ds.__getitems__([3, 0])


def test_deleted_shard_is_a_stale_index(bucket: str, put, boto) -> None:  # noqa: ANN001
    prefix = f"s3://{bucket}/train/"
    put(prefix + "a.tar", tar_bytes(samples(0, 2)))
    s3pipes.build_index(prefix)
    ds = TarSamples(prefix)
    boto.delete_object(Bucket=bucket, Key="train/a.tar")
    with pytest.raises(StaleIndexError, match=rf"{prefix}a.tar: .* stale \(it is gone\)"):
        ds[0]


def test_no_index_or_shards_without_offsets_are_refused(bucket: str, put) -> None:  # noqa: ANN001
    prefix = f"s3://{bucket}/mixed/"
    with pytest.raises(FileNotFoundError, match=rf"{prefix}: no index .*`s3pipes index {prefix}`"):
        TarSamples(prefix)
    put(prefix + "a.tar", tar_bytes(samples(0, 2)))
    put(prefix + "b.tgz", tar_bytes(samples(10, 2), "w:gz"))
    put(prefix + "c.zip", zip_bytes(samples(20, 2)))
    s3pipes.build_index(prefix)
    with pytest.raises(ValueError, match=rf"{prefix}b.tgz: a tar.gz shard, whose members have no byte offsets"):
        TarSamples(prefix)
    with pytest.raises(FileNotFoundError, match=rf"{prefix}: no shard in its index matches \['\*.tgx'\]"):
        TarSamples(prefix, masks="*.tgx")
    assert [s["__key__"] for s in TarSamples(prefix, masks="*.tar")] == ["s00000", "s00001"]


def test_local_shard_checked_by_size(tmp_path: Path) -> None:
    (tmp_path / "a.tar").write_bytes(tar_bytes(samples(0, 2)))
    s3pipes.build_index(str(tmp_path))
    ds = TarSamples(str(tmp_path))
    assert ds[1]["cls"] == b"1"
    (tmp_path / "a.tar").write_bytes(tar_bytes(samples(0, 40)))  # past tar's 10 KiB padding
    with pytest.raises(StaleIndexError, match="a.tar: .* stale .*bytes now"):
        ds[1]
    with pytest.raises(ValueError, match="cannot pin a read to an ETag"):
        s3pipes.client_for(str(tmp_path)).read_range(str(tmp_path / "a.tar"), 0, 1, '"etag"')
