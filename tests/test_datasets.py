"""The classic wrappers and the plugin's examples against moto's server."""

from __future__ import annotations

import collections
import io
import os
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from shards import label_of, png, samples, tar_bytes, zip_bytes
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset
from torch.utils.data.datapipes.iter import IterableWrapper

import s3pipes
from s3pipes import CorruptArchiveError, S3Dataset, S3IterableDataset, ShuffleDataset

ROOT = Path(__file__).resolve().parents[1]
N_IMAGES, SHARDS, PER_SHARD = 40, 5, 8


@pytest.fixture(scope="module")
def data(boto, module_bucket: str) -> str:  # noqa: ANN001
    for i in range(N_IMAGES):
        boto.put_object(Bucket=module_bucket, Key=f"images/{i:04d}.png", Body=png(i))
    for i in range(SHARDS):
        boto.put_object(Bucket=module_bucket, Key=f"shards/shard-{i}.tar",
                        Body=tar_bytes(samples(i * PER_SHARD, PER_SHARD)))
    boto.put_object(Bucket=module_bucket, Key="mixed/a.zip", Body=zip_bytes(samples(100, 2)))
    boto.put_object(Bucket=module_bucket, Key="mixed/b.tgz", Body=tar_bytes(samples(200, 2), "w:gz"))
    boto.put_object(Bucket=module_bucket, Key="mixed/c.txt", Body=b"plain")
    return module_bucket


class LabelledImages(S3Dataset):
    """The plugin's subclassing pattern."""

    def __getitem__(self, idx: int) -> int:
        name, img = super().__getitem__(idx)
        return label_of(img)


def test_subclass_with_2_workers_sees_every_image_once(data: str) -> None:
    ds = LabelledImages(f"s3://{data}/images/")
    assert len(ds) == N_IMAGES
    labels = [int(x) for batch in DataLoader(ds, batch_size=8, num_workers=2) for x in batch]
    assert sorted(labels) == list(range(N_IMAGES))


def test_s3dataset_with_distributed_sampler(data: str) -> None:
    ds = LabelledImages([f"s3://{data}/images/0001.png", f"s3://{data}/images/0002.png", f"s3://{data}/images/"])
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=1)
        seen += [int(x) for batch in DataLoader(ds, sampler=sampler, batch_size=4) for x in batch]
    assert collections.Counter(seen) == collections.Counter([1, 2] + list(range(N_IMAGES)))


def test_s3dataset_item_and_cheap_pickle(data: str) -> None:
    import pickle

    ds = S3Dataset(f"s3://{data}/images/")
    url, body = ds[3]
    assert url == f"s3://{data}/images/0003.png" and body == png(3)
    assert len(pickle.dumps(ds)) < 200 * N_IMAGES


class ImageS3(IterableDataset):
    """The plugin's iterable example: pairs label and image by position from the inner iterator."""

    def __init__(self, urls, shuffle_urls=False) -> None:  # noqa: ANN001
        self.s3_iter_dataset = S3IterableDataset(urls, shuffle_urls)

    def data_generator(self):  # noqa: ANN201
        try:
            while True:
                label_fname, label_fobj = next(self.s3_iter_dataset_iterator)
                image_fname, image_fobj = next(self.s3_iter_dataset_iterator)
                yield label_fname, int(label_fobj), label_of(image_fobj)
        except StopIteration:
            return

    def __iter__(self):  # noqa: ANN204
        self.s3_iter_dataset_iterator = iter(self.s3_iter_dataset)
        return self.data_generator()

    def set_epoch(self, epoch: int) -> None:
        self.s3_iter_dataset.set_epoch(epoch)


def test_wrapped_iterable_with_2_workers_pairs_every_sample_once(data: str) -> None:
    ds = ImageS3(f"s3://{data}/shards/", shuffle_urls=True)
    got = list(DataLoader(ds, batch_size=None, num_workers=2))
    assert sorted(label for _, label, _ in got) == list(range(SHARDS * PER_SHARD))
    assert all(label == image_label for _, label, image_label in got), "labels stay with their images"
    assert got[0][0] == f"s{got[0][1]:05d}.cls", "members are named as in the archive, like the plugin"


def test_iterable_expands_tar_tgz_zip_and_passes_other_objects(data: str) -> None:
    got = dict(S3IterableDataset(f"s3://{data}/mixed/"))
    want = {**dict(samples(100, 2)), **dict(samples(200, 2)), f"s3://{data}/mixed/c.txt": b"plain"}
    assert got == want


def test_epoch_orders(data: str) -> None:
    def order(epoch: int, workers: int = 0) -> list[str]:
        ds = ImageS3(f"s3://{data}/shards/", shuffle_urls=True)
        ds.set_epoch(epoch)
        return [name for name, _, _ in DataLoader(ds, batch_size=None, num_workers=workers)]

    assert order(3) == order(3), "same epoch, same order"
    assert order(3) != order(4) and sorted(order(3)) == sorted(order(4)), "new epoch, new order"
    assert order(0) == [name for name, _, _ in ImageS3(f"s3://{data}/shards/", shuffle_urls=True)]
    assert order(3, 2) == order(3, 2)
    unshuffled = order(0)
    assert order(0) == unshuffled and [n for n, _, _ in ImageS3(f"s3://{data}/shards/")] == sorted(unshuffled)


def test_iteration_moves_to_next_epoch_by_itself(data: str) -> None:
    ds = S3IterableDataset(f"s3://{data}/shards/", shuffle_urls=True)
    first, second = [n for n, _ in ds], [n for n, _ in ds]
    assert first != second and sorted(first) == sorted(second)


def test_shuffle_dataset_keeps_the_multiset_and_forwards_epoch(data: str) -> None:
    inner = ImageS3(f"s3://{data}/shards/", shuffle_urls=True)
    ds = ShuffleDataset(inner, buffer_size=10, seed=0)
    ds.set_epoch(2)
    assert inner.s3_iter_dataset.epoch == 2
    got = list(DataLoader(ds, batch_size=None, num_workers=2))
    assert sorted(label for _, label, _ in got) == list(range(SHARDS * PER_SHARD))
    plain = sorted(range(100))
    shuffled = list(ShuffleDataset(range(100), buffer_size=10, seed=0))
    assert sorted(shuffled) == plain and shuffled != plain


def test_old_import_path_is_the_same_objects() -> None:
    from awsio.python.lib.io.s3.s3dataset import (
        S3Dataset as OldDataset,
    )
    from awsio.python.lib.io.s3.s3dataset import (
        S3IterableDataset as OldIterable,
    )
    from awsio.python.lib.io.s3.s3dataset import (
        ShuffleDataset as OldShuffle,
    )
    from awsio.python.lib.io.s3.s3dataset import file_exists, get_file_size, list_files

    assert (OldDataset, OldIterable, OldShuffle) == (S3Dataset, S3IterableDataset, ShuffleDataset)
    assert (list_files, file_exists, get_file_size) == (s3pipes.list_files, s3pipes.file_exists,
                                                        s3pipes.get_file_size)


def test_helpers(data: str) -> None:
    assert s3pipes.list_files(f"s3://{data}/images/")[:2] == [f"s3://{data}/images/0000.png",
                                                               f"s3://{data}/images/0001.png"]
    assert s3pipes.file_exists(f"s3://{data}/images/0001.png")
    assert not s3pipes.file_exists(f"s3://{data}/images/nope.png")
    assert s3pipes.get_file_size(f"s3://{data}/images/0001.png") == len(png(1))


@pytest.mark.parametrize("make, exc, words", [
    (lambda b: S3Dataset("s3://no-such-bucket-s3pipes/x/"), FileNotFoundError, "s3://no-such-bucket-s3pipes/x/"),
    (lambda b: S3Dataset(f"s3://{b}/images/missing.png"), FileNotFoundError,
     "/images/missing.png: no such object"),
    (lambda b: S3Dataset("s3:/bucket/key"), ValueError, "'s3:/bucket/key' is not an S3 URL"),
    (lambda b: S3Dataset("no/such/dir/"), FileNotFoundError, "no/such/dir/: no files under this path"),
    (lambda b: list(S3IterableDataset("s3://no-such-bucket-s3pipes/x/")), FileNotFoundError,
     "bucket 'no-such-bucket-s3pipes' does not exist"),
    (lambda b: list(S3IterableDataset(f"s3://{b}/nothing/")), FileNotFoundError, "/nothing/: no objects"),
    (lambda b: list(S3IterableDataset("s3//garbage")), FileNotFoundError, "s3//garbage"),
    (lambda b: list(S3IterableDataset("s3:garbage")), ValueError, "'s3:garbage' is not an S3 URL"),
])
def test_bad_input_raises_quickly_naming_the_url(data: str, make, exc: type, words: str) -> None:  # noqa: ANN001
    t = time.monotonic()
    with pytest.raises(exc, match=words):
        make(data)
    assert time.monotonic() - t < 5


def test_corrupt_shard_names_it(bucket: str, put) -> None:  # noqa: ANN001
    put(f"s3://{bucket}/a.tar", tar_bytes(samples(0, 2)))
    url = put(f"s3://{bucket}/b.tar", tar_bytes(samples(2, 2))[:1500])
    t = time.monotonic()
    with pytest.raises(CorruptArchiveError, match=f"{url}: corrupt tar archive at member 's00002.cls': no valid header"):
        list(DataLoader(S3IterableDataset(f"s3://{bucket}/"), batch_size=None, num_workers=2))
    assert time.monotonic() - t < 10


# ------------------------------------------------------------------------------ plugin compatibility


def test_len_is_the_objects_this_rank_reads(data: str) -> None:
    ds = S3IterableDataset(f"s3://{data}/images/")
    assert len(ds) == N_IMAGES == len(list(ds))
    loader = DataLoader(ds, batch_size=None, num_workers=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # DataLoader warns when more samples arrive than len() said
        assert len(loader) == N_IMAGES == len(list(loader))
    for even in (None, False):  # 40 objects on 3 ranks: 13 each when evened out, else 14, 13, 13
        per_rank = []
        for rank in range(3):
            ds = S3IterableDataset(f"s3://{data}/images/", even_ranks=even)
            ds._dist = (rank, 3)  # the rank a DataLoader worker was handed (torch.distributed is not up here)
            per_rank.append(len(ds))
            assert per_rank[-1] == len(list(ds)), (even, rank)
        assert per_rank == ([13, 13, 13] if even is None else [14, 13, 13])


@pytest.mark.parametrize("prefix", ["shards/", "mixed/"])
def test_len_of_archives_is_refused_saying_why(data: str, prefix: str) -> None:
    with pytest.raises(TypeError, match=r"\.(tar|zip) is an archive, and the number of members it yields is not "
                                        r"known without reading it\. Index the prefix once \(`s3pipes index PREFIX`\), or count them"):
        len(S3IterableDataset(f"s3://{data}/{prefix}"))


def test_plugin_helpers_tardata_zipdata_on_the_old_import_path() -> None:
    from awsio.python.lib.io.s3.s3dataset import reraise_exception, tardata, zipdata

    tar = tar_bytes([("__key__", b"k"), ("a.cls", b"1"), ("__meta__/x", b"m"), ("d/b.png", b"P")])
    f = io.BytesIO(tar)
    assert list(tardata(f)) == [("a.cls", b"1"), ("d/b.png", b"P")]
    assert not f.closed, "the caller's file stays open"
    assert list(tardata(tar, skip_meta=None)) == [("__key__", b"k"), ("a.cls", b"1"), ("__meta__/x", b"m"),
                                                  ("d/b.png", b"P")]
    with pytest.raises(CorruptArchiveError, match="corrupt tar archive"):
        list(tardata(io.BytesIO(tar[:1000])))
    seen: list[BaseException] = []
    assert list(tardata(io.BytesIO(tar[:1000]), handler=seen.append)) == []  # a handler that returns ends it
    assert [type(e) for e in seen] == [CorruptArchiveError]
    with pytest.raises(KeyError):
        reraise_exception(KeyError("x"))
    zf = io.BytesIO()
    with zipfile.ZipFile(zf, "w") as z:
        z.writestr("d/", b"")
        z.writestr("d/a.txt", b"a")
    assert list(zipdata(zf)) == [("d/", b""), ("d/a.txt", b"a")]
    assert not zf.closed


def test_zip_directories_yielded_empty_and_tar_metadata_skipped_as_the_plugin_did(bucket: str, put) -> None:  # noqa: ANN001
    zf = io.BytesIO()
    with zipfile.ZipFile(zf, "w") as z:
        z.writestr("d/", b"")
        z.writestr("d/a.txt", b"a")
    put(f"s3://{bucket}/a.zip", zf.getvalue())
    put(f"s3://{bucket}/b.tar", tar_bytes([("__key__", b"k"), ("b.cls", b"1")]))
    assert list(S3IterableDataset(f"s3://{bucket}/")) == [("d/", b""), ("d/a.txt", b"a"), ("b.cls", b"1")]
    # The pipes keep yielding files only, as load_tar yields regular members only.
    dp = IterableWrapper([f"s3://{bucket}/a.zip"]).read_s3().load_zip()
    assert list(dp) == [(f"s3://{bucket}/a.zip/d/a.txt", b"a")]


def test_file_exists_is_false_for_a_missing_bucket(data: str) -> None:
    assert s3pipes.file_exists("s3://no-such-bucket-s3pipes/images/0001.png") is False
    assert s3pipes.file_exists(f"s3://{data}/images/0001.png") is True


# -------------------------------------------------------------------------------------------- examples


def run_example(name: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "examples")}
    out = subprocess.run([sys.executable, str(ROOT / "examples" / name), *args], capture_output=True,
                         text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_map_style_example(data: str) -> None:
    assert f"read {N_IMAGES} images in 3 batches of shape (3, 100, 100)" in run_example(
        "s3_cv_transform.py", f"s3://{data}/images/", "--workers", "2", "--batch-size", "16")


def test_iterable_example(data: str) -> None:
    out = run_example("s3_cv_iterable_shuffle_example.py", f"s3://{data}/shards/", "--workers", "2",
                      "--buffer-size", "16")
    n = SHARDS * PER_SHARD
    assert f"epoch 0: {n} samples" in out and f"epoch 1: {n} samples" in out
    assert f"ShuffleDataset: {n} samples" in out


def test_png_helper_round_trips() -> None:
    assert Image.open(io.BytesIO(png(300))).size == (8, 8) and label_of(png(300)) == 300


def test_workers_forked_after_obstore_read_warn_once_per_process_tree(bucket: str, put) -> None:  # noqa: ANN001
    """One read in the main process, then 2 loaders x 3 forked workers: every worker used to log the
    same warning (6 lines). It comes once, from the process that forks, and says how to keep obstore."""
    urls = [put(f"s3://{bucket}/fork/{i}.bin", bytes([i]) * 10) for i in range(6)]
    code = f"""if True:
        import logging
        from torch.utils.data import DataLoader
        from torch.utils.data.datapipes.iter import IterableWrapper
        import s3pipes
        logging.basicConfig(level=logging.WARNING)
        assert s3pipes.S3Client().read({urls[0]!r}) == bytes(10)  # obstore runs here, before any fork
        for _ in range(2):
            dp = IterableWrapper({urls!r}).read_s3()
            loader = DataLoader(dp, batch_size=None, num_workers=3, multiprocessing_context="fork")
            assert sorted(u for u, _ in loader) == sorted({urls!r})
    """
    env = {**os.environ, "S3PIPES_ENGINE": "obstore"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stderr.splitlines() if "tokio" in line]
    assert len(lines) == 1, out.stderr
    assert "read S3 with boto3" in lines[0] and "multiprocessing_context='spawn' or 'forkserver'" in lines[0]


def test_workers_forked_after_the_users_own_obstore_read_do_not_hang(bucket: str, put, endpoint: str) -> None:  # noqa: ANN001
    """obstore used directly (not through s3pipes) starts the same runtime: forked workers that then read
    with it hung for good. They must see it and read with boto3."""
    urls = [put(f"s3://{bucket}/rawfork/{i}.bin", bytes([i]) * 10) for i in range(4)]
    code = f"""if True:
        import logging, obstore
        from obstore.store import S3Store
        from torch.utils.data import DataLoader
        from torch.utils.data.datapipes.iter import IterableWrapper
        import s3pipes
        logging.basicConfig(level=logging.WARNING)
        store = S3Store({bucket!r}, endpoint={endpoint!r}, config={{"aws_allow_http": "true", "region": "us-east-1"}})
        assert bytes(obstore.get(store, "rawfork/0.bin").bytes()) == bytes(10)  # the user's own read
        loader = DataLoader(IterableWrapper({urls!r}).read_s3(), batch_size=None, num_workers=2,
                            multiprocessing_context="fork")
        assert sorted(u for u, _ in loader) == sorted({urls!r})
    """
    env = {**os.environ, "S3PIPES_ENGINE": "obstore"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert "read S3 with boto3" in out.stderr, out.stderr
