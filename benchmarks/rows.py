"""load_jsonl and load_parquet on a local S3 endpoint: nginx, served as benchmarks/run.py serves it.

    .venv/bin/python benchmarks/rows.py            # 1 GiB of JSON lines as one .jsonl.zst; 2M-row Parquet
    .venv/bin/python benchmarks/rows.py --quick    # 32 MiB and 200k rows, for development

(a) ``read_s3(stream=True).load_jsonl()`` over one zstandard-compressed JSON lines object holding 1 GiB of
text (``--quick``: 32 MiB), in a fresh process: lines/s, MB/s of text, CPU, and peak RSS (with torch
imported, and what reading added). Each line is ``{"id": i, "text": ...}`` with 200 to 4,000 characters
of Zipf-distributed random words, cut from a corpus larger than zstandard's window, so it compresses
about as prose does.
(b) ``load_parquet(columns=["c3"])`` over a Parquet file of ten float64 columns: the bytes fetched (the
client's own request accounting) against that column's chunks and the whole file, and the GETs for one
column and for all ten (side by side chunks of a row group share a GET).

Data is generated under benchmarks/data/rows-{quick,full}/ and kept between runs; nginx is started on a
free 127.0.0.1 port and stopped by PID at the end. Results: a table on stdout, and
benchmarks/results/rows.json (``--quick``: quick.rows.json, which git ignores).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from peers import BUCKET, REGION, MiB  # beside this file
from run import _rss_mib, start_nginx

HERE = Path(__file__).resolve().parent
PROFILES = {
    "full": {"text": 1024 * MiB, "corpus": 64 * MiB, "parquet_rows": 2_000_000, "row_group": 250_000},
    "quick": {"text": 32 * MiB, "corpus": 8 * MiB, "parquet_rows": 200_000, "row_group": 50_000},
}
JSONL_KEY, PARQUET_KEY, COLUMN = "rows/part-0.jsonl.zst", "rows/wide.parquet", "c3"


def corpus(size: int, rng: random.Random) -> str:
    """``size`` characters of words drawn with Zipf weights from a made-up vocabulary of 20,000."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["".join(rng.choices(letters, k=rng.randint(2, 10))) for _ in range(20_000)]
    weights = [1 / (rank + 1) for rank in range(len(vocab))]
    words = rng.choices(vocab, weights, k=size // 6)
    return " ".join(words)[:size]


def make_jsonl(path: Path, p: dict[str, Any]) -> dict[str, int]:
    import zstandard

    rng = random.Random(0)
    text = corpus(p["corpus"], rng)
    lines = written = 0
    with open(path, "wb") as f, zstandard.ZstdCompressor(level=3).stream_writer(f) as z:
        while written < p["text"]:
            batch = []
            for _ in range(1000):
                n = rng.randint(200, 4000)
                at = rng.randrange(len(text) - n)
                batch.append(json.dumps({"id": lines, "text": text[at:at + n]}).encode() + b"\n")
                lines += 1
            data = b"".join(batch)
            z.write(data)
            written += len(data)
    return {"lines": lines, "text_bytes": written, "object_bytes": path.stat().st_size}


def make_parquet(path: Path, p: dict[str, Any]) -> dict[str, int]:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    n = p["parquet_rows"]
    pq.write_table(pa.table({f"c{i}": rng.standard_normal(n) for i in range(10)}), path, row_group_size=p["row_group"])
    meta = pq.ParquetFile(path).metadata
    chunks = [meta.row_group(g).column(int(COLUMN[1:])).total_compressed_size for g in range(meta.num_row_groups)]
    return {"rows": n, "row_groups": meta.num_row_groups, "column_bytes": sum(chunks),
            "object_bytes": path.stat().st_size}


def make_data(root: Path, p: dict[str, Any]) -> dict[str, Any]:
    """Write both objects under root/bucket/ (reused when the same profile made them) and describe them."""
    stamp = root / "profile.json"
    if stamp.exists() and json.loads(stamp.read_text())["profile"] == p:
        return json.loads(stamp.read_text())
    (root / BUCKET / "rows").mkdir(parents=True, exist_ok=True)
    print(f"generating {p['text'] // MiB} MiB of JSON lines and a Parquet file under {root} ...", flush=True)
    made = {"profile": p, "jsonl": make_jsonl(root / BUCKET / JSONL_KEY, p),
            "parquet": make_parquet(root / BUCKET / PARQUET_KEY, p)}
    stamp.write_text(json.dumps(made))
    return made


def config(ep: str) -> Any:
    import s3pipes  # registers read_s3 and the rest on IterableWrapper

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    return s3pipes.S3Config(endpoint_url=ep, region=REGION)


def read_jsonl(ep: str) -> dict[str, Any]:
    """In a fresh process (``--jsonl``): lines/s and memory of reading the object once."""
    from torch.utils.data.datapipes.iter import IterableWrapper

    cfg = config(ep)
    dp = IterableWrapper([f"s3://{BUCKET}/{JSONL_KEY}"]).read_s3(stream=True, config=cfg).load_jsonl()
    base = _rss_mib()
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    lines = sum(1 for _ in dp)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime
    return {"lines": lines, "wall_s": wall, "cpu_s": cpu, "peak_rss_mib": r1.ru_maxrss / 1024,
            "added_rss_mib": r1.ru_maxrss / 1024 - base}


def read_parquet(ep: str, columns: list[str] | None) -> dict[str, Any]:
    from torch.utils.data.datapipes.iter import IterableWrapper

    from s3pipes.s3.usage import process_usage

    cfg = config(ep)
    dp = IterableWrapper([f"s3://{BUCKET}/{PARQUET_KEY}"]).read_s3(stream=True, config=cfg)
    before, t0 = process_usage(), time.perf_counter()
    rows = sum(b.num_rows for b in dp.load_parquet(columns=columns, batches=True))
    wall, used = time.perf_counter() - t0, process_usage() - before
    return {"rows": rows, "wall_s": wall, "bytes_in": used.bytes_in, "gets": used.get}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, for development")
    ap.add_argument("--data", type=Path, default=HERE / "data")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--jsonl", metavar="ENDPOINT", help=argparse.SUPPRESS)  # the child that reads the object
    args = ap.parse_args()
    if args.jsonl:
        print(json.dumps(read_jsonl(args.jsonl)))
        return

    p = PROFILES["quick" if args.quick else "full"]
    root = (args.data / f"rows-{'quick' if args.quick else 'full'}").resolve()
    made = make_data(root, p)
    with tempfile.TemporaryDirectory(prefix="s3pipes-rows-") as tmp:
        nginx, port = start_nginx(root, Path(tmp))
        try:
            ep = f"http://127.0.0.1:{port}"
            child = subprocess.run([sys.executable, __file__, "--jsonl", ep], capture_output=True, text=True,
                                   timeout=3600)
            if child.returncode:
                raise SystemExit(f"the reading process failed:\n{child.stderr[-2000:]}")
            jsonl = json.loads(child.stdout.strip().splitlines()[-1])
            one, every = read_parquet(ep, [COLUMN]), read_parquet(ep, None)
        finally:
            nginx.terminate()
            nginx.wait(10)
    report(made, jsonl, one, every, args)


def report(made: dict[str, Any], jsonl: dict[str, Any], one: dict[str, Any], every: dict[str, Any],
           args: argparse.Namespace) -> None:
    j, q = made["jsonl"], made["parquet"]
    assert jsonl["lines"] == j["lines"] and one["rows"] == every["rows"] == q["rows"], "every row read"
    lines = [
        f"(a) load_jsonl over one .jsonl.zst: {j['text_bytes'] / MiB:.0f} MiB of text in {j['lines']:,} lines, "
        f"{j['object_bytes'] / MiB:.0f} MiB compressed",
        "",
        "| lines/s | MB/s of text | CPU s | wall s | peak RSS MiB | added by reading MiB |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {jsonl['lines'] / jsonl['wall_s']:,.0f} | {j['text_bytes'] / jsonl['wall_s'] / 1e6:.0f} | "
        f"{jsonl['cpu_s']:.1f} | {jsonl['wall_s']:.1f} | {jsonl['peak_rss_mib']:.0f} | {jsonl['added_rss_mib']:.0f} |",
        "",
        f"(b) load_parquet over {q['rows']:,} rows x 10 float64 columns in {q['row_groups']} row groups, "
        f"{q['object_bytes'] / MiB:.1f} MiB",
        "",
        "| read | bytes fetched | GETs | column chunks' bytes | fetched / column | fetched / file |",
        "|---|---:|---:|---:|---:|---:|",
        f"| columns=[{COLUMN!r}] | {one['bytes_in']:,} | {one['gets']} | {q['column_bytes']:,} | "
        f"{one['bytes_in'] / q['column_bytes']:.3f} | {one['bytes_in'] / q['object_bytes']:.3f} |",
        f"| all ten | {every['bytes_in']:,} | {every['gets']} | | | {every['bytes_in'] / q['object_bytes']:.3f} |",
    ]
    table = "\n".join(lines)
    print("\n" + table)
    meta = {"cpus": os.cpu_count(), "python": sys.version.split()[0],
            "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    args.out.mkdir(parents=True, exist_ok=True)
    name = "quick.rows.json" if args.quick else "rows.json"
    (args.out / name).write_text(json.dumps({"meta": meta, "data": made, "jsonl": jsonl, "parquet_one": one,
                                             "parquet_all": every}, indent=1))


if __name__ == "__main__":
    main()
