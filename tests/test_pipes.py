"""The six DataPipes and the grouper against moto's server: alone, chained, across workers and ranks."""

from __future__ import annotations

import collections
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch
from faultproxy import FaultProxy
from shards import label_of, samples, tar_bytes, zip_bytes
from torch.utils.data import DataLoader
from torch.utils.data.datapipes.iter import IterableWrapper
from torch.utils.data.graph_settings import apply_random_seed, apply_sharding

import s3pipes
from s3pipes import CorruptArchiveError, S3Config

SHARDS, PER_SHARD = 6, 10
TAR_NAMES = [f"tar/shard-{i}.tar" for i in range(4)] + ["tar/shard-4.tar.gz", "tar/shard-5.tgz"]


@pytest.fixture(scope="module")
def data(boto, module_bucket: str) -> dict[str, bytes]:  # noqa: ANN001
    """Tar and zip shards of the same samples, and loose objects. Returns every expected member."""
    expected: dict[str, bytes] = {}
    for i in range(SHARDS):
        members = samples(i * PER_SHARD, PER_SHARD)
        tar_name = TAR_NAMES[i]
        mode = "w:gz" if tar_name.endswith(("gz", "tgz")) else "w"
        for key, body in ((tar_name, tar_bytes(members, mode)), (f"zip/shard-{i}.zip", zip_bytes(members))):
            boto.put_object(Bucket=module_bucket, Key=key, Body=body)
            expected.update({f"s3://{module_bucket}/{key}/{n}": d for n, d in members})
    for i in range(50):
        boto.put_object(Bucket=module_bucket, Key=f"objs/{i:03d}.bin", Body=f"object {i}".encode() * (i + 1))
    return expected


def members_of(expected: dict[str, bytes], kind: str) -> dict[str, bytes]:
    return {k: v for k, v in expected.items() if f"/{kind}/" in k}


def chain(bucket: str, kind: str, **read: object):  # noqa: ANN201
    dp = IterableWrapper([f"s3://{bucket}/{kind}/"]).list_s3().shuffle_shards().read_s3(**read)
    return dp.load_tar() if kind == "tar" else dp.load_zip()


def run(dp, workers: int = 0, **kw: object) -> list:  # noqa: ANN001
    return list(DataLoader(dp, batch_size=None, num_workers=workers, **kw))


# ----------------------------------------------------------------------------------- each pipe alone


def test_lister(module_bucket: str, data: dict) -> None:
    b = module_bucket
    got = list(s3pipes.S3Lister([f"s3://{b}/tar/", f"s3://{b}/zip/shard-1.zip"]))
    assert got == [f"s3://{b}/{n}" for n in TAR_NAMES] + [f"s3://{b}/zip/shard-1.zip"]
    assert list(IterableWrapper([f"s3://{b}/tar"]).list_s3(masks=["*.tgz", "*.gz"])) == [
        f"s3://{b}/tar/shard-4.tar.gz", f"s3://{b}/tar/shard-5.tgz"]
    assert list(s3pipes.S3Lister(f"s3://{b}/objs/", masks="00?.bin")) == [f"s3://{b}/objs/00{i}.bin" for i in range(10)]
    with pytest.raises(FileNotFoundError, match=rf"s3://{b}/tar/: no objects match \['\*.png'\]"):
        list(s3pipes.S3Lister(f"s3://{b}/tar/", masks="*.png"))
    with pytest.raises(FileNotFoundError, match=f"s3://{b}/none/: no objects"):
        list(s3pipes.S3Lister(f"s3://{b}/none/"))


def test_reader_ordered_unordered_and_len(module_bucket: str, data: dict) -> None:
    urls = [f"s3://{module_bucket}/objs/{i:03d}.bin" for i in range(50)]
    want = [(u, f"object {i}".encode() * (i + 1)) for i, u in enumerate(urls)]
    dp = IterableWrapper(urls).read_s3(concurrency=8)
    assert len(dp) == 50 and list(dp) == want
    assert sorted(IterableWrapper(urls).read_s3(concurrency=8, ordered=False)) == want
    apply_sharding(dp, 3, 1)  # as the DataLoader does on 3 ranks: 48 objects are read, 16 a rank
    assert len(dp) == 16 and list(dp) == want[1:48:3]
    dp = IterableWrapper(urls).read_s3(even_ranks=False)
    apply_sharding(dp, 3, 1)
    assert len(dp) == 17 and list(dp) == want[1::3]


def test_reader_missing_key_names_it(module_bucket: str, data: dict) -> None:
    urls = [f"s3://{module_bucket}/objs/000.bin", f"s3://{module_bucket}/objs/nope.bin"]
    with pytest.raises(FileNotFoundError, match=f"s3://{module_bucket}/objs/nope.bin: no such object"):
        list(IterableWrapper(urls).read_s3())


def test_reader_stream_yields_seekable_files(module_bucket: str, data: dict) -> None:
    url = f"s3://{module_bucket}/objs/004.bin"
    [(name, f)] = list(IterableWrapper([url]).read_s3(stream=True))
    with f:
        assert name == url and f.seekable()
        f.seek(7)
        assert f.read() == (b"object 4" * 5)[7:]


@pytest.mark.parametrize("stream", [False, True])
def test_tar_and_zip_expanders(module_bucket: str, data: dict, stream: bool) -> None:
    for kind in ("tar", "zip"):
        want = members_of(data, kind)
        dp = IterableWrapper([f"s3://{module_bucket}/{kind}/"]).list_s3().read_s3(stream=stream)
        got = list(dp.load_tar() if kind == "tar" else dp.load_zip())
        assert [n for n, _ in got] == list(want), "archive order, shard by shard"
        assert dict(got) == want


def test_zip_stream_reads_central_directory_by_range(module_bucket: str, data: dict, spy: FaultProxy) -> None:
    url = f"s3://{module_bucket}/zip/shard-2.zip"
    dp = IterableWrapper([url]).read_s3(stream=True, config=S3Config(endpoint_url=spy.url))
    names = [n for n, _ in dp.load_zip()]
    assert len(names) == 2 * PER_SHARD
    gets = [g.headers for g in spy.gets()]
    assert gets[0].get("range", "").startswith("bytes=") and gets[0]["range"] != "bytes=0-", \
        "the first read is the directory at the end of the archive, not the whole object"


def test_shard_shuffler_orders() -> None:
    urls = [f"s3://b/{i}.tar" for i in range(50)]
    a, b = IterableWrapper(urls).shuffle_shards(seed=3), IterableWrapper(urls).shuffle_shards(seed=3)
    e0a, e0b = list(a), list(b)
    assert e0a == e0b != urls and sorted(e0a) == sorted(urls)
    assert list(a) != e0a, "the next epoch has another order"
    c = IterableWrapper(urls).shuffle_shards(seed=3)
    c.set_epoch(1)
    d = IterableWrapper(urls).shuffle_shards(seed=3)
    list(d)
    assert list(c) == list(d), "set_epoch(1) gives what the second iteration gives"
    # from the DataLoader's shared seed, or torch's RNG
    e, f = IterableWrapper(urls).shuffle_shards(), IterableWrapper(urls).shuffle_shards()
    assert list(e.set_seed(11)) == list(f.set_seed(11))
    torch.manual_seed(5)
    g = list(IterableWrapper(urls).shuffle_shards())
    torch.manual_seed(5)
    assert list(IterableWrapper(urls).shuffle_shards()) == g
    assert list(IterableWrapper(urls).shuffle_shards().set_shuffle(False)) == urls


def test_buffer_shuffler() -> None:
    items = list(range(1000))
    a = list(IterableWrapper(items).shuffle_buffer(100, seed=1))
    assert sorted(a) == items and a != items
    assert a == list(IterableWrapper(items).shuffle_buffer(100, seed=1))
    s = IterableWrapper(items).shuffle_buffer(100, seed=1)
    list(s)
    assert list(s) != a, "a new epoch, a new order"
    assert len(s) == 1000
    assert list(IterableWrapper(items).shuffle_buffer(2000, seed=1)) != items  # buffer larger than the data
    with pytest.raises(ValueError, match="buffer_size"):
        IterableWrapper(items).shuffle_buffer(0)


def test_read_s3_takes_one_url_or_a_plain_list_as_list_s3_does(bucket: str, put) -> None:  # noqa: ANN001
    a, b = put(f"s3://{bucket}/k", b"K"), put(f"s3://{bucket}/l", b"L")
    assert list(s3pipes.S3Reader([a, b])) == [(a, b"K"), (b, b"L")]
    assert list(s3pipes.S3Reader((u for u in [a]))) == [(a, b"K")]
    assert list(s3pipes.S3Reader(a)) == [(a, b"K")]
    assert len(s3pipes.S3Reader([a, b])) == 2


def test_grouper_pairs_by_name() -> None:
    members = [("s3://b/x.tar/a.png", b"A"), ("s3://b/x.tar/a.cls", b"1"), ("s3://b/x.tar/b.cls", b"2"),
               ("s3://b/x.tar/b.seg.png", b"S"), ("s3://b/y.tar/b.cls", b"3")]
    assert list(IterableWrapper(members).group_samples()) == [
        {"__key__": "a", "__url__": "s3://b/x.tar", "png": b"A", "cls": b"1"},
        {"__key__": "b", "__url__": "s3://b/x.tar", "cls": b"2", "seg.png": b"S"},
        {"__key__": "b", "__url__": "s3://b/y.tar", "cls": b"3"},
    ]
    with pytest.raises(ValueError, match="already has a 'cls' member"):
        list(IterableWrapper([("s3://b/x.tar/a.cls", b"1"), ("s3://b/x.tar/a.cls", b"2")]).group_samples())


def test_grouper_skips_members_without_an_extension_and_resumes_past_them() -> None:
    members = [("s3://b/x.tar/file1.jpg", b"J1"), ("s3://b/x.tar/_something_", b"?"),
               ("s3://b/x.tar/file1.cls", b"1"), ("s3://b/x.tar/file2.jpg", b"J2"),
               ("s3://b/x.tar/file2.cls", b"2"), ("s3://b/x.tar/__meta__", b"M")]
    whole = [{"__key__": "file1", "__url__": "s3://b/x.tar", "jpg": b"J1", "cls": b"1"},
             {"__key__": "file2", "__url__": "s3://b/x.tar", "jpg": b"J2", "cls": b"2"}]
    dp = IterableWrapper(members).group_samples()
    assert list(dp) == whole
    it = iter(dp)
    assert next(it) == whole[0]
    state = dp.state_dict()
    resumed = IterableWrapper(members).group_samples()
    resumed.load_state_dict(state)
    assert list(resumed) == whole[1:]
    state = resumed.state_dict()
    again = IterableWrapper(members).group_samples()
    again.load_state_dict(state)
    assert list(again) == []  # the epoch ended on a skipped member: nothing left

    between = [members[0], members[2], members[1], *members[3:]]  # the skipped member between two samples
    dp = IterableWrapper(between).group_samples()
    it = iter(dp)
    assert next(it) == whole[0]
    resumed = IterableWrapper(between).group_samples()
    resumed.load_state_dict(dp.state_dict())
    assert list(resumed) == whole[1:]


def test_pipes_pickle(module_bucket: str) -> None:
    dp = chain(module_bucket, "tar").group_samples().shuffle_buffer(10)
    clone = pickle.loads(pickle.dumps(dp))
    assert type(clone) is type(dp) and b"botocore" not in pickle.dumps(dp)


# -------------------------------------------------------------------------------- the chain, workers


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_chain_same_multiset_with_0_1_3_workers(module_bucket: str, data: dict, kind: str) -> None:
    want = members_of(data, kind)
    for workers in (0, 1, 3):
        got = run(chain(module_bucket, kind), workers)
        counts = collections.Counter(n for n, _ in got)
        assert counts == collections.Counter(want.keys()), f"{workers} workers: every member exactly once"
        assert all(want[n] == d for n, d in got)


def test_exactly_once_with_3_workers_streaming(module_bucket: str, data: dict) -> None:
    dp = chain(module_bucket, "tar", stream=True).group_samples()
    got = run(dp, 3)
    keys = collections.Counter(s["__key__"] for s in got)
    assert len(keys) == SHARDS * PER_SHARD and set(keys.values()) == {1}
    assert all(label_of(s["png"]) == int(s["cls"]) for s in got), "labels stay with their images"


def test_ranks_times_workers_split_shards_without_overlap(module_bucket: str, data: dict) -> None:
    """What DataLoader does on R ranks x W workers: every instance gets the same seed, then its slice."""
    ranks, workers = 2, 3
    seen: list[str] = []
    shards_per_instance = []
    for rank in range(ranks):
        for worker in range(workers):
            dp = chain(module_bucket, "tar")
            apply_random_seed(dp, torch.Generator().manual_seed(1234))  # one shared seed for the epoch
            apply_sharding(dp, ranks * workers, worker * ranks + rank)
            got = [n for n, _ in dp]
            shards_per_instance.append({n.rsplit("/", 1)[0] for n in got})
            seen += got
    assert collections.Counter(seen) == collections.Counter(members_of(data, "tar").keys())
    assert all(len(s) == 1 for s in shards_per_instance), "split at shard level: 6 shards over 6 instances"


def test_same_seed_same_order_new_epoch_new_order(module_bucket: str, data: dict) -> None:
    def epoch_orders(seed: int) -> list[list[str]]:
        torch.manual_seed(seed)
        loader = DataLoader(chain(module_bucket, "tar"), batch_size=None, num_workers=2)
        return [[n for n, _ in loader] for _ in range(2)]

    first, again = epoch_orders(0), epoch_orders(0)
    assert first == again, "torch.manual_seed repeats a run"
    assert first[0] != first[1] and sorted(first[0]) == sorted(first[1]), "each epoch reshuffles the shards"


def test_spawned_workers(module_bucket: str, data: dict) -> None:
    got = run(chain(module_bucket, "zip"), 2, multiprocessing_context="spawn")
    assert collections.Counter(n for n, _ in got) == collections.Counter(members_of(data, "zip").keys())


def test_explicit_sharding_filter_upstream_is_honoured(module_bucket: str, data: dict) -> None:
    dp = IterableWrapper([f"s3://{module_bucket}/tar/"]).list_s3().sharding_filter().read_s3().load_tar()
    got = run(dp, 3)
    assert collections.Counter(n for n, _ in got) == collections.Counter(members_of(data, "tar").keys())


def test_sharding_filter_downstream_is_a_clear_error(module_bucket: str, data: dict) -> None:
    dp = chain(module_bucket, "tar").sharding_filter()
    with pytest.raises(RuntimeError, match=r"Sharding twice.*S3Reader\(shard=True\)"):
        run(dp, 2)
    got = run(IterableWrapper([f"s3://{module_bucket}/tar/"]).list_s3().read_s3(shard=False).load_tar()
              .sharding_filter(), 2)
    assert collections.Counter(n for n, _ in got) == collections.Counter(members_of(data, "tar").keys())


# --------------------------------------------------------------------------------------- corruption


@pytest.mark.parametrize("body, words", [
    (b"this is not a tar archive at all" * 100, "corrupt tar archive"),
    (tar_bytes(samples(0, 3))[:3000], "corrupt tar archive at member 's00001.cls'"),
    (tar_bytes(samples(0, 3), "w:gz")[:-40], "corrupt tar archive"),
    # tarfile alone would end these quietly after the first member, dropping the rest of the shard
    (tar_bytes(samples(0, 3))[:1024], "corrupt tar archive at member 's00000.cls': no valid header or end-of-archive block at byte 1024"),
    (tar_bytes(samples(0, 3))[:1024] + b"x" * 512 + tar_bytes(samples(0, 3))[1536:], "corrupt tar archive .* no valid header .* byte 1024"),
])
def test_corrupt_tar_names_its_shard(bucket: str, put, body: bytes, words: str) -> None:  # noqa: ANN001
    put(f"s3://{bucket}/good.tar", tar_bytes(samples(0, 2)))
    url = put(f"s3://{bucket}/bad.tar", body)
    for workers in (0, 2):
        with pytest.raises(CorruptArchiveError, match=f"{url}: {words}"):
            run(IterableWrapper([f"s3://{bucket}/"]).list_s3().read_s3().load_tar(), workers)


def test_corrupt_zip_names_shard_and_member(bucket: str, put) -> None:  # noqa: ANN001
    good = zip_bytes(samples(0, 3))
    url = put(f"s3://{bucket}/bad.zip", good.replace(b"PK\x05\x06", b"XX\x05\x06"))
    with pytest.raises(CorruptArchiveError, match=f"{url}: corrupt zip archive"):
        list(IterableWrapper([url]).read_s3().load_zip())
    members = samples(0, 3)
    raw = zip_bytes([(n, d * 50) for n, d in members])
    i = raw.index(b"s00001.png") + 40  # inside that member's compressed data
    url = put(f"s3://{bucket}/crc.zip", raw[:i] + bytes([raw[i] ^ 0xFF]) + raw[i + 1:])
    with pytest.raises(CorruptArchiveError, match=f"{url}: corrupt zip archive at member 's00001.png'"):
        list(IterableWrapper([url]).read_s3(stream=True).load_zip())


# --------------------------------------------------------------------------------------- big shards


def test_200mib_tar_streams_in_bounded_memory(boto, bucket: str, tmp_path) -> None:  # noqa: ANN001
    member = bytes(range(256)) * 4096  # 1 MiB
    path = tmp_path / "big.tar"
    with open(path, "wb") as f:
        f.write(tar_bytes([(f"m{i:03d}.bin", member[i:] + member[:i]) for i in range(200)]))
    boto.upload_file(str(path), bucket, "big.tar")
    url = f"s3://{bucket}/big.tar"
    code = textwrap.dedent(f"""
        import hashlib, s3pipes
        from torch.utils.data.datapipes.iter import IterableWrapper
        def rss(field):
            return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(field)) * 1024
        s3pipes.S3Client().head({url!r})  # botocore's models are not the stream's memory
        base = rss('VmRSS:')
        n, total = 0, 0
        for name, data in IterableWrapper([{url!r}]).read_s3(stream=True).load_tar():
            n += 1; total += len(data)
        print(n, total, rss('VmHWM:') - base)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    n, total, growth = map(int, out.stdout.split())
    assert (n, total) == (200, 200 * (1 << 20))
    # three 8 MiB parts in flight, each briefly twice (object_store collects it, then Python copies it)
    assert growth < 64 * (1 << 20), f"streaming a 200 MiB tar grew peak RSS by {growth / 2**20:.0f} MiB"


@pytest.mark.parametrize("fmt", ["ustar", "gnu", "pax"])
def test_tar_in_memory_reads_every_header_kind_as_tarfile_does(fmt: str) -> None:
    """Shards in memory have their plain headers read without tarfile; whatever else a tar holds (long
    names, a ustar prefix, pax headers, links, directories, a non-UTF-8 name) is handed to tarfile from
    that header on. Either way the members are those tarfile streams out of the same bytes."""
    import io
    import tarfile

    from s3pipes.pipes.tar import iter_tar

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=getattr(tarfile, f"{fmt.upper()}_FORMAT")) as t:
        def add(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.type = (len(data) if kind == tarfile.REGTYPE else 0), kind
            if kind == tarfile.SYMTYPE:
                info.linkname = "a.bin"
            t.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        add("a.bin", b"x" * 1000)
        add("dir", kind=tarfile.DIRTYPE)
        add("dir/empty.txt")
        add("é.txt", "ü".encode() * 7)
        add("p/" * 60 + "under-a-prefix.bin", b"p" * 513)  # ustar: a prefix; gnu and pax: a long name
        add("link", kind=tarfile.SYMTYPE)
        add("after-the-link.bin", b"z" * 512)
        if fmt != "ustar":
            add("n/" * 80 + "long-name.bin", b"l" * 3)
    data = buf.getvalue()
    expected = list(iter_tar("s3://b/s.tar", io.BytesIO(data)))  # a stream: tarfile throughout
    assert [n.rsplit("/", 1)[-1] for n, _ in expected][:4] == ["a.bin", "empty.txt", "é.txt", "under-a-prefix.bin"]
    assert list(iter_tar("s3://b/s.tar", data)) == expected
    assert list(iter_tar("s3://b/s.tar", memoryview(data))) == expected
