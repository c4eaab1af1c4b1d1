"""The results of benchmarks/run.py: its line per row, the targets, the markdown tables and the chart.

``report()`` writes benchmarks/results/latest.json (quick.json with --quick), the tables as latest.md and
on stdout, with the images rows' own table from benchmarks/images.py, and the chart as latest.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import images


def _line(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"{r['workload']:>22} | {r['client']:<26} | skipped: {r['error']}"
    return (f"{r['workload']:>22} | {r['client']:<26} | {r['items_per_s']:9.1f} items/s | {r['mb_per_s']:8.1f} MB/s"
            f" | {r['cpu_ms_per_item']:6.2f} ms CPU/item | peak RSS {r['peak_rss_mib']:6.0f} MiB"
            f" | server CPU {r['server_cpu_pct']:4.0f}%")


def _get(results: list[dict[str, Any]], workload: str, client: str) -> dict[str, Any] | None:
    return next((r for r in results if r["workload"] == workload and r["client"] == client and "error" not in r), None)


def targets(results: list[dict[str, Any]], rtt: float) -> list[tuple[str, float | None, str, float]]:
    """(what, measured, op, target) for each target of issues 5 and 15."""
    slow = f"small, +{rtt:g} ms"

    def ratio(workload: str, a: str, b: str, key: str) -> float | None:
        ra, rb = _get(results, workload, a), _get(results, workload, b)
        return ra[key] / rb[key] if ra and rb and rb[key] else None

    ours = _get(results, "small, 0 ms", "s3pipes")
    large = next((r["workload"] for r in results if r["data"] == "large"), "")
    tar, raw = _get(results, "tar shards", "s3pipes tar"), _get(results, "tar shards", "s3pipes")
    big = next((r for r in results if r["data"] == "bigtar" and "error" not in r), None)
    return [
        (f"{slow}: s3pipes / s3torchconnector", ratio(slow, "s3pipes", "s3torchconnector", "items_per_s"), ">=", 25),
        (f"{slow}: s3pipes / boto3 64 threads", ratio(slow, "s3pipes", "boto3 64 threads", "items_per_s"), ">=", 2),
        (f"{slow}: s3pipes / obstore gather", ratio(slow, "s3pipes", "obstore gather", "items_per_s"), ">=", 1.5),
        ("small, 0 ms: s3pipes / obstore gather", ratio("small, 0 ms", "s3pipes", "obstore gather", "items_per_s"),
         ">=", 0.95),
        ("small, 0 ms: s3pipes / s3torchconnector", ratio("small, 0 ms", "s3pipes", "s3torchconnector", "items_per_s"),
         ">=", 2.5),
        ("small, 0 ms: s3pipes client CPU ms/object", ours["cpu_ms_per_item"] if ours else None, "<=", 0.35),
        ("large: s3pipes / s3torchconnector (MB/s)", ratio(large, "s3pipes", "s3torchconnector", "mb_per_s"), ">=", 3),
        ("large: s3pipes / boto3 sequential (MB/s)", ratio(large, "s3pipes", "boto3 sequential", "mb_per_s"), ">=", 1),
        ("large: s3pipes / obstore parts joined (MB/s)", ratio(large, "s3pipes", "obstore gather joined", "mb_per_s"),
         ">=", 0.95),
        ("large: s3pipes (one buffer) / obstore parts (MB/s)", ratio(large, "s3pipes", "obstore gather", "mb_per_s"),
         ">=", 0.9),
        ("tar shards: s3pipes tar / obstore parts (MB/s)", ratio("tar shards", "s3pipes tar", "obstore gather", "mb_per_s"),
         ">=", 0.9),
        ("tar shards: samples MB/s / raw GET MB/s", tar["mb_per_s"] / raw["mb_per_s"] if tar and raw else None,
         ">=", 0.9),
        ("tar streamed: added peak RSS (MiB)", big["added_rss_mib"] if big else None, "<", 128),
        ("images, 0 ms: s3pipes decode / webdataset decode",
         ratio("images, 0 ms", "s3pipes decode", "webdataset decode", "items_per_s"), ">=", 1),
        (f"images, +{rtt:g} ms: s3pipes decode / webdataset decode",
         ratio(f"images, +{rtt:g} ms", "s3pipes decode", "webdataset decode", "items_per_s"), ">=", 3),
    ]


def report(results: list[dict[str, Any]], p: dict[str, Any], args: argparse.Namespace) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    name = "quick" if args.quick else "latest"
    checks = targets(results, args.rtt_ms)
    meta = {"profile": p, "rtt_ms": args.rtt_ms, "cpus": os.cpu_count(), "python": sys.version.split()[0],
            "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    (args.out / f"{name}.json").write_text(json.dumps(
        {"meta": meta, "results": results,
         "targets": [{"what": w, "measured": m, "op": op, "target": t} for w, m, op, t in checks]}, indent=1))
    lines = ["| workload | client | objects/s | MB/s | client CPU ms/object | peak RSS MiB | server CPU % |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        if r["data"] == "images":  # a table of their own, below
            continue
        if "error" in r:
            lines.append(f"| {r['workload']} | {r['client']} | skipped: {r['error'][:60]} | | | | |")
        else:
            lines.append(f"| {r['workload']} | {r['client']} | {r['items_per_s']:.0f} | {r['mb_per_s']:.0f} | "
                         f"{r['cpu_ms_per_item']:.2f} | {r['peak_rss_mib']:.0f} | {r['server_cpu_pct']:.0f} |")
    lines += [*images.table(results), "", "| target | measured | wanted | met |", "|---|---:|---:|---|"]
    for w, m, op, t in checks:
        ok = m is not None and (m >= t if op == ">=" else m <= t if op == "<=" else m < t)
        lines.append(f"| {w} | {'n/a' if m is None else f'{m:.2f}'} | {op} {t:g} | {'yes' if ok else 'no'} |")
    table = "\n".join(lines)
    (args.out / f"{name}.md").write_text(f"{meta['when']}, {meta['cpus']} cores, Python {meta['python']}\n\n{table}\n")
    print("\n" + table)
    chart(results, args.out / f"{name}.png")


def chart(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = list(dict.fromkeys(r["workload"] for r in results))
    fig, axes = plt.subplots(1, len(workloads), figsize=(4.2 * len(workloads), 4.5), squeeze=False)
    for ax, w in zip(axes[0], workloads):
        rows = [r for r in results if r["workload"] == w and "error" not in r]
        data = rows[0]["data"] if rows else ""
        key, unit = (("mb_per_s", "MB/s") if data in ("large", "shards", "bigtar")
                     else ("items_per_s", "images/s" if data == "images" else "objects/s"))
        ax.bar([r["client"] for r in rows], [r[key] for r in rows],
               color=["tab:blue" if r["client"].startswith("s3pipes") else "tab:gray" for r in rows])
        ax.set_title(w)
        ax.set_ylabel(unit)
        ax.tick_params(axis="x", rotation=60, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
