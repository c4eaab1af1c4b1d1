"""What listing costs at scale, on the fake endpoint of benchmarks/fakes3.py (issue #13).

    python benchmarks/scale.py --quick      # a smoke run, about a minute
    python benchmarks/scale.py              # the full rows (several minutes: listing 1M keys is slow)
    python benchmarks/scale.py --big        # also 10M keys through an index

Rows, every request counted by the server:

- LIST (and GET, HEAD) requests per epoch: 4 torch.distributed ranks (gloo, spawned) x 4 DataLoader
  workers iterate ``list_s3().shuffle_shards().read_s3()`` over 20,000 keys (20 pages) for 2 epochs,
  without an index and then with one made by ``s3pipes.build_index``. Each rank reads only its first
  ``ITEMS`` samples of an epoch (the listing is what a whole epoch takes; reading every object would only
  add GETs), so GETs are those samples plus what the workers had in flight.
- Time to first sample: one process, no workers, from building the pipe to the first ``(url, bytes)`` of
  ``list_s3().shuffle_shards().read_s3()`` over 1M keys at +20 ms a request, with and without an index
  (``--big``: 10M keys, with the index only: listing them would take most of an hour). The index of these
  runs is written straight from the key generator (building it would list the keys first); the LIST row
  checks that such an index is the one ``build_index`` writes.

Servers run as separate processes and each first-sample run in a fresh one; all are stopped by PID.
Results: a markdown table on stdout and benchmarks/results/scale.json.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import itertools
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path
from typing import Any, Iterator

HERE = Path(__file__).resolve().parent
BUCKET, PREFIX = "bench", "train/"
URL = f"s3://{BUCKET}/{PREFIX}"
INDEX_KEY = PREFIX + "_s3pipes_index.jsonl.gz"
RANKS, WORKERS, EPOCHS, ITEMS = 4, 4, 2, 64
PROFILES = {
    "full": {"list_keys": 20_000, "ttfs_keys": [1_000_000], "delay_ms": 20.0},
    "quick": {"list_keys": 4_000, "ttfs_keys": [50_000], "delay_ms": 20.0},
}
ENV = {"AWS_ACCESS_KEY_ID": "fake", "AWS_SECRET_ACCESS_KEY": "fake", "AWS_REGION": "us-east-1",
       "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
       "AWS_EC2_METADATA_DISABLED": "true"}


# ------------------------------------------------------------------------------------------ server


class Endpoint:
    """``benchmarks/fakes3.py`` in its own process (its handlers would otherwise share our GIL)."""

    def __init__(self, keys: int, delay_ms: float = 0.0) -> None:
        self.proc = subprocess.Popen([sys.executable, str(HERE / "fakes3.py"), "--keys", str(keys),
                                      "--delay-ms", str(delay_ms), "--bucket", BUCKET, "--port", "0"],
                                     stdout=subprocess.PIPE, text=True)
        self.url = self.proc.stdout.readline().strip()  # type: ignore[union-attr]
        if not self.url:
            raise SystemExit(f"fakes3 exited with {self.proc.wait()}")

    def counts(self) -> dict[str, Any]:
        return counts(self.url)

    def reset(self) -> None:
        _control(self.url, "/__reset__")

    def delay(self, ms: float) -> None:
        _control(self.url, f"/__config__?delay_ms={ms}")

    def boto(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1")

    def __enter__(self) -> Endpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait()


def _control(url: str, route: str, method: str = "POST") -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url + route, method=method)) as r:
        return r.read()


def counts(url: str) -> dict[str, Any]:
    """The server's request counts since the last reset (see fakes3.Stats)."""
    return json.loads(_control(url, "/__counts__", "GET"))


def index_lines(keys: int, size: int = 64) -> Iterator[str]:
    """The lines of the index ``build_index`` writes for ``keys`` generated objects (plain objects: no
    request per object), made without listing them: the first-sample rows need it for 1M and 10M keys."""
    sys.path.insert(0, str(HERE))
    from fakebucket import Bucket

    gen = Bucket(BUCKET, keys, size)
    yield json.dumps({"format": "s3pipes-index", "version": 2, "prefix": URL, "shards": keys})
    columns = {"key": [gen.key(i)[len(PREFIX):] for i in range(keys)], "size": [size] * keys,
               "etag": ['"%s"' % hashlib.md5(gen.body(i)).hexdigest() for i in range(keys)],
               "kind": ["object"] * keys, "members": [1] * keys, "samples": [1] * keys}
    for name, column in columns.items():
        yield json.dumps({name: column}, separators=(",", ":"))
    yield from itertools.repeat("{}", keys)  # what a plain object's members are: nothing to say


def write_index(endpoint: Endpoint, keys: int) -> float:
    """PUT the generated index of ``keys`` objects; its size in MB."""
    lines = index_lines(keys)
    head = "\n".join(itertools.islice(lines, 7)) + "\n"  # the header and the six columns
    data = gzip.compress(head.encode(), 6) + gzip.compress(("\n".join(lines) + "\n").encode(), 6)  # as Index.dumps
    from s3pipes import S3Config
    from s3pipes.s3 import S3Client

    S3Client(S3Config(endpoint_url=endpoint.url)).write(f"s3://{BUCKET}/{INDEX_KEY}", data)
    return len(data) / 1e6


# ------------------------------------------------------------------------- requests per epoch


def _rank(rank: int, port: int, url: str, out: str) -> None:
    """One of RANKS ranks: EPOCHS epochs of the pipe in a DataLoader of WORKERS workers; rank 0 takes the
    server's counts of each epoch between barriers (the listing happens as the epoch's iter() begins)."""
    import torch.distributed as dist
    from torch.utils.data import DataLoader
    from torch.utils.data.datapipes.iter import IterableWrapper

    import s3pipes  # noqa: F401 - registers the functional names

    # 4 workers x 4 ranks on few cores is the point here, not a mistake to warn about
    warnings.filterwarnings("ignore", message=".*worker processes in total")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=RANKS)
    dp = IterableWrapper([URL]).list_s3().shuffle_shards().read_s3(concurrency=8)
    loader = DataLoader(dp, batch_size=None, num_workers=WORKERS)
    epochs = []
    for _ in range(EPOCHS):
        dist.barrier()
        if rank == 0:
            _control(url, "/__reset__")
        dist.barrier()
        start = time.perf_counter()
        for n, _sample in enumerate(loader, 1):
            if n == ITEMS:
                break
        seconds = time.perf_counter() - start
        dist.barrier()
        if rank == 0:
            epochs.append({**counts(url), "seconds": round(seconds, 2)})
    if rank == 0:
        Path(out).write_text(json.dumps(epochs))
    dist.destroy_process_group()


def _spawn_ranks(endpoint: Endpoint) -> list[dict[str, Any]]:
    import tempfile

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "epochs.json")
        mp.spawn(_rank, args=(port, endpoint.url, out), nprocs=RANKS, join=True)
        return json.loads(Path(out).read_text())


def requests_per_epoch(keys: int) -> list[dict[str, Any]]:
    """The rows of LIST, GET and HEAD requests per epoch, without an index and with one."""
    import s3pipes
    from s3pipes import S3Config

    rows = []
    with Endpoint(keys) as endpoint:
        os.environ["S3_ENDPOINT_URL"] = endpoint.url
        for indexed in (False, True):
            if indexed:
                t = time.perf_counter()
                s3pipes.build_index(URL, config=S3Config(endpoint_url=endpoint.url))
                built = time.perf_counter() - t
                body = endpoint.boto().get_object(Bucket=BUCKET, Key=INDEX_KEY)["Body"].read()
                same = gzip.decompress(body).decode() == "\n".join(index_lines(keys)) + "\n"
                if not same:
                    raise SystemExit("the generated index differs from build_index's: the 1M rows would lie")
                print(f"build_index over {keys:,} keys: {built:.1f} s; the generated index is the same", flush=True)
            for epoch, counts in enumerate(_spawn_ranks(endpoint)):
                rows.append({"row": "requests per epoch", "keys": keys, "index": indexed, "epoch": epoch,
                             "ranks": RANKS, "workers": WORKERS, "pages": -(-keys // 1000),
                             "items_read_per_rank": ITEMS, "LIST": counts.get("LIST", 0),
                             "GET": counts.get("GET", 0), "HEAD": counts.get("HEAD", 0),
                             "index_GETs": counts["stored_gets"].get(INDEX_KEY, 0), "seconds": counts["seconds"]})
                print(rows[-1], flush=True)
    return rows


# ------------------------------------------------------------------------- time to first sample


def _first_sample(url: str) -> None:
    """In a fresh process: seconds from building the pipe to its first ``(url, bytes)``, as JSON."""
    import resource

    from torch.utils.data.datapipes.iter import IterableWrapper

    import s3pipes  # noqa: F401

    os.environ["S3_ENDPOINT_URL"] = url
    start, cpu = time.perf_counter(), time.process_time()
    dp = IterableWrapper([URL]).list_s3().shuffle_shards().read_s3()
    first_url, data = next(iter(dp))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "first": first_url, "bytes": len(data),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def time_to_first_sample(keys: int, delay_ms: float, indexed: bool) -> dict[str, Any]:
    with Endpoint(keys) as endpoint:
        mb = write_index(endpoint, keys) if indexed else None
        endpoint.delay(delay_ms)
        endpoint.reset()
        out = subprocess.run([sys.executable, __file__, "--first-sample", endpoint.url], check=True,
                             capture_output=True, text=True).stdout
        result = json.loads(out.strip().splitlines()[-1])
        counts = endpoint.counts()
    row = {"row": "time to first sample", "keys": keys, "index": indexed, "delay_ms": delay_ms,
           "seconds": round(result["seconds"], 2), "cpu_seconds": round(result["cpu_seconds"], 2), "index_mb": mb and round(mb, 1),
           "LIST": counts.get("LIST", 0), "GET": counts.get("GET", 0),
           "index_GETs": counts["stored_gets"].get(INDEX_KEY, 0), "peak_rss_mb": round(result["peak_rss_mb"])}
    print(row, flush=True)
    return row


# ------------------------------------------------------------------------------------------ report


def table(rows: list[dict[str, Any]]) -> str:
    out = ["| row | keys | index | LIST | GET | HEAD | index GETs | seconds | notes |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["row"] == "requests per epoch":
            note = (f"epoch {r['epoch']}, {r['ranks']} ranks x {r['workers']} workers, {r['pages']} pages a "
                    f"listing, {r['items_read_per_rank']} samples read per rank")
        else:
            note = f"+{r['delay_ms']:g} ms a request, {r['cpu_seconds']} s of CPU, peak RSS {r['peak_rss_mb']} MB"
            if r["index_mb"]:
                note += f", index {r['index_mb']} MB"
        out.append(f"| {r['row']} | {r['keys']:,} | {'yes' if r['index'] else 'no'} | {r['LIST']} | {r['GET']} | "
                   f"{r.get('HEAD', '')} | {r['index_GETs']} | {r['seconds']} | {note} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small numbers, for a smoke run")
    parser.add_argument("--big", action="store_true", help="also the first sample over 10M keys, indexed")
    parser.add_argument("--first-sample", metavar="URL", help=argparse.SUPPRESS)  # the child of a row
    args = parser.parse_args()
    os.environ.update(ENV)
    if args.first_sample:
        _first_sample(args.first_sample)
        return
    p = PROFILES["quick" if args.quick else "full"]
    rows = requests_per_epoch(p["list_keys"])
    for keys in p["ttfs_keys"]:
        rows.append(time_to_first_sample(keys, p["delay_ms"], indexed=True))
        rows.append(time_to_first_sample(keys, p["delay_ms"], indexed=False))
    if args.big:
        rows.append(time_to_first_sample(10_000_000, p["delay_ms"], indexed=True))
    print(table(rows))
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    name = "scale-quick.json" if args.quick else "scale.json"
    # The load average says how much of the machine the wall-clock seconds had (CPU seconds are steadier).
    (results / name).write_text(json.dumps({"cpus": os.cpu_count(), "load_average": os.getloadavg(), "rows": rows},
                                           indent=1) + "\n")
    print(f"wrote {results / name}")


if __name__ == "__main__":
    main()
