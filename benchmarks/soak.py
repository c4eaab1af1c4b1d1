"""Soak test (issue 15): no abort in a long run of 4 DataLoader workers reading small and large objects
while every core is busy.

    .venv/bin/python benchmarks/soak.py [--minutes 10] [--burners N] [--workers 4]

obstore (Rust, tokio) once killed a benchmark process with SIGABRT on a loaded machine. This runs, for
``--minutes``, one child process after another (this script with ``--child``), each reading a shuffled
mix of 100 KiB and 64 MiB objects with ``read_s3`` from run.py's nginx on 127.0.0.1, while
``--burners`` processes (default: one per core) spin. Each child exercises the paths that can abort:

- a DataLoader with 4 fresh workers (they read with obstore), for a few epochs, some cut short;
- reads in the child's own process (``S3Client.read_many``, ``read_s3`` without workers), which start
  tokio there;
- a second DataLoader, forked after that: its workers must fall back to boto3 (the fork guard in
  s3pipes/s3/engine_obstore.py); the two loaders alternate persistent and non-persistent workers;
- an epoch left early abandons reads in flight, and so does the child's exit, whose interpreter shuts
  down while tokio's threads still run.

Every object is checked against its file on disk (length, and bytes at each 8 MiB part boundary), every
full epoch must deliver each object once, and every worker's and child's exit code is checked: death by
a signal (SIGABRT is -6) is an abort. A child that runs past ``--child-timeout`` is a hang. The summary
is one JSON line on stdout and benchmarks/results/soak.json; the exit status is 1 on any abort or error.
The data (~300 MB) is made once under benchmarks/data/soak; nginx and the burners are stopped by PID.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import run
from peers import BUCKET, REGION, KiB, MiB

HERE = Path(__file__).resolve().parent
# Only small and large objects are read: make_data's other kinds are made as small as it allows.
PROFILE = {"small_n": 400, "small": 100 * KiB, "large_n": 4, "large": 64 * MiB, "shards": 0, "shard": 0,
           "member": 100 * KiB, "big_tar": 0, "image_shards": 0, "per_image_shard": 0, "cap": 0.0}
PART = 8 * MiB  # S3Config's default part_size: a large object arrives as ranged GETs of this size
# Lines of a child's stderr that are aborts (a Rust panic, a fatal interpreter error, a worker dead of a
# signal, as torch reports it), and that are errors (an exception, even one only printed).
ABORTS = ("panicked", "Fatal Python error", "killed by signal", "exited unexpectedly")
ERRORS = ("Traceback", "Exception ignored")


# -------------------------------------------------------------------------------------------- child


def check(data: bytes, path: Path, size: int) -> str | None:
    """Why ``data`` is not the file at ``path`` (None if it is): its length, and 4 KiB at its start,
    at each part boundary and at its end, so a part lost, repeated or misplaced shows."""
    if len(data) != size:
        return f"{path.name}: {len(data)} bytes, expected {size}"
    with open(path, "rb") as f:
        for at in {*range(0, size, PART), max(size - 4 * KiB, 0)}:
            if data[at:at + 4 * KiB] != os.pread(f.fileno(), 4 * KiB, at):
                return f"{path.name}: bytes at {at} differ from the file"
    return None


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run two DataLoaders and reads in this process, as the module docstring says; return the counts."""
    import warnings

    # 4 workers on fewer cores is what the soak is for: torch's advice against it is noise here.
    warnings.filterwarnings("ignore", "This DataLoader will create", UserWarning)
    from torch.utils.data import DataLoader
    from torch.utils.data.datapipes.iter import IterableWrapper

    import s3pipes
    from s3pipes.s3 import engine_obstore

    rng = random.Random(spec["seed"])
    urls: list[str] = spec["urls"]
    sizes: dict[str, int] = spec["sizes"]
    root = Path(spec["root"])
    cfg = s3pipes.S3Config(endpoint_url=spec["ep"], region=REGION)
    out: dict[str, Any] = {"objects": 0, "bytes": 0, "epochs": 0, "early": 0, "loaders": 0,
                           "obstore_loaders": 0, "boto3_loaders": 0, "worker_exits": [], "errors": []}

    def take(url: str, data: bytes) -> None:
        problem = check(data, root / url.removeprefix("s3://"), sizes[url])
        if problem:
            out["errors"].append(problem)
        out["objects"] += 1
        out["bytes"] += len(data)

    def loader(persistent: bool) -> None:
        # Workers forked once tokio runs here must read with boto3 (engine_obstore's fork guard).
        out["boto3_loaders" if engine_obstore.runtime_started() else "obstore_loaders"] += 1
        pipe = IterableWrapper(urls).read_s3(config=cfg)
        dl = DataLoader(pipe, num_workers=spec["workers"], batch_size=None, persistent_workers=persistent)
        for _ in range(rng.randint(2, 3)):
            it = iter(dl)
            # Leave some epochs early, mid-read: the workers (or, persistent, their reader) stop with
            # GETs in flight.
            stop = rng.randrange(len(urls)) if rng.random() < 0.4 else None
            seen: list[str] = []
            for url, data in it:
                take(url, data)
                seen.append(url)
                if len(seen) == stop:
                    break
            if stop is None:
                out["epochs"] += 1
                if sorted(seen) != sorted(urls):
                    out["errors"].append(f"an epoch gave {len(seen)} objects ({len(set(seen))} distinct), "
                                         f"expected each of {len(urls)} once")
            else:
                out["early"] += 1
            if not persistent:
                it._shutdown_workers()  # what dropping the iterator does, but now, so the exit codes are in
                out["worker_exits"] += [w.exitcode for w in it._workers]
        if persistent and dl._iterator is not None:
            dl._iterator._shutdown_workers()
            out["worker_exits"] += [w.exitcode for w in dl._iterator._workers]
        out["loaders"] += 1

    persistent = bool(spec["seed"] % 2)
    loader(persistent)
    # Reads in this process: tokio starts here, before the next loader forks.
    for url, data in s3pipes.S3Client(cfg).read_many(rng.sample(urls, 20)):
        take(url, data)
    for url, data in IterableWrapper(rng.sample(urls, 20)).read_s3(config=cfg):
        take(url, data)
    loader(not persistent)
    # Leave with GETs in flight: one object taken of several large ones, so the interpreter shuts down
    # while tokio's threads still read.
    large = [u for u in urls if sizes[u] > PART]
    for url, data in IterableWrapper(large).read_s3(config=cfg):
        take(url, data)
        break
    return out


# ------------------------------------------------------------------------------------------- driver


def signame(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # a real-time signal has no name
        return f"signal {number}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--burners", type=int, default=os.cpu_count() or 1, help="CPU-spinning processes")
    ap.add_argument("--child-timeout", type=float, default=300.0, help="seconds before a child counts as hung")
    ap.add_argument("--data", type=Path, default=HERE / "data")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child.read_text()))), flush=True)
        return

    # nginx does not check signatures, but the clients insist on having something to sign with.
    for var, value in (("AWS_ACCESS_KEY_ID", "soak"), ("AWS_SECRET_ACCESS_KEY", "soak"), ("AWS_REGION", REGION)):
        os.environ.setdefault(var, value)
    root = (args.data / "soak").resolve()
    keys = run.make_data(root, PROFILE)
    run.warm(root, keys["small"] + keys["large"])
    sizes = {f"s3://{BUCKET}/{k}": (root / BUCKET / k).stat().st_size for k in keys["small"] + keys["large"]}

    total: dict[str, Any] = {"children": 0, "loaders": 0, "epochs": 0, "early": 0, "obstore_loaders": 0,
                             "boto3_loaders": 0, "objects": 0, "bytes": 0}
    aborts: list[str] = []
    errors: list[str] = []
    worker_exits = 0  # workers whose exit code was checked
    stderr_lines: dict[str, int] = {}  # distinct stderr lines of the children, counted
    started: list[subprocess.Popen] = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="s3pipes-soak-") as t:
        tmp = Path(t)
        try:
            nginx, port = run.start_nginx(root, tmp)
            started.append(nginx)
            started += [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.burners)]
            while time.monotonic() - t0 < args.minutes * 60:
                n = total["children"]
                urls = list(sizes)
                random.Random(n).shuffle(urls)  # large objects land on different workers each time
                spec = tmp / "spec.json"
                spec.write_text(json.dumps({"seed": n, "urls": urls, "sizes": sizes, "root": str(root),
                                            "ep": f"http://127.0.0.1:{port}", "workers": args.workers}))
                # Its own session, so that a hung child's workers can be killed with it (by its group).
                proc = subprocess.Popen([sys.executable, __file__, "--child", str(spec)], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, start_new_session=True)
                hung = False
                try:
                    stdout, stderr = proc.communicate(timeout=args.child_timeout)
                except subprocess.TimeoutExpired:
                    hung = True
                    os.killpg(proc.pid, signal.SIGKILL)
                    stdout, stderr = proc.communicate()
                    errors.append(f"child {n} hung: killed after {args.child_timeout:g} s")
                total["children"] += 1
                for line in stderr.splitlines():
                    if line and not line[0].isspace():  # a log line, or a traceback's first or last
                        key = re.sub(r"\b\d+\b", "N", line)[:300]  # pids vary: the same message counts once
                        stderr_lines[key] = stderr_lines.get(key, 0) + 1
                    if any(a in line for a in ABORTS):
                        aborts.append(f"child {n}: {line.strip()[:300]}")
                    elif any(e in line for e in ERRORS) and proc.returncode == 0:  # else its exit says
                        errors.append(f"child {n}: {line.strip()[:300]}")
                if proc.returncode < 0 and not hung:
                    aborts.append(f"child {n} died of {signame(-proc.returncode)}")
                elif proc.returncode != 0 and not hung:
                    last = (stderr.strip().splitlines() or [""])[-1]
                    errors.append(f"child {n} exited with {proc.returncode}: {last[:300]}")
                if not stdout.strip():
                    continue
                out = json.loads(stdout.strip().splitlines()[-1])
                for k in total:
                    total[k] += out.get(k, 0)
                errors += [f"child {n}: {e}" for e in out["errors"]]
                worker_exits += len(out["worker_exits"])
                for code in out["worker_exits"]:
                    if code is None or code > 0:
                        errors.append(f"child {n}: a worker exited with {code}")
                    elif code == -signal.SIGTERM:  # torch's, to a worker alive 5 s after it was told to stop
                        errors.append(f"child {n}: a worker did not stop, and torch terminated it")
                    elif code < 0:
                        aborts.append(f"child {n}: a worker died of {signame(-code)}")
                print(f"[{(time.monotonic() - t0) / 60:5.1f} min] child {n}: {out['objects']} objects, "
                      f"{out['bytes'] / 1e9:.2f} GB, aborts so far {len(aborts)}, errors {len(errors)}",
                      file=sys.stderr, flush=True)
        finally:
            run.stop(started)

    summary = {"minutes": round((time.monotonic() - t0) / 60, 2), "burners": args.burners,
               "workers": args.workers, **{k: v for k, v in total.items() if k != "bytes"},
               "gb": round(total["bytes"] / 1e9, 2), "worker_exits_checked": worker_exits,
               "aborts": len(aborts), "abort_details": aborts, "errors": errors, "stderr_lines": stderr_lines}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary))
    sys.exit(1 if aborts or errors else 0)


if __name__ == "__main__":
    main()
