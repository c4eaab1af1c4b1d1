"""decode() and to_tuple(): shards of real images, labels and arrays on the moto server, decoded into
batches of tensors; errors that name shard and member; resumes through both pipes."""

from __future__ import annotations

import collections
import io
import json
import logging
import sys

import numpy as np
import pytest
import torch
from faultproxy import FaultProxy
from PIL import Image
from shards import tar_bytes
from torch.utils.data import DataLoader
from torch.utils.data.datapipes.iter import IterableWrapper
from torchdata.stateful_dataloader import StatefulDataLoader

import s3pipes
from s3pipes import DecodeError, S3Config
from s3pipes.decoders import ImageDecoder

H, W = 12, 16  # not square, so that a (W, H) mix-up shows
SHARDS, PER_SHARD = 4, 4


def pixels(i: int) -> np.ndarray:
    """Sample ``i``'s image: smooth (JPEG keeps it within a few levels), different for every ``i``, and
    below 256 for ``i`` < 16 (a value that wrapped would make an edge JPEG blurs)."""
    y, x = np.mgrid[0:H, 0:W]
    return np.stack([x * 8 + i * 5, y * 10 + i * 7, np.full_like(x, 40 + 13 * i)], axis=2).astype(np.uint8)


def encoded(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def image_members(i: int) -> list[tuple[str, bytes]]:
    """An image (PNG for even ``i``, JPEG for odd) and its label ``i``, label first as writers lay them out."""
    fmt, ext = ("PNG", "png") if i % 2 == 0 else ("JPEG", "jpg")
    return [(f"s{i:05d}.cls", str(i).encode()), (f"s{i:05d}.{ext}", encoded(pixels(i), fmt))]


@pytest.fixture(scope="module")
def images(boto, module_bucket: str) -> str:  # noqa: ANN001
    """SHARDS tar shards of PER_SHARD labelled images; the prefix."""
    for s in range(SHARDS):
        members = [m for i in range(s * PER_SHARD, (s + 1) * PER_SHARD) for m in image_members(i)]
        boto.put_object(Bucket=module_bucket, Key=f"img/shard-{s}.tar", Body=tar_bytes(members))
    return f"s3://{module_bucket}/img/"


def chain(prefix: str, config: S3Config | None = None):  # noqa: ANN201
    return (IterableWrapper([prefix]).list_s3(config=config).shuffle_shards().read_s3(stream=True, config=config)
            .load_tar().group_samples().decode().to_tuple("jpg;png", "cls"))


def check_image(image: torch.Tensor, label: int) -> None:
    want = torch.from_numpy(pixels(label)).permute(2, 0, 1).int()
    error = (image.int() - want).abs()
    if label % 2 == 0:
        assert error.max() == 0, f"PNG {label} decodes to the pixels written"
    else:
        assert error.float().mean() < 2 and error.max() <= 12, f"JPEG {label} is within JPEG's loss"


def test_chain_batches_images_and_labels_through_workers(images: str) -> None:
    labels = []
    for batch, (imgs, cls) in enumerate(DataLoader(chain(images), batch_size=2, num_workers=2)):
        assert imgs.shape == (2, 3, H, W) and imgs.dtype == torch.uint8, batch
        assert cls.dtype == torch.int64 and cls.shape == (2,)
        for image, label in zip(imgs, cls.tolist()):
            check_image(image, label)
        labels += cls.tolist()
    assert sorted(labels) == list(range(SHARDS * PER_SHARD)), "every sample once, PNG and JPEG alike"


def test_each_builtin_handler_and_what_stays_bytes(bucket: str, put) -> None:  # noqa: ANN001
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    npy, pt = io.BytesIO(), io.BytesIO()
    np.save(npy, arr)
    torch.save({"w": torch.ones(2)}, pt)
    members = [("s0.cls", b"7\n"), ("s0.index", b"12"), ("s0.txt", "héllo".encode()), ("s0.json", b'{"a": [1, 2]}'),
               ("s0.npy", npy.getvalue()), ("s0.pth", pt.getvalue()), ("s0.seg.png", encoded(pixels(2), "PNG")),
               ("s0.JPG", encoded(pixels(4), "PNG")), ("s0.webp", encoded(pixels(6), "WEBP")), ("s0.bin", b"\x00raw")]
    put(f"s3://{bucket}/d/a.tar", tar_bytes(members))
    (sample,) = IterableWrapper([f"s3://{bucket}/d/"]).list_s3().read_s3().load_tar().group_samples().decode()
    assert sample["__key__"] == "s0" and sample["__url__"] == f"s3://{bucket}/d/a.tar"
    assert (sample["cls"], sample["index"], sample["txt"], sample["json"]) == (7, 12, "héllo", {"a": [1, 2]})
    assert isinstance(sample["npy"], np.ndarray) and np.array_equal(sample["npy"], arr)
    assert torch.equal(sample["pth"]["w"], torch.ones(2))
    check_image(sample["seg.png"], 2)  # the field "seg.png" by its last part
    check_image(sample["JPG"], 4)  # extensions match case aside; the bytes, not the name, tell PNG from JPEG
    assert sample["webp"].shape == (3, H, W) and sample["webp"].dtype == torch.uint8
    assert sample["bin"] == b"\x00raw", "an unknown extension stays bytes"
    again = next(iter(IterableWrapper([sample]).decode()))
    assert again["cls"] == 7 and again["txt"] == "héllo", "values decoded already are left as they are"


def test_double_underscore_fields_are_untouched() -> None:
    raw = {"__key__": "s0", "__url__": "s3://b/s.tar", "__meta__.json": b'{"x": 1}', "json": b'{"x": 1}'}
    (out,) = IterableWrapper([raw]).decode()
    assert out["__meta__.json"] == b'{"x": 1}' and out["json"] == {"x": 1} and out["__key__"] == "s0"


@pytest.mark.parametrize("spec, shape, dtype", [
    ("torchrgb8", (3, H, W), torch.uint8), ("torchrgb", (3, H, W), torch.float32), ("torch", (3, H, W), torch.float32),
    ("torchl8", (1, H, W), torch.uint8), ("torchl", (1, H, W), torch.float32), ("torchrgba8", (4, H, W), torch.uint8),
    ("rgb8", (H, W, 3), np.uint8), ("rgb", (H, W, 3), np.float32), ("l8", (H, W), np.uint8), ("l", (H, W), np.float32),
])
def test_image_specs(spec: str, shape: tuple[int, ...], dtype: object) -> None:
    arr = pixels(5)
    (out,) = IterableWrapper([{"__key__": "s5", "png": encoded(arr, "PNG")}]).decode(spec)
    img = out["png"]
    assert tuple(img.shape) == shape and img.dtype == dtype
    hwc = torch.as_tensor(np.asarray(img)).float()
    if spec.startswith("torch"):
        hwc = hwc.permute(1, 2, 0)  # to (H, W, C), as the expected values are
    if hwc.dim() == 2:
        hwc = hwc[:, :, None]
    if "8" not in spec:
        assert 0 <= hwc.min() and hwc.max() <= 1, "floats in [0, 1]"
        hwc = hwc * 255
    grey = np.array(Image.fromarray(arr).convert("L"))[:, :, None]
    expected = {1: grey, 3: arr, 4: np.dstack([arr, np.full((H, W), 255, np.uint8)])}[hwc.shape[2]]
    assert torch.allclose(hwc, torch.from_numpy(expected).float(), atol=1e-3)


def test_pil_spec_hands_back_pillow_images() -> None:
    (out,) = IterableWrapper([{"__key__": "s1", "jpg": encoded(pixels(1), "JPEG")}]).decode("pil")
    assert isinstance(out["jpg"], Image.Image) and out["jpg"].mode == "RGB" and out["jpg"].size == (W, H)


@pytest.mark.parametrize("backend, jpeg, png", [("simplejpeg", "simplejpeg", "pil"), ("cv2", "cv2", "cv2"),
                                               ("auto", "simplejpeg", "pil")])
def test_faster_backends_give_pillows_pixels(backend: str, jpeg: str, png: str) -> None:
    pytest.importorskip(jpeg)
    fast, pil = ImageDecoder("torchrgb8", backend), ImageDecoder("torchrgb8", "pil")
    assert fast.by_format == {"jpeg": jpeg, "png": png, "other": "pil"}, "who decodes what: the rest is Pillow's"
    for i, fmt in ((3, "JPEG"), (4, "PNG")):
        data = encoded(pixels(i), fmt)
        assert fast(data).shape == (3, H, W) and (fast(data).int() - pil(data).int()).abs().max() <= 1, fmt
    grey = ImageDecoder("torchl8", backend)(encoded(pixels(3), "JPEG"))
    assert grey.shape == (1, H, W) and grey.dtype == torch.uint8


def test_a_missing_package_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "simplejpeg", None)  # what an uninstalled module looks like to import
    with pytest.raises(ImportError, match=r"image_backend='simplejpeg' needs the simplejpeg package, which is not installed: pip install 's3pipes\[fast"):
        IterableWrapper([]).decode(image_backend="simplejpeg")
    monkeypatch.setitem(sys.modules, "numpy", None)
    dp = IterableWrapper([{"__key__": "s0", "png": encoded(pixels(0), "PNG")}]).decode(skip_corrupt=True)
    with pytest.raises(ImportError, match=r"decoding images and .npy needs the numpy package, which is not installed: pip install 's3pipes\[images\]'"):
        list(dp)
    assert dp.skipped == 0, "a missing package is no corrupt member: nothing is skipped"
    with pytest.raises(ValueError, match="unknown image spec 'rgb16'"):
        IterableWrapper([]).decode("rgb16")
    with pytest.raises(ValueError, match="hands back Pillow images"):
        IterableWrapper([]).decode("pil", image_backend="cv2")


def test_user_handlers_win_by_longest_suffix() -> None:
    raw = {"__key__": "s0", "png": encoded(pixels(0), "PNG"), "seg.png": b"mask", "ids": b"1,2", "cls": b"4"}
    (out,) = IterableWrapper([raw]).decode(handlers={"seg.png": bytes.upper, "ids": lambda b: b.split(b","),
                                                     "CLS": lambda b: -int(b)})
    assert out["seg.png"] == b"MASK", "the handler for seg.png, not the image decoder"
    check_image(out["png"], 0)  # a plain png is still an image
    assert out["ids"] == [b"1", b"2"] and out["cls"] == -4, "handlers are matched case aside and win over built-ins"
    masks = {**raw, "seg.png": encoded(pixels(2), "PNG")}
    (out,) = IterableWrapper([masks]).decode(handlers={"seg.png": ImageDecoder("torchl8"), "png": len})
    assert out["png"] == len(raw["png"]), "a handler for png takes every png field but the one with its own"
    assert out["seg.png"].shape == (1, H, W)
    with pytest.raises(DecodeError, match=r"member 's0.seg.png' does not decode as the handler given for 'seg.png'"):
        list(IterableWrapper([raw]).decode(handlers={"seg.png": ImageDecoder("torchl8")}))


def corrupt_shard(put, bucket: str) -> str:  # noqa: ANN001
    """A shard of three samples whose second image is damaged (a JPEG cut in half); its URL."""
    members = [*image_members(1), *image_members(3), *image_members(5)]
    name, data = members[3]
    members[3] = (name, data[: len(data) // 2])
    return put(f"s3://{bucket}/c/shard.tar", tar_bytes(members))


def test_a_corrupt_image_names_shard_and_member(bucket: str, put) -> None:  # noqa: ANN001
    url = corrupt_shard(put, bucket)
    dp = IterableWrapper([f"s3://{bucket}/c/"]).list_s3().read_s3().load_tar().group_samples().decode()
    with pytest.raises(DecodeError, match=rf"{url}: member 's00003.jpg' does not decode as an image .*OSError.*"
                                          r"decode\(skip_corrupt=True\)") as e:
        list(DataLoader(dp, batch_size=None, num_workers=1))
    assert isinstance(e.value, ValueError)


def test_skip_corrupt_leaves_the_sample_out_and_counts_it(bucket: str, put, caplog) -> None:  # noqa: ANN001
    url = corrupt_shard(put, bucket)
    dp = IterableWrapper([f"s3://{bucket}/c/"]).list_s3().read_s3().load_tar().group_samples().decode(
        skip_corrupt=True)
    with caplog.at_level(logging.WARNING, logger="s3pipes"):
        got = [(img.shape, label) for img, label in dp.to_tuple("jpg", "cls")]
    assert got == [((3, H, W), 1), ((3, H, W), 5)] and dp.skipped == 1
    assert (f"skipping a sample that does not decode (1 so far in this process): {url}: member 's00003.jpg'"
            in caplog.text)


def test_a_missing_field_names_sample_shard_and_fields(images: str) -> None:
    dp = IterableWrapper([images]).list_s3().read_s3().load_tar().group_samples().decode().to_tuple("jpg", "cls")
    with pytest.raises(KeyError) as e:
        list(dp)
    assert e.value.args[0] == (f"{images}shard-0.tar: sample 's00000' has no 'jpg' field (it has 'cls', 'png'); "
                               f"name one it has in to_tuple(), or leave samples without it out before (.filter)")


def test_to_tuple_refuses_what_it_cannot_pick() -> None:
    with pytest.raises(ValueError, match="needs the fields"):
        IterableWrapper([]).to_tuple()
    with pytest.raises(ValueError, match="an empty field name"):
        IterableWrapper([]).to_tuple("png;", "cls")
    with pytest.raises(TypeError, match=r"TupleMaker takes samples.*got tuple .*put it after .group_samples\(\)"):
        list(IterableWrapper([("s3://b/s.tar/s0.png", b"P")]).to_tuple("png"))


def test_len_is_the_sources(bucket: str, put) -> None:  # noqa: ANN001
    for s in range(2):
        put(f"s3://{bucket}/n/shard-{s}.tar", tar_bytes([m for i in range(3 * s, 3 * s + 3) for m in image_members(i)]))
    dp = IterableWrapper([f"s3://{bucket}/n/"]).list_s3().read_s3().load_tar().group_samples().decode().to_tuple("cls")
    with pytest.raises(TypeError):
        len(dp)  # no index: group_samples cannot know, nor can what follows it
    s3pipes.build_index(f"s3://{bucket}/n/")
    dp = IterableWrapper([f"s3://{bucket}/n/"]).list_s3().read_s3().load_tar().group_samples().decode().to_tuple("cls")
    assert len(dp) == len(list(dp)) == 6


@pytest.mark.parametrize("stop", [1, 5])
def test_resume_mid_epoch_through_decode_yields_exactly_the_rest(endpoint: str, images: str, stop: int) -> None:
    """Batches of 2 from 2 workers: a state taken after ``stop`` batches, loaded into a new loader, gives
    the other samples of the epoch, and shards delivered whole are not downloaded again (as they would
    be if the loader replayed the epoch and skipped what it had yielded)."""
    torch.manual_seed(0)
    with FaultProxy(endpoint) as proxy:
        cfg = S3Config(endpoint_url=proxy.url)
        loader = StatefulDataLoader(chain(images, cfg), batch_size=2, num_workers=2)
        it = iter(loader)
        before = [label for _ in range(stop) for label in next(it)[1].tolist()]
        state = loader.state_dict()
        del it, loader
        proxy.log.clear()
        torch.manual_seed(1)  # a restarted job
        resumed = StatefulDataLoader(chain(images, cfg), batch_size=2, num_workers=2)
        resumed.load_state_dict(state)
        after = []
        for imgs, cls in resumed:
            for image, label in zip(imgs, cls.tolist()):
                check_image(image, label)
                after.append(label)
        fetched = {r.path for r in proxy.log if r.method == "GET" and ".tar" in r.path}
    assert collections.Counter(before + after) == collections.Counter(range(SHARDS * PER_SHARD))
    done = collections.Counter(label // PER_SHARD for label in before)
    finished = {f"/{images[5:]}shard-{s}.tar" for s, n in done.items() if n == PER_SHARD}
    assert not finished & fetched, "a shard delivered whole before the restart is not read again"
    assert len(fetched) == SHARDS - len(finished)
