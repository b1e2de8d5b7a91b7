"""Image corruptions: all 16 of the benchmark at every severity, their seeding (in-process,
across processes, pooled and sharded builds) and the inputs that are not plain RGB."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qshift.corrupt.build import build_image_queries, merge_image_shards, parse_shard, shard_dir
from qshift.corrupt.image import (BENCHMARK_IMAGE, BLUR_IMAGE, IMAGE_CORRUPTIONS, MAX_PIXELS, NOISE_IMAGE,
                                  as_rgb, corrupt_image)
from qshift.errors import ConfigError, InputError, UnknownNameError

# corruptions that draw random numbers (the rest are deterministic functions of the image)
RANDOM = NOISE_IMAGE + ("glass_blur", "motion_blur", "fog", "frost", "snow", "elastic_transform")
# PSNR to the clean image falls at every step 1 -> 5 (checked on the fixture image); glass_blur,
# fog and frost follow ImageNet-C's parameter tables, which are not monotone in this measure
MONOTONE = NOISE_IMAGE + ("defocus_blur", "zoom_blur", "motion_blur", "snow", "contrast", "brightness", "pixelate",
                          "elastic_transform", "jpeg_compression")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real photograph (scikit-image's astronaut) at 64x64: noise-free structure and colour."""
    import skimage.data

    return np.asarray(Image.fromarray(skimage.data.astronaut()).resize((64, 64), Image.BILINEAR))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def test_the_sixteen_are_registered():
    assert len(BENCHMARK_IMAGE) == 16
    assert set(BENCHMARK_IMAGE) <= set(IMAGE_CORRUPTIONS.names())


@pytest.mark.parametrize("name", BENCHMARK_IMAGE)
def test_changes_input_keeps_shape_and_dtype(photo, name):
    before = photo.copy()
    for severity in range(1, 6):
        out = corrupt_image(name, photo, severity, seed=11)
        assert out.shape == photo.shape and out.dtype == np.uint8
        assert not np.array_equal(out, photo), f"{name} s{severity} left the image unchanged"
    assert np.array_equal(photo, before), "the input array was modified in place"


@pytest.mark.parametrize("name", BENCHMARK_IMAGE)
def test_deterministic_under_its_seed(photo, name):
    a = corrupt_image(name, photo, 3, seed=123)
    b = corrupt_image(name, photo, 3, seed=123)
    assert np.array_equal(a, b)
    c = corrupt_image(name, photo, 3, seed=124)
    if name in RANDOM:
        assert not np.array_equal(a, c), f"{name} ignores its seed"
    else:
        assert np.array_equal(a, c), f"{name} is deterministic and should not depend on the seed"


def test_frost_texture_and_crop_follow_the_seed(photo):
    """frost picks one of six textures and a random crop: both from the seeded global RNG."""
    outs = {digest(corrupt_image("frost", photo, 5, seed=s)) for s in range(8)}
    assert len(outs) == 8
    assert digest(corrupt_image("frost", photo, 5, seed=3)) == digest(corrupt_image("frost", photo, 5, seed=3))


def test_global_rng_is_left_alone(photo):
    np.random.seed(5)
    expected = np.random.random(3)
    np.random.seed(5)
    for name in ("gaussian_noise", "frost", "glass_blur"):
        corrupt_image(name, photo, 2, seed=1)
    assert np.array_equal(np.random.random(3), expected)


@pytest.mark.parametrize("name", NOISE_IMAGE + BLUR_IMAGE)
def test_psnr_falls_with_severity_noise_and_blur(photo, name):
    values = [psnr(photo, corrupt_image(name, photo, s, seed=7)) for s in range(1, 6)]
    assert values[0] > values[4] + 1.0, (name, values)


@pytest.mark.parametrize("name", MONOTONE)
def test_psnr_monotone_where_it_truly_is(photo, name):
    values = [psnr(photo, corrupt_image(name, photo, s, seed=7)) for s in range(1, 6)]
    assert all(a > b for a, b in zip(values, values[1:])), (name, values)


_CHILD = """
import hashlib, json, sys
import numpy as np
from qshift.corrupt.image import BENCHMARK_IMAGE, corrupt_image
img = np.load(sys.argv[1])
print(json.dumps({n: hashlib.sha256(corrupt_image(n, img, 3, seed=99).tobytes()).hexdigest()
                  for n in BENCHMARK_IMAGE}))
"""


def test_identical_across_processes(photo, tmp_path):
    """A fresh interpreter (other PYTHONHASHSEED, no prior RNG use) reproduces every output."""
    np.save(tmp_path / "img.npy", photo)
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    child = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "img.npy")], env=env,
                           capture_output=True, text=True, check=True)
    theirs = json.loads(child.stdout.strip().splitlines()[-1])
    np.random.seed(0)
    np.random.random(1000)  # this process's global RNG is in some other state
    ours = {n: digest(corrupt_image(n, photo, 3, seed=99)) for n in BENCHMARK_IMAGE}
    assert ours == theirs


# -- inputs that are not a plain RGB photo ----------------------------------------------------

def test_grayscale_is_replicated_to_rgb(photo):
    gray = photo[:, :, 1].copy()
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    for arr in (gray, gray[:, :, None]):
        out = corrupt_image("gaussian_noise", arr, 3, seed=4)
        assert out.shape == (64, 64, 3) and out.dtype == np.uint8
        assert np.array_equal(out, corrupt_image("gaussian_noise", rgb, 3, seed=4))


def test_rgba_drops_alpha_like_pil(photo):
    rgba = np.concatenate([photo, np.full(photo.shape[:2] + (1,), 77, np.uint8)], axis=2)
    assert np.array_equal(as_rgb(rgba), np.asarray(Image.fromarray(rgba, "RGBA").convert("RGB")))
    out = corrupt_image("frost", rgba, 2, seed=4)
    assert np.array_equal(out, corrupt_image("frost", photo, 2, seed=4))


@pytest.mark.parametrize("bad, match", [
    (np.zeros((32, 32, 3), np.float32), "dtype float32"),
    (np.zeros((32, 32, 5), np.uint8), r"got shape \(32, 32, 5\)"),
    (np.zeros((2, 32, 32, 3), np.uint8), "got shape"),
    (np.zeros((3, 40, 3), np.uint8), "40x3 image is too small"),
    (np.zeros((0, 0, 3), np.uint8), "too small"),
])
def test_bad_arrays_are_clear_errors(bad, match):
    with pytest.raises(InputError, match=match):
        corrupt_image("contrast", bad, 3, seed=0)


def test_bad_severity_and_name(photo):
    for sev in (0, 6, 2.5, "3", True):
        with pytest.raises(InputError, match="severity must be an integer in 1..5"):
            corrupt_image("contrast", photo, sev, seed=0)
    with pytest.raises(UnknownNameError, match="valid choices: .*gaussian_noise"):
        corrupt_image("gausian_noise", photo, 3, seed=0)


def test_tiny_images_work_for_every_corruption():
    """8x8 (and a thin 4x40) through all 16 at all severities, natively (no resize)."""
    rng = np.random.default_rng(0)
    for shape in ((8, 8, 3), (4, 40, 3)):
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        for name in BENCHMARK_IMAGE:
            for severity in range(1, 6):
                out = corrupt_image(name, img, severity, seed=1)
                assert out.shape == shape and out.dtype == np.uint8
                assert not np.array_equal(out, img), (shape, name, severity)


def test_huge_image_works():
    """4000x3000 is larger than every frost texture (max 900x600): the texture is scaled up."""
    img = np.random.default_rng(0).integers(0, 256, (3000, 4000, 3), dtype=np.uint8)
    out = corrupt_image("frost", img, 5, seed=2)
    assert out.shape == img.shape and not np.array_equal(out, img)


def test_over_the_size_limit_is_a_clear_error():
    side = int(MAX_PIXELS**0.5) + 1
    huge = np.broadcast_to(np.zeros(3, np.uint8), (side, side, 3))  # no memory behind it
    with pytest.raises(InputError, match=f"exceeds the limit of {MAX_PIXELS:,}"):
        corrupt_image("contrast", huge, 1, seed=0)


# -- building query folders: pool == serial == shards ---------------------------------------

@pytest.fixture(scope="module")
def tiny_manifest(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ds")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    entries = []
    for i in range(10):
        mode = ("RGB", "L", "RGBA")[i % 3]  # files in every mode PIL converts
        arr = rng.integers(0, 256, (40, 48, {"RGB": 3, "L": 1, "RGBA": 4}[mode]), dtype=np.uint8)
        Image.fromarray(arr.squeeze(), mode).save(images / f"{i:03d}.png")
        entries.append({"imgid": i, "filepath": "", "filename": f"{i:03d}.png", "split": "test", "sentids": [i],
                        "sentences": [{"sentid": i, "imgid": i, "raw": f"image {i}", "tokens": ["image", str(i)]}]})
    from qshift.data.manifest import write_manifest

    write_manifest(root / "manifest.json", "toy", entries, image_root="images")
    return root / "manifest.json"


def folder_bytes(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


@pytest.mark.parametrize("name", ["glass_blur", "frost"])
def test_pool_and_shards_equal_serial(tiny_manifest, tmp_path, name):
    serial, pooled, merged = tmp_path / "serial", tmp_path / "pooled", tmp_path / "merged"
    assert build_image_queries(tiny_manifest, serial, name, 4, seed=42, progress=False, workers=1) == 10
    build_image_queries(tiny_manifest, pooled, name, 4, seed=42, progress=False, workers=2)
    assert folder_bytes(serial) == folder_bytes(pooled)
    n = 3
    for i in range(n):
        build_image_queries(tiny_manifest, shard_dir(merged, i, n), name, 4, seed=42, progress=False,
                            workers=1, shard=(i, n))
    assert merge_image_shards([shard_dir(merged, i, n) for i in range(n)], merged) == 10
    assert folder_bytes(serial) == folder_bytes(merged)
    doc = json.loads((serial / "manifest.json").read_text())
    assert doc["meta"]["jpeg_quality"] == 95 and [im["filename"] for im in doc["images"]][:2] == ["000.jpg", "001.jpg"]
    with Image.open(serial / "001.jpg") as im:  # a grayscale source file comes out RGB
        assert im.mode == "RGB" and im.size == (48, 40)


def test_merge_rejects_wrong_shards(tiny_manifest, tmp_path):
    out = tmp_path / "q"
    for i in range(2):
        build_image_queries(tiny_manifest, shard_dir(out, i, 2), "contrast", 1, seed=42, progress=False, shard=(i, 2))
    with pytest.raises(InputError, match=r"holds shard \[1, 2\], expected \[0, 2\]"):
        merge_image_shards([shard_dir(out, 1, 2), shard_dir(out, 0, 2)], out)


def test_parse_shard():
    assert parse_shard("2/5") == (2, 5)
    for bad in ("5/5", "-1/3", "a/b", "3"):
        with pytest.raises(ConfigError, match="must look like i/n"):
            parse_shard(bad)


@pytest.mark.parametrize("workers", [1, 2])
def test_corrupt_file_is_named(tiny_manifest, tmp_path, workers):
    import shutil

    root = tmp_path / "ds"
    shutil.copytree(tiny_manifest.parent, root)
    (root / "images" / "004.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"cannot read image .*004\.png"):
        build_image_queries(root / "manifest.json", tmp_path / "out", "contrast", 1, seed=42, progress=False,
                            workers=workers)
    assert not (tmp_path / "out").exists()  # nothing half-built under the final name


def test_bad_workers(tiny_manifest, tmp_path):
    with pytest.raises(ConfigError, match="corrupt.image.workers must be an integer >= 0"):
        build_image_queries(tiny_manifest, tmp_path / "o", "contrast", 1, seed=42, progress=False, workers=-1)
