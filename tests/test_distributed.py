"""Real torch.distributed ranks (gloo, spawned) x DataLoader workers: every sample once, equal epochs."""

from __future__ import annotations

import collections
import json
import socket

import pytest
import torch.multiprocessing as mp
from ddp_worker import SCENARIOS, run_rank
from shards import samples, tar_bytes

SHARDS, PER_SHARD, RANKS = 7, 4, 2


@pytest.fixture(scope="module")
def ranks_output(boto, module_bucket: str, tmp_path_factory) -> dict[str, list[list[str]]]:  # noqa: ANN001
    """Runs every scenario on 2 spawned ranks x 2 workers over 7 shards; returns what each rank saw."""
    for i in range(SHARDS):
        boto.put_object(Bucket=module_bucket, Key=f"shards/shard-{i}.tar",
                        Body=tar_bytes(samples(i * PER_SHARD, PER_SHARD)))
    out = tmp_path_factory.mktemp("ranks")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(run_rank, args=(RANKS, port, f"s3://{module_bucket}/shards/", str(out)), nprocs=RANKS, join=True)
    per_rank = [json.loads((out / f"rank{r}.json").read_text()) for r in range(RANKS)]
    return {name: [r[name] for r in per_rank] for name in SCENARIOS}


def keys(seen: list[str]) -> list[str]:
    return [s.rsplit("/", 1)[-1].split(".")[0] for s in seen]


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if "even" not in s])
def test_every_sample_exactly_once_across_ranks_and_workers(ranks_output: dict, scenario: str) -> None:
    seen = ranks_output[scenario]
    per_member = 1 if scenario.startswith("pipes") else 2  # grouped samples, or label and image members
    everything = collections.Counter(k for r in seen for k in keys(r))
    assert everything == collections.Counter({f"s{i:05d}": per_member for i in range(SHARDS * PER_SHARD)})
    assert not set(keys(seen[0])) & set(keys(seen[1])), "the ranks split the shards without overlap"


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if "even" in s])
def test_uneven_shards_give_every_rank_the_same_count(ranks_output: dict, scenario: str) -> None:
    seen = ranks_output[scenario]
    assert len(seen[0]) == len(seen[1]) > 0, [len(r) for r in seen]
    shards_read = {int(k[1:]) // PER_SHARD for r in seen for k in keys(r)}
    assert len(shards_read) == SHARDS - 1, "7 shards on 2 ranks: 3 each, one left out this epoch"
    assert not set(keys(seen[0])) & set(keys(seen[1]))


def test_ddp_example_checkpoints_and_resumes_mid_epoch(boto, bucket: str, tmp_path) -> None:  # noqa: ANN001
    import os
    import subprocess
    import sys
    from pathlib import Path

    for i in range(8):
        boto.put_object(Bucket=bucket, Key=f"shards/shard-{i}.tar", Body=tar_bytes(samples(i * 8, 8)))
    script = Path(__file__).resolve().parents[1] / "examples" / "ddp_train.py"
    log = tmp_path / "seen"

    def torchrun(*extra: str) -> str:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
             str(script), f"s3://{bucket}/shards/", "--ckpt", f"s3://{bucket}/ckpt/", "--seen", str(log), *extra],
            capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout

    assert "stopped after step 3" in torchrun("--stop-after", "3")
    assert "8 steps, 1 epochs" in torchrun("--resume")
    seen = [k for r in range(2) for k in (tmp_path / f"seen.rank{r}").read_text().split()]
    assert collections.Counter(seen) == collections.Counter(f"s{i:05d}" for i in range(64)), \
        "the run before the crash and the resumed run trained on every sample once"
    assert [len((tmp_path / f"seen.rank{r}").read_text().split()) for r in range(2)] == [32, 32]
