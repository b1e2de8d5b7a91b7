"""Same seed -> identical metrics and online curves (a tiny real open_clip CLIP, real data)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _tiny import make_tiny_clip_dir, make_tiny_dataset, one_torch_thread
from qshift.adapt import run_stream, stream_order
from qshift.data.manifest import load_split
from qshift.evaluation import recall_at_k
from qshift.gallery import encode_all, encode_gallery, load_gallery
from qshift.models import load_model

_one_thread = pytest.fixture(autouse=True, scope="module")(one_torch_thread)

HP = {"lr": 1e-2}  # large enough that adaptation visibly moves the model in a few batches


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("det")
    clip = make_tiny_clip_dir(root / "tiny-clip")
    manifest = make_tiny_dataset(root / "builtin", n_test=40)
    encode_gallery(load_model(f"local-dir:{clip}"), manifest, root / "gallery.pt", batch_size=64)
    return {"clip": clip, "queries": load_split(manifest, "test"), "gallery": load_gallery(root / "gallery.pt")}


def _run(world, direction, seed, method="tcr", model=None, hp=HP):
    model = model or load_model(f"local-dir:{world['clip']}")  # a fresh source model per run
    return run_stream(model, method, dict(hp), direction, world["queries"], world["gallery"], batch_size=16,
                      steps=3, seed=seed, progress=False)


@pytest.mark.parametrize("direction", ["i2t", "t2i"])
def test_same_seed_identical_metrics_and_curves(world, direction):
    a, b = _run(world, direction, seed=7), _run(world, direction, seed=7)
    assert a["n_queries"] == (40 if direction == "i2t" else 200)
    assert a["counters"]["steps"] > 0  # it really adapted
    assert a["metrics"] == b["metrics"]
    assert a["online"] == b["online"]  # batch_r1, cum_r1 and every per-batch statistic
    assert a["counters"] == b["counters"]


def test_different_seed_different_stream_order():
    a, b = stream_order(200, 7), stream_order(200, 8)
    assert sorted(a) == list(range(200)) and sorted(b) == list(range(200))  # permutations
    assert not np.array_equal(a, b)
    assert np.array_equal(a, stream_order(200, 7))


def test_source_metrics_match_full_matrix_recall_for_any_seed(world):
    """run_stream's per-batch accumulation equals Recall@K on the full score matrix; the
    stream order (seed) cannot matter without adaptation."""
    model = load_model(f"local-dir:{world['clip']}")
    q, g = world["queries"], world["gallery"]
    emb = encode_all(model, "image", q, batch_size=64)
    expected = recall_at_k(emb @ g["text"].T, q.image_ids, g["text_owner"])
    for seed in (0, 1):
        got = _run(world, "i2t", seed, method="source", model=model, hp={})
        assert got["metrics"] == pytest.approx(expected, abs=1e-4)  # recall_at_k averages in float32
        assert got["steps"] == 0


def test_run_stream_twice_on_the_same_model_object(world):
    model = load_model(f"local-dir:{world['clip']}")
    a = _run(world, "i2t", seed=7, model=model)
    b = _run(world, "i2t", seed=7, model=model)
    assert a["online"] == b["online"]
