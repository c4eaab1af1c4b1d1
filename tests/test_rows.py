"""load_jsonl and load_parquet against the moto server: contents, bounded memory, exactly once across
workers and ranks, mid-object resume that fetches no byte it need not, and errors naming the object."""

from __future__ import annotations

import collections
import gzip
import io
import json
import logging
import os
import re
import sys
from contextlib import ExitStack
from typing import Any, Callable, Iterator
from unittest import mock

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import zstandard
from faultproxy import Fault, FaultProxy
from torch.utils.data import DataLoader, IterDataPipe
from torch.utils.data.datapipes.iter import IterableWrapper
from torchdata.stateful_dataloader import StatefulDataLoader

from s3pipes import CorruptDataError, S3Config
from s3pipes.s3.usage import process_usage

ROWS = [{"i": i, "text": f"line {i}: é ✓ \u2028 tab\t"} for i in range(40)] + [[1, 2], "s", 3.5, None, {}]


def jsonl(rows: list[Any]) -> bytes:
    """``rows`` as JSON lines with blank, blank-looking and CRLF lines among them, the last without a newline."""
    lines = [json.dumps(r, ensure_ascii=False).encode() for r in rows]
    lines[3:3] = [b"", b"  \t"]
    lines[7] += b"\r"
    return b"\n".join(lines)


def compress(data: bytes, kind: str) -> bytes:
    half = len(data) // 2
    return {
        "plain": lambda: data,
        "gz": lambda: gzip.compress(data),
        "zst": lambda: zstandard.ZstdCompressor().compress(data),
        # concatenated gzip members and zstandard frames (as `cat a.gz b.gz` makes) are one stream
        "gz members": lambda: gzip.compress(data[:half]) + gzip.compress(data[half:]),
        "zst frames": lambda: zstandard.ZstdCompressor().compress(data[:half]) + zstandard.ZstdCompressor(
            write_content_size=False).compress(data[half:]),
    }[kind]()


@pytest.mark.parametrize("kind", ["plain", "gz", "zst", "gz members", "zst frames"])
def test_jsonl_rows_are_the_lines_parsed(bucket: str, put: Callable[[str, bytes], str], kind: str) -> None:
    url = put(f"s3://{bucket}/data/part.jsonl{'' if kind == 'plain' else '.' + kind[:3].strip()}",
              compress(jsonl(ROWS), kind))
    assert list(IterableWrapper([url]).read_s3(stream=True).load_jsonl()) == ROWS
    assert list(IterableWrapper([url]).read_s3().load_jsonl(with_url=True)) == [(url, r) for r in ROWS], \
        "bytes payloads too; with_url pairs each row with its object"


def test_jsonl_compression_is_told_by_content_not_name(bucket: str, put: Callable[[str, bytes], str]) -> None:
    urls = [put(f"s3://{bucket}/d/a.json", gzip.compress(b'{"a": 1}\n')),
            put(f"s3://{bucket}/d/b", zstandard.ZstdCompressor().compress(b'{"b": 2}\n')),
            put(f"s3://{bucket}/d/c.ndjson", b'{"c": 3}\n')]
    assert list(IterableWrapper(urls).read_s3(stream=True).load_jsonl()) == [{"a": 1}, {"b": 2}, {"c": 3}]


def test_jsonl_bad_line_names_object_and_line(bucket: str, put: Callable[[str, bytes], str],
                                              caplog: pytest.LogCaptureFixture) -> None:
    bad = put(f"s3://{bucket}/d/bad.jsonl", b'{"a": 1}\n\n{"a": 2}\n{"a": oops}\n{"a": 3}\n')
    good = put(f"s3://{bucket}/d/good.jsonl", b'{"b": 1}\n')
    got: list[Any] = []
    with pytest.raises(CorruptDataError, match=re.escape(f"{bad}: line 4 is not JSON")):
        got.extend(IterableWrapper([bad, good]).read_s3(stream=True).load_jsonl())
    assert got == [{"a": 1}, {"a": 2}], "the lines before the bad one are delivered"

    dp = IterableWrapper([bad, good]).read_s3(stream=True).load_jsonl(skip_corrupt=True)
    with caplog.at_level(logging.WARNING, logger="s3pipes"):
        assert list(dp) == [{"a": 1}, {"a": 2}, {"a": 3}, {"b": 1}]
    assert dp.skipped == 1 and "line 4" in caplog.text


@pytest.mark.parametrize("kind", ["gz", "zst"])
def test_jsonl_cut_compressed_object_is_an_error(bucket: str, put: Callable[[str, bytes], str], kind: str) -> None:
    """zstandard's stream reader ends quietly at a cut; a cut at a line's end would drop lines unseen."""
    data = compress(b"".join(b'{"i": %d}\n' % i for i in range(5000)), kind)
    cut = put(f"s3://{bucket}/d/cut.jsonl.{kind}", data[:-4])
    good = put(f"s3://{bucket}/d/good.jsonl", b'{"b": 1}\n')
    with pytest.raises(CorruptDataError, match=re.escape(f"{cut}: damaged compressed stream after line")):
        list(IterableWrapper([cut]).read_s3(stream=True).load_jsonl())
    dp = IterableWrapper([cut, good]).read_s3(stream=True).load_jsonl(skip_corrupt=True)
    assert list(dp)[-1] == {"b": 1} and dp.skipped == 1


def test_jsonl_zstd_missing_says_what_to_install(bucket: str, put: Callable[[str, bytes], str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    plain = put(f"s3://{bucket}/d/a.jsonl", b'{"a": 1}\n')
    url = put(f"s3://{bucket}/d/b.jsonl.zst", zstandard.ZstdCompressor().compress(b'{"b": 1}\n'))
    monkeypatch.setitem(sys.modules, "zstandard", None)  # what an import finds when it is not installed
    dp = IterableWrapper([plain, url]).read_s3(stream=True).load_jsonl()
    with pytest.raises(ImportError, match=re.escape(f"{url}: zstandard-compressed JSON lines needs the zstandard "
                                                    "package, which is not installed: pip install 's3pipes[zstd]'")):
        list(dp)


class _Footprint(IterDataPipe):
    """In a DataLoader worker, away from the moto server (which holds every object it serves in the
    test process): ``(items, peak RSS growth)`` of ``dp``, or with ``drain`` of reading its streams'
    bytes and nothing else, which sets up the engine and holds its parts just the same."""

    def __init__(self, dp: IterDataPipe, drain: bool) -> None:
        self.dp, self.drain = dp, drain

    def __iter__(self) -> Iterator[tuple[int, int]]:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # the peak RSS starts again from here
        base = _status("VmRSS")
        count = sum(_drained(f) for _, f in self.dp) if self.drain else sum(1 for _ in self.dp)
        yield count, _status("VmHWM") - base


def _drained(f: io.BufferedIOBase) -> int:
    with f:
        return sum(iter(lambda: len(f.read(1 << 20)), 0))


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


@pytest.mark.parametrize("kind", ["plain", "gz", "zst"])
def test_jsonl_streams_a_large_object_in_bounded_memory(bucket: str, put: Callable[[str, bytes], str],
                                                        kind: str) -> None:
    n = 64 * 1024  # lines of 1 KiB: 64 MiB of text
    data = b"".join(b'{"i": %6d, "text": "%s"}\n' % (i, b"w%05d " % i * 142) for i in range(n))
    body = compress(data, kind)
    url = put(f"s3://{bucket}/big/part.jsonl.{kind}", body)
    streams = IterableWrapper([url]).read_s3(stream=True, config=S3Config(part_size=4 << 20))
    # each in a fresh worker: the first read of a process sets up the engine, and its memory is kept
    (size, stream), = DataLoader(_Footprint(streams, drain=True), batch_size=None, num_workers=1)
    (count, growth), = DataLoader(_Footprint(streams.load_jsonl(), drain=False), batch_size=None, num_workers=1)
    assert (size, count) == (len(body), n)
    # The stream holds at most three parts (12 MiB). A forked worker's allocator may place them in memory
    # it already had (the stream alone then measures near 0), so the stream's own figure is not the floor;
    # either bound stays far below the 64 MiB a whole read would add.
    assert growth < max(stream, 3 * (4 << 20)) + (16 << 20), (f"{growth / 2**20:.1f} MiB added reading {len(data) / 2**20:.0f} MiB of "
                                         f"lines, {stream / 2**20:.1f} MiB reading the stream alone")


MIXED = {"a.jsonl": ("plain", 7), "b.jsonl.gz": ("gz", 1), "c.jsonl.zst": ("zst", 12), "d.jsonl": ("plain", 0),
         "e.jsonl.gz": ("gz", 5), "f.jsonl.zst": ("zst", 9)}


@pytest.fixture(scope="module")
def mixed(boto, module_bucket: str) -> list[str]:  # noqa: ANN001
    for name, (kind, n) in MIXED.items():
        rows = [{"id": f"{name}:{i}"} for i in range(n)]
        body = compress(b"".join(json.dumps(r).encode() + b"\n" for r in rows), kind)
        boto.put_object(Bucket=module_bucket, Key=f"mixed/{name}", Body=body)
    return [f"s3://{module_bucket}/mixed/{name}" for name in MIXED]


def _all_ids() -> collections.Counter[str]:
    return collections.Counter(f"{name}:{i}" for name, (_, n) in MIXED.items() for i in range(n))


@pytest.mark.parametrize("ranks", [1, 2])
def test_jsonl_every_line_once_across_workers_and_ranks(mixed: list[str], ranks: int) -> None:
    seen: collections.Counter[str] = collections.Counter()
    for rank in range(ranks):
        with ExitStack() as stack:
            if ranks > 1:  # a second rank is this process told so, as tests/test_exactly_once.py does
                stack.enter_context(mock.patch("torch.utils.data.dataloader._get_distributed_settings",
                                               lambda rank=rank: (ranks, rank)))
            torch.manual_seed(0)  # the shared shuffle seed that torch.distributed would send from rank 0
            dp = IterableWrapper(mixed).shuffle_shards().read_s3(stream=True).load_jsonl()
            seen.update(row["id"] for row in DataLoader(dp, batch_size=None, num_workers=2))
    assert seen == _all_ids()


def _range_start(request: Any) -> int:
    found = re.match(r"bytes=(\d+)-", request.headers.get("range", ""))
    return int(found.group(1)) if found else 0


def _resume(make: Callable[[S3Config], IterDataPipe], endpoint: str, workers: int, stop: int,
            key: Callable[[Any], Any] = lambda x: x) -> tuple[list[Any], list[Any], dict[str, list[int]]]:
    """Items before a checkpoint after ``stop`` of them, items of a fresh loader restored from it, and the
    first bytes of each GET the restored loader sent, by object path."""
    with FaultProxy(endpoint) as proxy:
        cfg = S3Config(endpoint_url=proxy.url)
        loader = StatefulDataLoader(make(cfg), batch_size=None, num_workers=workers)
        it = iter(loader)
        before = [key(next(it)) for _ in range(stop)]
        state = loader.state_dict()
        del it, loader
        proxy.log.clear()
        resumed = StatefulDataLoader(make(cfg), batch_size=None, num_workers=workers)
        resumed.load_state_dict(state)
        after = [key(x) for x in resumed]
        starts: dict[str, list[int]] = collections.defaultdict(list)
        for r in proxy.gets():
            starts[r.path].append(_range_start(r))
    return before, after, starts


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("kind", ["plain", "gz"])
def test_jsonl_resume_mid_object(endpoint: str, bucket: str, put: Callable[[str, bytes], str], kind: str,
                                 workers: int) -> None:
    """Plain text is entered at the byte after the last line delivered; gzip is read again from its start."""
    rows = {name: [{"id": f"{name}:{i}", "pad": "x" * 100} for i in range(300)] for name in ("p", "q")}
    urls = [put(f"s3://{bucket}/r/{name}.jsonl", compress(b"".join(json.dumps(r).encode() + b"\n" for r in rs), kind))
            for name, rs in rows.items()]

    before, after, starts = _resume(
        lambda cfg: IterableWrapper(urls).read_s3(stream=True, config=cfg).load_jsonl(), endpoint, workers, 250,
        key=lambda row: row["id"])

    assert collections.Counter(before + after) == collections.Counter(r["id"] for rs in rows.values() for r in rs)
    delivered = collections.Counter(k.split(":")[0] for k in before)
    midway = [f"/{bucket}/r/{name}.jsonl" for name, n in delivered.items() if 0 < n < 300]
    assert midway, "the checkpoint falls inside an object"
    for path in midway:
        if kind == "plain":
            assert min(starts[path]) > 0, f"{path}: read again from its first byte after the restart"
        else:
            assert 0 in starts[path], "a compressed object is decompressed again from its start"


def _table(rows: int, groups: int) -> tuple[pa.Table, int]:
    """A table of ``rows`` rows of several types, and the row group size that makes ``groups`` of them."""
    ids = list(range(rows))
    return pa.table({
        "id": ids,
        "text": [f"row {i} é" for i in ids],
        "score": [None if i % 7 == 0 else i / 3 for i in ids],
        "tags": [[f"t{i % 3}"] * (i % 3) for i in ids],
    }), -(-rows // groups)


def _parquet(table: pa.Table, row_group_size: int) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=row_group_size)
    return buf.getvalue()


@pytest.fixture(scope="module")
def table_url(boto, module_bucket: str) -> tuple[str, pa.Table]:  # noqa: ANN001
    table, size = _table(1000, 4)
    boto.put_object(Bucket=module_bucket, Key="pq/t.parquet", Body=_parquet(table, size))
    return f"s3://{module_bucket}/pq/t.parquet", table


def test_parquet_rows_columns_and_batches(table_url: tuple[str, pa.Table]) -> None:
    url, table = table_url
    dp = IterableWrapper([url]).read_s3(stream=True)
    assert list(dp.load_parquet()) == table.to_pylist()
    assert list(dp.load_parquet(columns=["tags", "id"])) == table.select(["tags", "id"]).to_pylist()
    batches = list(dp.load_parquet(batches=True, batch_size=128))
    assert all(isinstance(b, pa.RecordBatch) and b.num_rows <= 128 for b in batches)
    assert pa.Table.from_batches(batches).equals(table)
    assert list(IterableWrapper([url]).read_s3().load_parquet(columns=["id"], with_url=True))[-1] == (url, {"id": 999})


def test_parquet_one_column_of_ten_fetches_its_share(bucket: str, put: Callable[[str, bytes], str]) -> None:
    n = 200_000
    data = _parquet(pa.table({f"c{i}": pa.array(range(i, i + n), pa.float64()) for i in range(10)}), 50_000)
    url = put(f"s3://{bucket}/wide.parquet", data)
    meta = pq.ParquetFile(io.BytesIO(data)).metadata
    column = sum(meta.row_group(g).column(3).total_compressed_size for g in range(meta.num_row_groups))

    dp = IterableWrapper([url]).read_s3(stream=True).load_parquet(columns=["c3"], batches=True)
    before = process_usage()
    rows = sum(b.num_rows for b in dp)
    used = process_usage() - before

    assert rows == n
    footer = 64 << 10  # pyarrow reads the last 64 KiB at once, footer and all
    assert column <= used.bytes_in <= 1.5 * column + footer, \
        f"{used.bytes_in} bytes fetched for a column of {column} in a file of {len(data)}"
    assert used.get == 1 + meta.num_row_groups, "one GET for the footer, one for each row group's chunk"


@pytest.mark.parametrize("batches", [False, True])
@pytest.mark.parametrize("workers", [0, 2])
def test_parquet_resume_mid_object_at_its_row_group(endpoint: str, bucket: str, put: Callable[[str, bytes], str],
                                                    workers: int, batches: bool) -> None:
    files = {}
    for name in ("p", "q"):
        table, size = _table(1000, 4)
        # random padding: row groups well beyond the 64 KiB pyarrow reads from the end at once
        table = table.append_column("name", pa.array([name] * 1000)).append_column(
            "pad", pa.array([os.urandom(150).hex() for _ in range(1000)]))
        files[name] = _parquet(table, size)
        put(f"s3://{bucket}/r/{name}.parquet", files[name])
    urls = [f"s3://{bucket}/r/{name}.parquet" for name in files]
    # mid-way through a row group of 250 rows (with 2 workers, half as far in each of the two objects)
    stop = 6 if batches else 650

    def explode(item: Any) -> list[tuple[str, int]]:
        return [(r["name"], r["id"]) for r in (item.to_pylist() if batches else [item])]

    def make(cfg: S3Config) -> IterDataPipe:
        return IterableWrapper(urls).read_s3(stream=True, config=cfg).load_parquet(batches=batches, batch_size=100)

    before, after, starts = _resume(make, endpoint, workers, stop, key=explode)

    delivered = [row for rows in before for row in rows]
    got = delivered + [row for rows in after for row in rows]
    assert collections.Counter(got) == collections.Counter((name, i) for name in files for i in range(1000))
    midway = {name: n for name, n in collections.Counter(name for name, _ in delivered).items() if 0 < n < 1000}
    assert midway, "the checkpoint falls inside an object"
    for name, done in midway.items():
        group = pq.ParquetFile(io.BytesIO(files[name])).metadata.row_group(done // 250)
        chunks = [group.column(j) for j in range(group.num_columns)]
        first = min(c.dictionary_page_offset or c.data_page_offset for c in chunks)
        assert min(starts[f"/{bucket}/r/{name}.parquet"]) >= first, \
            "after a restart nothing before the row group it was in is fetched"


def test_parquet_errors_name_the_object(bucket: str, put: Callable[[str, bytes], str],
                                        table_url: tuple[str, pa.Table]) -> None:
    url, table = table_url
    text = put(f"s3://{bucket}/d/notes.parquet", b"hello\n" * 100)
    with pytest.raises(CorruptDataError, match=re.escape(f"{text}: not a readable Parquet file: ")):
        list(IterableWrapper([text]).read_s3(stream=True).load_parquet())
    dp = IterableWrapper([text, url]).read_s3(stream=True).load_parquet(columns=["id"], skip_corrupt=True)
    assert len(list(dp)) == 1000 and dp.skipped == 1
    with pytest.raises(ValueError, match=re.escape(f"{url}: no column 'nope' in this Parquet file; it has ['id',")):
        list(IterableWrapper([url]).read_s3(stream=True).load_parquet(columns=["id", "nope"]))


def test_parquet_failed_read_is_not_taken_for_damage(endpoint: str, table_url: tuple[str, pa.Table]) -> None:
    url, _ = table_url
    # HEAD and the footer's GET go through; the row group's GET is refused
    with FaultProxy(endpoint, script=[None, None, Fault.error(403)]) as proxy:
        dp = IterableWrapper([url]).read_s3(stream=True, config=S3Config(endpoint_url=proxy.url)).load_parquet()
        with pytest.raises(PermissionError, match=re.escape(url)):
            list(dp)


def test_parquet_without_pyarrow_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match=re.escape("load_parquet needs the pyarrow package, which is not "
                                                    "installed: pip install 's3pipes[parquet]'")):
        IterableWrapper(["s3://b/t.parquet"]).read_s3(stream=True).load_parquet()
