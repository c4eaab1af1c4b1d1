"""s3pipes against its peers, in one run, on a local nginx serving S3-style paths.

    make bench                              # or: .venv/bin/python benchmarks/run.py [--quick]

Generates a dataset under benchmarks/data/ (kept between runs), starts nginx (Debian's nginx-light; run
as root it is installed with apt-get if missing) on a free 127.0.0.1 port with its own config in a temp
dir, and a user-space delay proxy in front of it for the "+RTT" workload. Each (workload, client) runs in
its own process, bounded by a time cap, so its CPU time and peak RSS are its own; nginx's CPU time over
the same interval shows whether the server was the bottleneck. The images rows (benchmarks/images.py) read
JPEG shards through DataLoader workers, decoded by s3pipes and by webdataset, and have a table of their
own. Results: benchmarks/results/latest.json, latest.png, and markdown tables on stdout. Everything
started here is stopped by PID at the end. The clients are in benchmarks/peers.py, the tables and the
chart in benchmarks/report.py; this file makes the data, serves it, and runs and measures each client.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import images
from peers import BUCKET, CLIENTS, REGION, KiB, MiB
from report import _line, report

HERE = Path(__file__).resolve().parent
PROFILES = {
    "full": {"small_n": 2000, "small": 100 * KiB, "large_n": 4, "large": 64 * MiB, "shards": 16,
             "shard": 64 * MiB, "member": 100 * KiB, "big_tar": 1024 * MiB, "image_shards": 16,
             "per_image_shard": 256, "cap": 20.0},
    "quick": {"small_n": 300, "small": 100 * KiB, "large_n": 4, "large": 16 * MiB, "shards": 4,
              "shard": 16 * MiB, "member": 100 * KiB, "big_tar": 128 * MiB, "image_shards": 4,
              "per_image_shard": 128, "cap": 5.0},
}


# ------------------------------------------------------------------------------------------- data


def _tar(path: Path, size: int, member: int) -> None:
    with tarfile.open(path, "w") as t:
        for i in range(max(1, size // (member + 512))):
            info = tarfile.TarInfo(f"{i:06d}.bin")
            info.size = member
            t.addfile(info, _RandomFile(member))


class _RandomFile:
    def __init__(self, n: int) -> None:
        self.left = n

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return os.urandom(n)


def make_data(root: Path, p: dict[str, Any]) -> dict[str, list[str]]:
    """Write the dataset as root/bucket/key (reused when the same profile made it) and return the keys."""
    base = root / BUCKET
    keys = {
        "small": [f"small/{i:05d}.bin" for i in range(p["small_n"])],
        "large": [f"large/{i}.bin" for i in range(p["large_n"])],
        "shards": [f"shards/shard-{i:03d}.tar" for i in range(p["shards"])],
        "bigtar": ["bigtar/big.tar"],
        "images": [f"images/shard-{i:03d}.tar" for i in range(p["image_shards"])],
    }
    stamp = base / "profile.json"
    if stamp.exists() and json.loads(stamp.read_text()) == p:
        return keys
    shutil.rmtree(base, ignore_errors=True)
    for d in ("small", "large", "shards", "bigtar"):
        (base / d).mkdir(parents=True)
    print(f"generating the dataset under {base} ...", flush=True)
    for k in keys["small"]:
        (base / k).write_bytes(os.urandom(p["small"]))
    for k in keys["large"]:
        with open(base / k, "wb") as f:
            for _ in range(p["large"] // MiB):
                f.write(os.urandom(MiB))
    for k in keys["shards"]:
        _tar(base / k, p["shard"], p["member"])
    _tar(base / keys["bigtar"][0], p["big_tar"], MiB)
    images.write_shards(base, keys["images"], p["per_image_shard"])
    stamp.write_text(json.dumps(p))
    return keys


# ------------------------------------------------------------------------------------------ servers


def warm(root: Path, keys: list[str]) -> None:
    """Read the files once, so every client is served from the page cache: the first would pay the disk."""
    for key in keys:
        with open(root / BUCKET / key, "rb") as f:
            while f.read(8 * MiB):
                pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, what: str) -> None:
    for _ in range(100):
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not listen on 127.0.0.1:{port}")


def _nginx_binary() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)
    if found:
        return found
    if os.geteuid() != 0:
        raise SystemExit("nginx is missing: run `sudo apt-get install nginx-light`, then this again")
    print("installing nginx-light with apt-get ...", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "nginx-light"], check=True,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    return shutil.which("nginx") or "/usr/sbin/nginx"


def start_nginx(root: Path, tmp: Path) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    conf = tmp / "nginx.conf"
    user = "user root root;" if os.geteuid() == 0 else ""  # workers must read the dataset
    conf.write_text(f"""{user}
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 300s;
    keepalive_requests 1000000;
    client_body_temp_path {tmp}/body;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {root};
        location / {{ }}
    }}
}}
""")
    proc = subprocess.Popen([_nginx_binary(), "-p", str(tmp), "-c", str(conf), "-g", "daemon off;"])
    _wait_port(port, proc, "nginx")
    return proc, port


def start_delay(upstream: int, rtt_ms: float) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, str(HERE / "delayproxy.py"), "--port", str(port),
                             "--upstream", str(upstream), "--rtt-ms", str(rtt_ms)])
    _wait_port(port, proc, "delay proxy")
    return proc, port


def stop(started: list[subprocess.Popen]) -> None:
    """End the processes this run started, by PID, last started first."""
    for proc in reversed(started):
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _tree_cpu(pid: int) -> float:
    import psutil

    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        return sum(sum(p.cpu_times()[:2]) for p in procs)
    except psutil.Error:
        return 0.0


# ------------------------------------------------------------------------------------------ clients


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MiB


def _client_cpu() -> float:
    """CPU seconds of this process and of its descendants (the DataLoader workers of the images clients,
    webdataset's curl under them), whether running or ended and waited for, whose time is then their
    parent's."""
    import psutil

    ended = resource.getrusage(resource.RUSAGE_CHILDREN)
    mine = resource.getrusage(resource.RUSAGE_SELF)
    total = mine.ru_utime + mine.ru_stime + ended.ru_utime + ended.ru_stime
    for proc in psutil.Process().children(recursive=True):
        try:
            total += sum(proc.cpu_times()[:4])  # its own, and its ended children's
        except psutil.Error:  # ended since listed: its time is its parent's now
            pass
    return total


def one(client: str, urls: list[str], ep: str, cap: float) -> dict[str, Any]:
    """Run one client in this process until it has read everything or ``cap`` seconds have passed."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_REGION", REGION)
    for module in ("torch", "s3pipes", "boto3", "s3fs", "obstore", "s3torchconnector"):
        try:  # imports are not the client's reading cost
            __import__(module)
        except ImportError:
            pass
    decode = images.decode_cost(client, urls, ep)  # before the read, so that nothing else runs meanwhile
    it = CLIENTS[client](urls, ep)
    base_rss = _rss_mib()
    cpu0, t0 = _client_cpu(), time.perf_counter()
    n = nbytes = 0
    for size in it:
        n, nbytes = n + 1, nbytes + size
        if time.perf_counter() - t0 > cap:
            break
    wall = time.perf_counter() - t0
    cpu = _client_cpu() - cpu0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"items": n, "bytes": nbytes, "wall_s": wall, "items_per_s": n / wall, "mb_per_s": nbytes / wall / 1e6,
            "cpu_ms_per_item": 1000 * cpu / max(n, 1), "peak_rss_mib": peak, "added_rss_mib": peak - base_rss,
            **decode}


# ------------------------------------------------------------------------------------------- driver


def run_child(client: str, urls: list[str], ep: str, cap: float, server_pids: list[int], tmp: Path) -> dict[str, Any]:
    listing = tmp / "urls.json"
    listing.write_text(json.dumps(urls))
    cpu0 = [_tree_cpu(p) for p in server_pids]
    proc = subprocess.run([sys.executable, __file__, "--one", client, str(listing), ep, str(cap)],
                          capture_output=True, text=True, timeout=cap * 6 + 120)
    cpu1 = [_tree_cpu(p) for p in server_pids]
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [""])[-1]
        return {"error": f"exit {proc.returncode}: {last[:200]}"}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["server_cpu_pct"] = 100 * (cpu1[0] - cpu0[0]) / out["wall_s"]
    if len(server_pids) > 1:
        out["delay_proxy_cpu_pct"] = 100 * (cpu1[1] - cpu0[1]) / out["wall_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, for development")
    ap.add_argument("--rtt-ms", type=float, default=40.0, help="round trip the delay proxy adds")
    ap.add_argument("--data", type=Path, default=HERE / "data")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--only", help="comma-separated workloads to run")
    ap.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        client, listing, ep, cap = args.one
        print(json.dumps(one(client, json.loads(Path(listing).read_text()), ep, float(cap))))
        return

    p = PROFILES["quick" if args.quick else "full"]
    root = (args.data / ("quick" if args.quick else "full")).resolve()
    keys = make_data(root, p)
    urls = {k: [f"s3://{BUCKET}/{key}" for key in v] for k, v in keys.items()}
    urls["large"] *= 4  # four passes over the four objects, so start-up costs do not decide the MB/s
    peers = ["boto3 sequential", "boto3 64 threads", "s3fs cat", "obstore gather", "s3torchconnector"]
    workloads = [
        ("small, 0 ms", "small", False, ["s3pipes", *peers]),
        (f"small, +{args.rtt_ms:g} ms", "small", True, ["s3pipes", *peers]),
        (f"{p['large_n']} x {p['large'] // MiB} MiB, 4 passes", "large", False,
         ["s3pipes", *peers, "obstore gather joined"]),
        ("tar shards", "shards", False,
         ["s3pipes tar", "s3pipes tar streamed", "s3pipes S3IterableDataset", "s3pipes", "obstore gather"]),
        (f"{p['big_tar'] // MiB} MiB tar streamed", "bigtar", False, ["s3pipes tar streamed"]),
        ("images, 0 ms", "images", False, list(images.CLIENTS)),
        (f"images, +{args.rtt_ms:g} ms", "images", True, list(images.CLIENTS)),
    ]
    if args.only:
        wanted = set(args.only.split(","))
        workloads = [w for w in workloads if w[1] in wanted or w[0] in wanted]
    started: list[subprocess.Popen] = []
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="s3pipes-bench-") as t:
        tmp = Path(t)
        try:
            nginx, port = start_nginx(root, tmp)
            started.append(nginx)
            delay, dport = start_delay(port, args.rtt_ms)
            started.append(delay)
            for title, data, delayed, clients in workloads:
                warm(root, keys[data])
                ep = f"http://127.0.0.1:{dport if delayed else port}"
                pids = [nginx.pid, delay.pid] if delayed else [nginx.pid]
                for client in clients:
                    r = run_child(client, urls[data], ep, p["cap"], pids, tmp)
                    r.update(workload=title, data=data, client=client)
                    results.append(r)
                    print(_line(r), flush=True)
        finally:
            stop(started)
    report(results, p, args)


if __name__ == "__main__":
    main()
