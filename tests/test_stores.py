"""The same pipes and chain over every store: S3, a local directory (plain path and file://), memory://."""

from __future__ import annotations

import collections
import re
import time
import uuid

import fsspec
import pytest
from shards import label_of, samples, tar_bytes, zip_bytes
from torch.utils.data import DataLoader
from torch.utils.data.datapipes.iter import IterableWrapper

import s3pipes
from s3pipes import FsspecClient, S3Client

SHARDS, PER_SHARD = 4, 5


@pytest.fixture(scope="module", params=["s3", "local", "file", "memory"])
def root(request, boto, module_bucket: str, tmp_path_factory) -> str:  # noqa: ANN001
    """A store holding tar shards (one gzipped), zip shards of the same samples, and loose objects."""
    kind = request.param
    if kind == "s3":
        root = f"s3://{module_bucket}/data"
    elif kind == "memory":
        root = f"memory://stores-{uuid.uuid4().hex[:8]}/data"
    else:
        path = tmp_path_factory.mktemp("store") / "data"
        root = str(path) if kind == "local" else f"file://{path}"
    for i in range(SHARDS):
        members = samples(i * PER_SHARD, PER_SHARD)
        tar = f"tar/shard-{i}.tar.gz" if i == 3 else f"tar/shard-{i}.tar"
        put(boto, f"{root}/{tar}", tar_bytes(members, "w:gz" if i == 3 else "w"))
        put(boto, f"{root}/zip/shard-{i}.zip", zip_bytes(members))
    for i in range(12):
        put(boto, f"{root}/objs/{i:02d}.bin", f"object {i}".encode() * (i + 1))
    yield root
    if kind == "memory":
        fsspec.filesystem("memory").rm(root.removeprefix("memory://"), recursive=True)


def put(boto, url: str, data: bytes) -> None:  # noqa: ANN001 - written by plain boto3 or plain fsspec
    if url.startswith("s3://"):
        bucket, _, key = url[5:].partition("/")
        boto.put_object(Bucket=bucket, Key=key, Body=data)
    else:
        fs, path = fsspec.core.url_to_fs(url)
        fs.makedirs(fs._parent(path), exist_ok=True)
        fs.pipe_file(path, data)


def expected(root: str, kind: str) -> dict[str, str]:
    """Every member of the ``kind`` shards by name, mapped to its sample key."""
    out = {}
    for i in range(SHARDS):
        shard = f"{root}/tar/shard-{i}.tar.gz" if kind == "tar" and i == 3 else f"{root}/{kind}/shard-{i}.{kind}"
        out.update({f"{shard}/{n}": n.split(".")[0] for n, _ in samples(i * PER_SHARD, PER_SHARD)})
    return out


def test_client_for_dispatches_on_the_protocol(root: str) -> None:
    client = s3pipes.client_for(root)
    assert isinstance(client, S3Client if root.startswith("s3://") else FsspecClient)
    url = f"{root}/objs/03.bin"
    assert client.exists(url) and client.size(url) == 32
    assert client.read_range(url, 7, 12) == b"3obje"
    with client.open(url) as f:
        f.seek(8)
        assert f.read(6) == b"object"


def test_lister_in_order_with_masks(root: str) -> None:
    assert list(s3pipes.S3Lister(f"{root}/objs/", masks="0?.bin")) == [f"{root}/objs/{i:02d}.bin" for i in range(10)]
    assert list(s3pipes.S3Lister(f"{root}/tar")) == [f"{root}/tar/shard-{i}.tar" for i in range(3)] + [
        f"{root}/tar/shard-3.tar.gz"]
    assert list(s3pipes.S3Lister(f"{root}/objs/01.bin")) == [f"{root}/objs/01.bin"]
    with pytest.raises(FileNotFoundError, match=f"{root}/none/"):
        list(s3pipes.S3Lister(f"{root}/none/"))


@pytest.mark.parametrize("stream", [False, True])
def test_reader_reads_in_order_and_names_missing(root: str, stream: bool) -> None:
    urls = [f"{root}/objs/{i:02d}.bin" for i in range(12)]
    def read(urls: list[str]) -> list[tuple[str, bytes]]:
        got = IterableWrapper(urls).read_s3(stream=stream, concurrency=4)
        return [(u, p.read() if stream else p) for u, p in got]  # an S3 stream sends its GET at the first read

    assert read(urls) == [(u, f"object {i}".encode() * (i + 1)) for i, u in enumerate(urls)]
    missing = f"{root}/objs/nope.bin"
    with pytest.raises(FileNotFoundError, match=missing):
        read([missing])


@pytest.mark.parametrize("kind, stream", [("tar", False), ("tar", True), ("zip", True)])
def test_chain_exactly_once_with_0_and_2_workers(root: str, kind: str, stream: bool) -> None:
    want = expected(root, kind)
    for workers in (0, 2):
        dp = IterableWrapper([f"{root}/{kind}/"]).list_s3().shuffle_shards().read_s3(stream=stream)
        dp = (dp.load_tar() if kind == "tar" else dp.load_zip()).group_samples()
        got = list(DataLoader(dp, batch_size=None, num_workers=workers))
        assert collections.Counter(s["__key__"] for s in got) == collections.Counter(set(want.values())), workers
        assert {f"{s['__url__']}/{s['__key__']}.png" for s in got} == {n for n in want if n.endswith(".png")}
        assert all(label_of(s["png"]) == int(s["cls"]) for s in got), "labels stay with their images"


def test_reader_mixes_s3_and_local_in_order(bucket: str, tmp_path) -> None:  # noqa: ANN001
    s3_url = f"s3://{bucket}/a.bin"
    S3Client().write(s3_url, b"from s3")
    (tmp_path / "b.bin").write_bytes(b"from disk")
    local = str(tmp_path / "b.bin")
    urls = [s3_url, local, local, s3_url]
    assert list(IterableWrapper(urls).read_s3()) == [
        (s3_url, b"from s3"), (local, b"from disk"), (local, b"from disk"), (s3_url, b"from s3")]


def test_every_store_satisfies_the_protocol(tmp_path) -> None:  # noqa: ANN001
    from s3pipes.stores import Store

    for store in (s3pipes.client_for("s3://b/k"), s3pipes.client_for(str(tmp_path))):
        missing = [name for name in Store.__dict__ if not name.startswith("_") and not hasattr(store, name)]
        assert not missing, f"{store!r} lacks {missing}"


EMPTY_URL_ENTRY_POINTS = {
    "list_files": lambda u: s3pipes.list_files(u),
    "list_s3": lambda u: list(IterableWrapper([u]).list_s3()),
    "S3Dataset": lambda u: s3pipes.S3Dataset(u),
    "S3IterableDataset": lambda u: list(s3pipes.S3IterableDataset(u)),
    "read_s3": lambda u: list(IterableWrapper([u]).read_s3()),
    "read_s3 stream": lambda u: list(IterableWrapper([u]).read_s3(stream=True)),
    "get_file_size": lambda u: s3pipes.get_file_size(u),
    "file_exists": lambda u: s3pipes.file_exists(u),
}


@pytest.mark.parametrize("url", ["", "  ", "\n"])
@pytest.mark.parametrize("entry", sorted(EMPTY_URL_ENTRY_POINTS))
def test_an_empty_url_is_refused_not_taken_for_the_working_directory(tmp_path, monkeypatch, entry: str,
                                                                     url: str) -> None:  # noqa: ANN001
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_bytes(b"a")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"empty URL .*for the current directory say so with '\.'"):
        EMPTY_URL_ENTRY_POINTS[entry](url)


def test_a_directory_is_not_an_object(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    (tmp_path / "data" / "sub").mkdir(parents=True)
    (tmp_path / "data" / "sub" / "a.txt").write_bytes(b"a")
    monkeypatch.chdir(tmp_path)
    mem = f"memory://dirs-{uuid.uuid4().hex[:8]}"
    fsspec.filesystem("memory").pipe(f"{mem}/d/a.bin", b"a")
    for url in ["data", "data/sub/", str(tmp_path / "data"), f"file://{tmp_path}/data", f"{mem}/d"]:
        store = s3pipes.client_for(url)
        calls = {"size": lambda: store.size(url), "read": lambda: store.read(url),
                 "read_range": lambda: store.read_range(url, 0, 1), "open": lambda: store.open(url),
                 "get_file_size": lambda: s3pipes.get_file_size(url),
                 "read_s3": lambda: list(IterableWrapper([url]).read_s3())}
        for name, call in calls.items():
            with pytest.raises(IsADirectoryError, match=rf"^{re.escape(url)}: is a directory.*list it \(list_s3, list_files\)"):
                call()
            assert not s3pipes.file_exists(url), (url, name)
    fsspec.filesystem("memory").rm(mem.removeprefix("memory://"), recursive=True)


def test_relative_paths_list_as_given_and_symlinked_directories_are_skipped(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    (tmp_path / "data" / "sub").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "data" / "b.txt").write_bytes(b"b")
    (tmp_path / "data" / "sub" / "a.txt").write_bytes(b"a")
    (tmp_path / "other" / "c.txt").write_bytes(b"c")
    (tmp_path / "data" / "dirlink").symlink_to("../other", target_is_directory=True)
    (tmp_path / "data" / "filelink").symlink_to("sub/a.txt")
    monkeypatch.chdir(tmp_path)
    want = ["data/b.txt", "data/filelink", "data/sub/a.txt"]
    assert s3pipes.list_files("data/") == s3pipes.list_files("data") == want
    assert s3pipes.list_files("./data") == ["./" + u for u in want]
    assert [s3pipes.get_file_size(u) for u in want] == [1, 1, 1]
    assert list(s3pipes.S3Dataset("data/")) == [("data/b.txt", b"b"), ("data/filelink", b"a"),
                                                ("data/sub/a.txt", b"a")]
    assert list(IterableWrapper(["data/"]).list_s3().read_s3()) == list(s3pipes.S3Dataset("data/"))
    assert s3pipes.list_files("data/dirlink") == ["data/dirlink/c.txt"]  # named itself, a linked directory is read


def test_iterable_dataset_over_a_tree_with_symlinked_directories_yields_each_file_once(tmp_path) -> None:  # noqa: ANN001
    """``S3IterableDataset('.')`` in a project failed after 13 s with IsADirectoryError on
    ``.venv/lib64`` (a link to ``lib``): a linked directory was listed as a file. Skipped, it cannot
    repeat a file either, even when it links back to an ancestor."""
    (tmp_path / "lib" / "pkg").mkdir(parents=True)
    (tmp_path / "lib" / "pkg" / "m.py").write_bytes(b"m")
    (tmp_path / "top.txt").write_bytes(b"t")
    (tmp_path / "lib64").symlink_to("lib", target_is_directory=True)
    (tmp_path / "lib" / "pkg" / "loop").symlink_to("../..", target_is_directory=True)
    start = time.monotonic()
    got = [(url, data) for url, data in s3pipes.S3IterableDataset(str(tmp_path))]
    assert got == [(f"{tmp_path}/lib/pkg/m.py", b"m"), (f"{tmp_path}/top.txt", b"t")]
    assert time.monotonic() - start < 5
