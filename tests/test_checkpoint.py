"""Checkpoints through the moto server: bit-exact round trips, multipart, and no trace of a failed save."""

from __future__ import annotations

import pytest
import torch
from faultproxy import Fault, FaultProxy

import s3pipes
from s3pipes import S3Client, S3Config

MiB = 1 << 20
SMALL_PARTS = S3Config(part_size=5 * MiB)  # S3's smallest part, so a 16 MiB model is a 4-part upload


def model_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1024, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 10))
    return model.state_dict()


def no_trace(boto, bucket: str, key: str) -> None:  # noqa: ANN001
    assert "Contents" not in boto.list_objects_v2(Bucket=bucket, Prefix=key), "no object at the key"
    assert not boto.list_multipart_uploads(Bucket=bucket).get("Uploads"), "no open multipart upload"


def test_state_dict_round_trips_bit_exactly_through_multipart(boto, bucket: str, endpoint: str) -> None:  # noqa: ANN001
    state = model_state()
    url = f"s3://{bucket}/ckpt/model.pt"
    s3pipes.save(state, url, config=SMALL_PARTS)
    etag = boto.head_object(Bucket=bucket, Key="ckpt/model.pt")["ETag"].strip('"')
    assert etag.endswith("-4"), f"a 16 MiB checkpoint in 5 MiB parts is a 4-part upload, got {etag}"

    with FaultProxy(endpoint) as spy:  # counts the requests of either engine on the wire
        back = s3pipes.load(url, map_location="cpu", config=SMALL_PARTS.replace(endpoint_url=spy.url))
        ranged = sum(1 for r in spy.log if r.method == "GET" and "range" in r.headers)
    assert back.keys() == state.keys()
    for name, tensor in state.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor), name
        assert back[name].numpy().tobytes() == tensor.numpy().tobytes(), f"{name} is bit-exact"
    assert ranged >= 2, "the rest of the object comes as ranged GETs"


def test_small_checkpoint_is_one_put(boto, bucket: str) -> None:  # noqa: ANN001
    url = f"s3://{bucket}/small.pt"
    s3pipes.save({"step": 7, "w": torch.arange(4.0)}, url)
    assert "-" not in boto.head_object(Bucket=bucket, Key="small.pt")["ETag"], "a single PUT, not multipart"
    got = s3pipes.load(url)
    assert got["step"] == 7 and torch.equal(got["w"], torch.arange(4.0))


def test_failed_upload_mid_save_leaves_nothing(endpoint: str, boto, bucket: str) -> None:  # noqa: ANN001
    """The third part is refused after two were uploaded: the save fails and the upload is aborted."""
    with FaultProxy(endpoint, script=[Fault.error(403)],
                    applies=lambda method, path: "partNumber=3" in path) as proxy:
        with pytest.raises(PermissionError, match=f"s3://{bucket}/model.pt: access denied"):
            s3pipes.save(model_state(), f"s3://{bucket}/model.pt", config=SMALL_PARTS.replace(endpoint_url=proxy.url))
        methods = [r.method for r in proxy.log]
    assert methods.count("PUT") >= 3 and methods[-1] == "DELETE", "parts went up, then the abort"
    no_trace(boto, bucket, "model.pt")


def test_exception_while_writing_aborts_and_keeps_the_old_checkpoint(boto, bucket: str) -> None:  # noqa: ANN001
    url = f"s3://{bucket}/model.pt"
    s3pipes.save({"v": 1}, url)
    with pytest.raises(RuntimeError, match="preempted"):
        with S3Client(SMALL_PARTS).open_write(url) as f:
            f.write(b"x" * (12 * MiB))  # two parts are uploading or uploaded
            raise RuntimeError("preempted")
    assert s3pipes.load(url) == {"v": 1}, "the previous checkpoint is untouched"
    assert not boto.list_multipart_uploads(Bucket=bucket).get("Uploads"), "no open multipart upload"

    f = S3Client(SMALL_PARTS).open_write(f"s3://{bucket}/dropped.pt")
    f.write(b"y" * (6 * MiB))
    del f  # abandoned without close: aborted, not completed
    no_trace(boto, bucket, "dropped.pt")


def test_local_and_memory_checkpoints(tmp_path) -> None:  # noqa: ANN001
    state = {"w": torch.randn(3, 3)}
    for url in (str(tmp_path / "a" / "ckpt.pt"), f"file://{tmp_path}/b/ckpt.pt", "memory://ckpt-test/ckpt.pt"):
        s3pipes.save(state, url)
        assert torch.equal(s3pipes.load(url)["w"], state["w"])
    with pytest.raises(RuntimeError):
        with s3pipes.client_for(str(tmp_path / "c.pt")).open_write(str(tmp_path / "c.pt")) as f:
            f.write(b"partial")
            raise RuntimeError
    assert not (tmp_path / "c.pt").exists(), "a failed local write is discarded"
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}/missing.pt"):
        s3pipes.load(str(tmp_path / "missing.pt"))


class _Unpicklable:
    def __reduce__(self) -> tuple:
        raise RuntimeError("cannot pickle this")


def _snapshot(root) -> dict[str, int]:  # noqa: ANN001
    """Every entry under ``root`` with its mode: what a refused or failed save must leave as it was."""
    return {str(p.relative_to(root)): p.lstat().st_mode for p in [root, *root.rglob("*")]}


def test_a_refused_or_failed_local_save_touches_nothing(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """``save(obj, "ckpt/")`` on a folder used to move a tmpXXXXXXXX file into it and chmod it to
    drw-r--r--; ``"newdir/"`` wrote a file named newdir. Refused before anything is touched, and a save
    that fails midway leaves no temporary file (fsspec writes it aside in the temp directory)."""
    work, temp = tmp_path / "work", tmp_path / "temp"
    (work / "ckpt").mkdir(parents=True)
    (work / "ckpt" / "old.pt").write_bytes(b"old")
    temp.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr("tempfile.tempdir", str(temp))
    before = _snapshot(work)
    refused = {"ckpt/": (ValueError, r"^'ckpt/' ends in '/'; name a file to write, e.g. 'ckpt/model\.pt'"),
               "newdir/": (ValueError, r"^'newdir/' ends in '/'; name a file to write"),
               "ckpt": (IsADirectoryError, r"^ckpt: is a directory; name a file to write, e\.g\. 'ckpt/model\.pt'"),
               ".": (IsADirectoryError, r"^\.: is a directory; name a file to write"),
               str(work / "ckpt"): (IsADirectoryError, rf"^{work}/ckpt: is a directory; name a file to write"),
               f"file://{work}/ckpt/": (ValueError, r"ends in '/'; name a file to write"),
               "": (ValueError, r"^empty URL ''"), " ": (ValueError, r"^empty URL ' '")}
    for url, (error, message) in refused.items():
        with pytest.raises(error, match=message):
            s3pipes.save({"w": torch.zeros(2)}, url)
        with pytest.raises(error, match=message):
            s3pipes.client_for(url).open_write(url).__enter__()
        assert _snapshot(work) == before, url
    with pytest.raises(RuntimeError, match="cannot pickle this"):  # fails midway, after torch wrote a part
        s3pipes.save({"w": torch.zeros(1 << 20), "bad": _Unpicklable()}, "ckpt/new.pt")
    with pytest.raises(KeyError):
        with s3pipes.client_for("ckpt/old.pt").open_write("ckpt/old.pt") as f:
            f.write(b"partial")
            raise KeyError("the block failed")
    assert _snapshot(work) == before and (work / "ckpt" / "old.pt").read_bytes() == b"old"
    assert list(temp.iterdir()) == [], "no temporary file is left"
    s3pipes.save({"w": torch.zeros(2)}, "ckpt/new.pt")  # a file name is written, and the folder keeps its mode
    assert _snapshot(work) == {**before, "ckpt/new.pt": (work / "ckpt" / "new.pt").lstat().st_mode}
