"""The `s3pipes` command: demo (in a subprocess, with its own endpoint), ls and bench against moto's server."""

from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import boto3
import pytest

from s3pipes.cli import main

THROUGHPUT = re.compile(r"demo: (\d+) samples, [\d.]+ MB in [\d.]+ s: (\d+) samples/s, [\d.]+ MB/s "
                        r"\(epoch average, worker start-up included\); loss [\d.]+ -> [\d.]+")


def cli(*args: str, **kw: object) -> subprocess.Popen:
    # The demo must not need the test session's endpoint: it starts its own.
    env = {k: v for k, v in os.environ.items() if k != "S3_ENDPOINT_URL"}
    return subprocess.Popen([sys.executable, "-m", "s3pipes", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def test_demo_trains_and_prints_its_throughput() -> None:
    proc = cli("demo", "--shards", "3", "--per-shard", "40", "--workers", "2")
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    m = THROUGHPUT.search(out)
    assert m and int(m.group(1)) == 120, out
    # decode().to_tuple() end the chain at tensors, which the DataLoader stacks into batches of 64.
    assert "demo batches: images (64, 3, 32, 32) uint8, labels (64,) int64" in out, out
    assert re.search(r"demo usage: LIST \d+ · HEAD 3 · GET \d+ · PUT 0 · [\d.]+ [KM]B in · 0 B out", out), out
    assert "epoch 1" in err and "120/120" in err, "a tqdm progress bar on stderr"
    # One rate, one meaning: the bar's final rate is the summary's (it showed 1,044 img/s against 2,451).
    bar_rates = re.findall(r"120/120 \[[^\]]*?([\d.]+) ?(\w+)/s\]", err)
    assert bar_rates and bar_rates[-1][1] == "samples", err
    assert float(bar_rates[-1][0]) == pytest.approx(int(m.group(2)), rel=0.1), (err, out)


def test_demo_keep_serves_until_ctrl_c() -> None:
    proc = cli("demo", "--shards", "2", "--per-shard", "10", "--workers", "0", "--keep")
    try:
        lines = []
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if line.startswith("Ctrl-C"):
                break
        env = dict(re.findall(r"export (\w+)=(\S+)", "".join(lines)))
        assert set(env) >= {"S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"}, lines
        s3 = boto3.client("s3", endpoint_url=env["S3_ENDPOINT_URL"], region_name=env["AWS_REGION"],
                          aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="s3pipes-demo")["Contents"]]
        assert keys == ["train/shard-0000.tar", "train/shard-0001.tar"]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert proc.returncode == 0


@pytest.fixture
def objects(put, bucket: str) -> list[str]:  # noqa: ANN001
    return [put(f"s3://{bucket}/data/{i:02d}.bin", bytes(1000 * (i + 1))) for i in range(5)]


def test_ls_lists_sizes_and_total(endpoint: str, bucket: str, objects: list[str], capsys) -> None:  # noqa: ANN001
    assert main(["ls", f"s3://{bucket}/data/", "--endpoint-url", endpoint]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:5] == [f"{1000 * (i + 1):>14,}  {u}" for i, u in enumerate(objects)]
    assert out[5] == "5 objects, 15.0 KB (15,000 bytes)"
    assert main(["ls", f"s3://{bucket}/nothing/"]) == 1
    assert f"s3://{bucket}/nothing/: no objects" in capsys.readouterr().err


def test_ls_local_directory(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.tar").write_bytes(b"12345")
    assert main(["ls", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{5:>14,}  {tmp_path}/a/x.tar", "1 objects, 5 B (5 bytes)"]


@pytest.mark.parametrize("extra", [[], ["--stream"]])
def test_bench_reads_every_byte(endpoint: str, bucket: str, objects: list[str], capsys, extra: list[str]) -> None:  # noqa: ANN001
    code = main(["bench", f"s3://{bucket}/data/", "--concurrency", "4", "--workers", "2", "--endpoint-url", endpoint,
                 *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert re.search(r"bench: 5 objects, 15\.0 KB in [\d.]+ s: [\d.]+ MB/s, [\d.]+ objects/s "
                     r"\(concurrency 4, 2 workers", captured.out), captured.out
    head = 5 if extra else 0  # a stream learns the size and ETag first
    assert f"bench usage: LIST 1 · HEAD {head} · GET 5 · PUT 0 · 15.0 KB in · 0 B out · 0 retries" in captured.out
    assert "read" in captured.err, "a tqdm progress bar"


def test_console_script_help() -> None:
    script = Path(sys.executable).with_name("s3pipes")
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and all(cmd in out.stdout for cmd in ("demo", "ls", "bench")), out.stdout


def test_demo_endpoint_takes_over_a_process_that_used_s3_before(endpoint: str, bucket: str, boto) -> None:  # noqa: ANN001
    """A notebook that read its own bucket, then starts the demo: the demo's data must go to the demo."""
    boto.put_object(Bucket=bucket, Key="mine.bin", Body=b"x")
    code = textwrap.dedent(f"""
        from s3pipes import S3Client, demo
        assert [o.url for o in S3Client().list("s3://{bucket}/")] == ["s3://{bucket}/mine.bin"]
        with demo.start_endpoint():
            demo.write_dataset(shards=1, per_shard=2)
            print([o.url for o in S3Client().list("s3://s3pipes-demo/train/")])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['s3://s3pipes-demo/train/shard-0000.tar']"
    assert "s3pipes-demo" not in [b["Name"] for b in boto.list_buckets()["Buckets"]], "nothing written to the old endpoint"


def _worker_counts(source: str) -> list[ast.expr]:
    """The worker counts a piece of code asks for: ``num_workers=`` arguments and ``--workers`` defaults."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            is_workers = any(isinstance(a, ast.Constant) and a.value == "--workers" for a in node.args)
            found += [k.value for k in node.keywords
                      if k.arg == "num_workers" or (is_workers and k.arg == "default")]
    return found


def test_readme_and_examples_ask_for_no_more_workers_than_a_2_core_machine_has() -> None:
    """The quickstart's num_workers=4 made torch warn twice on a 2-core machine (CI's): a fixed count
    above 2 must come with min(..., os.cpu_count())."""
    root = Path(__file__).parent.parent
    readme = (root / "README.md").read_text()
    sources = {f"README block {i}": block for i, block in enumerate(re.findall(r"```python\n(.*?)```", readme, re.S))}
    sources.update({str(p.relative_to(root)): p.read_text() for p in sorted((root / "examples").glob("*.py"))})
    sources["s3pipes/cli.py"] = (root / "s3pipes" / "cli.py").read_text()
    counts = {name: _worker_counts(src) for name, src in sources.items()}
    assert counts["README block 0"], "the quickstart starts DataLoader workers"
    too_many = {name: [ast.unparse(c) for c in found if isinstance(c, ast.Constant) and c.value > 2]
                for name, found in counts.items()}
    assert not any(too_many.values()), too_many
    for line in re.findall(r"^s3pipes .*", readme, re.M):
        assert not re.search(r"--workers ([3-9]|\d\d)", line), line


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_hints_name_the_cli_options(bucket: str, monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # noqa: ANN001
    """The library's hints name S3Config fields; the command's name its options."""
    port = _closed_port()
    cases = [
        (["--endpoint-url", f"127.0.0.1:{port}"], ["add http:// or https://", "--endpoint-url"]),
        (["--endpoint-url", f"http://127.0.0.1:{port}"], [f"http://127.0.0.1:{port}", "check --endpoint-url"]),
    ]
    for options, words in cases:
        assert main(["ls", f"s3://{bucket}/x/", *options]) == 1
        err = capsys.readouterr().err
        assert all(w in err for w in words) and "S3Config(" not in err and "check S3_ENDPOINT_URL" not in err, err
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert main(["ls", f"s3://{bucket}/x/"]) == 1
    err = capsys.readouterr().err
    assert "no AWS credentials" in err and "--anonymous" in err and "S3Config(" not in err, err


def test_cli_bucket_without_s3_scheme_hints_s3_but_local_paths_still_work(  # noqa: ANN001
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["ls", "s3pipes-demo/train/"]) == 1
    assert "did you mean s3://s3pipes-demo/train/?" in capsys.readouterr().err
    for missing in (f"{tmp_path}/s3pipes-demo/train/", "./s3pipes-demo/train/"):  # not shaped like bucket/prefix
        assert main(["ls", missing]) == 1
        assert "did you mean" not in capsys.readouterr().err
    (tmp_path / "s3pipes-demo" / "train").mkdir(parents=True)
    (tmp_path / "s3pipes-demo" / "train" / "a.tar").write_bytes(b"123")
    assert main(["ls", "s3pipes-demo/train/"]) == 0, "a real relative path is a local path"
    assert capsys.readouterr().out.splitlines()[0] == f"{3:>14,}  s3pipes-demo/train/a.tar"
    assert main(["ls", "s3pipes-demo/valid/"]) == 1
    assert "did you mean" not in capsys.readouterr().err, "its first part exists here: a local typo"
