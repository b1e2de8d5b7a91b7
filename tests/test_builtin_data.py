"""The built-in benchmark generator: format, determinism, faithful captions, unique scenes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qshift.data import builtin
from qshift.data.builtin import (BACKGROUNDS, COLOURS, COUNTS, JOINERS, MAX_WORDS, POSITIONS,
                                 SHAPES, SIZES, TEMPLATES, example_rngs, generate_builtin,
                                 make_example, sample_scene)
from qshift.data.manifest import load_split, read_manifest
from qshift.errors import ConfigError

N = {"train": 40, "val": 10, "test": 20}


def _generate(path: Path, **kw) -> dict:
    args = dict(n_train=N["train"], n_val=N["val"], n_test=N["test"], progress=False)
    return generate_builtin(path, **{**args, **kw})


def _pixels(root: Path, entry: dict) -> np.ndarray:
    return np.asarray(Image.open(root / "images" / entry["filepath"] / entry["filename"]))


def _alternation(phrases) -> str:
    # longest first, so "jet black" is preferred over "black"
    return "|".join(re.escape(p) for p in sorted(phrases, key=len, reverse=True))


def _key(scene: dict) -> tuple:
    return (scene["background"],
            tuple((o["shape"], o["colour"], o["size"], o["position"]) for o in scene["objects"]))


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("bench") / "builtin"
    return out, _generate(out)


@pytest.fixture(scope="module")
def doc(bench) -> dict:
    return read_manifest(bench[0] / "manifest.json")


def test_manifest_splits_load(bench):
    out, stats = bench
    assert stats["counts"] == N
    assert stats["seconds"] >= 0
    imgid = sentid = 0
    for split in ("train", "val", "test"):
        s = load_split(out / "manifest.json", split)
        assert s.n_images == N[split] and s.n_captions == 5 * N[split]
        assert s.dataset == "builtin"
        assert all(p.is_file() for p in s.image_paths)
        assert (np.bincount(s.txt2img) == 5).all()
        # ids are consecutive across splits: train, then val, then test
        assert s.image_ids.tolist() == list(range(imgid, imgid + N[split]))
        assert s.sentids.tolist() == list(range(sentid, sentid + 5 * N[split]))
        imgid, sentid = imgid + N[split], sentid + 5 * N[split]
        for p in s.image_paths[:5]:
            assert p.parent.name == split and p.suffix == ".png"
            with Image.open(p) as im:
                assert im.mode == "RGB" and im.size == (64, 64)
    assert not any(p.name.startswith(".") for p in out.parent.iterdir())  # no temp dir left


def test_meta_and_stats(bench, doc):
    out, stats = bench
    assert doc["dataset"] == "builtin" and doc["image_root"] == "images"
    meta = doc["meta"]
    assert meta["seed"] == 42 and meta["image_size"] == 64 and meta["n_captions"] == 5
    assert meta["version"] == builtin.VERSION
    for split in N:
        keys = {_key(im["scene"]) for im in doc["images"] if im["split"] == split}
        assert stats["unique_scenes"][split] == len(keys)


def test_image_size_and_caption_count(tmp_path):
    out = tmp_path / "b"
    _generate(out, n_train=3, n_val=0, n_test=2, image_size=32, n_captions=7)
    s = load_split(out / "manifest.json", "test")
    assert s.n_captions == 14
    with Image.open(s.image_paths[0]) as im:
        assert im.mode == "RGB" and im.size == (32, 32)
    assert all(len(set(caps)) == 7 for caps in
               ([s.captions[i] for i in idx] for idx in s.img2txt()))


def test_same_seed_is_byte_identical_other_seed_differs(bench, doc, tmp_path):
    out, _ = bench
    again = tmp_path / "again"
    _generate(again)
    assert (again / "manifest.json").read_bytes() == (out / "manifest.json").read_bytes()
    for entry in doc["images"]:
        np.testing.assert_array_equal(_pixels(again, entry), _pixels(out, entry))

    other = tmp_path / "other"
    _generate(other, seed=7)
    assert (other / "manifest.json").read_bytes() != (out / "manifest.json").read_bytes()
    n_same = sum(np.array_equal(_pixels(other, e), _pixels(out, e)) for e in doc["images"])
    assert n_same == 0


def test_independent_of_hash_seed(bench, tmp_path):
    out, _ = bench
    code = ("import sys; from qshift.data.builtin import generate_builtin; "
            "generate_builtin(sys.argv[1], 40, 10, 20, progress=False)")
    env = {**os.environ, "PYTHONHASHSEED": "12345",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(builtin.__file__).parents[2]),
                                                        os.environ.get("PYTHONPATH")]))}
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "h")], check=True, env=env)
    assert (tmp_path / "h" / "manifest.json").read_bytes() == \
        (out / "manifest.json").read_bytes()


def test_image_independent_of_split_sizes(bench, doc, tmp_path):
    out, _ = bench
    small = tmp_path / "small"
    _generate(small, n_test=5)
    small_doc = read_manifest(small / "manifest.json")
    assert len(small_doc["images"]) == N["train"] + N["val"] + 5
    for a, b in zip(small_doc["images"], doc["images"]):  # every image of the smaller run
        assert a == b  # same ids, file name, captions and scene
        np.testing.assert_array_equal(_pixels(small, a), _pixels(out, b))


def test_make_example_matches_written_files(bench, doc):
    out, _ = bench
    entry = [im for im in doc["images"] if im["split"] == "val"][3]
    scene, image, captions = make_example(42, "val", 3)
    assert scene.to_dict() == entry["scene"]
    assert captions == [s["raw"] for s in entry["sentences"]]
    np.testing.assert_array_equal(np.asarray(image), _pixels(out, entry))


def test_scene_structure(doc):
    for im in doc["images"]:
        scene = im["scene"]
        assert scene["background"] in BACKGROUNDS
        objs = scene["objects"]
        assert 1 <= len(objs) <= 3
        positions = [o["position"] for o in objs]
        assert len(set(positions)) == len(positions)  # distinct positions...
        assert positions == [p for p in POSITIONS if p in positions]  # ...in canonical order
        for o in objs:
            assert o["shape"] in SHAPES and o["colour"] in COLOURS and o["size"] in SIZES


def test_captions_faithful(doc):
    all_colours = {c: _alternation(s) for c, s in COLOURS.items()}
    all_shapes = {k: _alternation(s) for k, s in SHAPES.items()}
    all_bgs = {b: _alternation(s) for b, s in BACKGROUNDS.items()}
    n_bg = n_caps = 0
    for im in doc["images"]:
        scene = im["scene"]
        colours = {o["colour"] for o in scene["objects"]}
        shapes = {o["shape"] for o in scene["objects"]}
        caps = [s["raw"] for s in im["sentences"]]
        assert len(set(caps)) == len(caps) == 5
        for cap in caps:
            assert re.fullmatch(r"[a-z ,:]+\.", cap), cap
            assert len(cap.split()) <= MAX_WORDS
            # every object is named by its own size (optional), colour, shape, position (optional)
            for o in scene["objects"]:
                others = [p for name, ps in POSITIONS.items() if name != o["position"] for p in ps]
                pattern = (rf"\ban? (?:(?:{_alternation(SIZES[o['size']])}) )?"
                           rf"(?:{all_colours[o['colour']]}) (?:{all_shapes[o['shape']]})"
                           rf"(?: (?:{_alternation(POSITIONS[o['position']])})|"
                           rf"(?! (?:{_alternation(others)})))")
                assert re.search(pattern, cap), (o, cap)
            # ...and nothing absent from the image is named
            for c, alt in all_colours.items():
                assert c in colours or not re.search(rf"\b(?:{alt})\b", cap), (c, cap)
            for k, alt in all_shapes.items():
                assert k in shapes or not re.search(rf"\b(?:{alt})\b", cap), (k, cap)
            for b, alt in all_bgs.items():
                assert b == scene["background"] or not re.search(alt, cap), (b, cap)
            n_bg += bool(re.search(all_bgs[scene["background"]], cap))
            n_caps += 1
    assert 0.3 <= n_bg / n_caps <= 0.7  # roughly half of the captions mention the background


def test_captions_vary(doc):
    caps = [s["raw"] for im in doc["images"] for s in im["sentences"]]
    lengths = [len(c.split()) for c in caps]
    assert 10 <= np.median(lengths) <= 25
    starts = Counter(" ".join(c.split()[:2]) for c in caps)
    assert len(starts) >= 10 and max(starts.values()) < 0.3 * len(caps)


def test_barest_caption_always_fits():
    def longest(phrases) -> str:
        return max(phrases, key=lambda p: len(p.split()))

    def longest_synonym(vocab: dict) -> str:
        return longest(p for phrases in vocab.values() for p in phrases)

    obj = f"a {longest_synonym(COLOURS)} {longest_synonym(SHAPES)}"
    objs = f"{obj}, {obj} {longest(JOINERS)} {obj}"
    bg, count = longest_synonym(BACKGROUNDS), longest(COUNTS.values())
    worst = max(len(t.format(objs=objs, bg=bg, count=count).split()) for t in TEMPLATES)
    assert worst <= MAX_WORDS


def test_test_scenes_mostly_unique():
    keys = [sample_scene(example_rngs(42, "test", i)[0]).key() for i in range(1000)]
    counts = Counter(keys)
    assert sum(counts[k] == 1 for k in keys) / len(keys) >= 0.95


def test_crash_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def failing(*args, **kw):
        calls.append(args)
        if len(calls) > 5:
            raise RuntimeError("boom")
        return make_example(*args, **kw)

    monkeypatch.setattr(builtin, "make_example", failing)
    with pytest.raises(RuntimeError, match="boom"):
        _generate(tmp_path / "b")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kw", [dict(n_train=-1), dict(n_train=0, n_val=0, n_test=0),
                                dict(image_size=8), dict(n_captions=0)])
def test_bad_parameters(tmp_path, kw):
    with pytest.raises(ConfigError):
        _generate(tmp_path / "b", **kw)


def test_a_process_pool_writes_the_same_bytes(bench, tmp_path, monkeypatch):
    """workers > 1 (stage prepare: the job's CPUs) renders chunks on a spawn pool; every file —
    images and manifest — is byte-identical to the serial build, chunks crossing split ends."""
    out, stats = bench
    monkeypatch.setattr(builtin, "CHUNK", 7)  # several chunks per split, a short last one
    pooled = tmp_path / "pooled"
    assert _generate(pooled, workers=2)["unique_scenes"] == stats["unique_scenes"]
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(pooled) for p in pooled.rglob("*") if p.is_file())
    assert all((out / f).read_bytes() == (pooled / f).read_bytes() for f in files)
    with pytest.raises(ConfigError, match="workers must be a positive integer, got 0"):
        _generate(tmp_path / "bad", workers=0)
    assert not (tmp_path / "bad").exists()


def test_job_cpus_is_snakemakes_thread_count_else_the_affinity(monkeypatch):
    from qshift.runtime import job_cpus

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert job_cpus() == 3
    for unset in ("", "x", "0"):
        monkeypatch.setenv("OMP_NUM_THREADS", unset)
        assert job_cpus() == len(os.sched_getaffinity(0))
