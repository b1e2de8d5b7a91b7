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


@pytest.fixture
def query_cache():
    from qshift.gallery import QUERY_IMAGES, set_query_cache

    yield QUERY_IMAGES
    set_query_cache(0)  # off again: the library default


def _same(a, b):
    assert a["metrics"] == b["metrics"] and a["online"] == b["online"]
    for k in a["outcomes"]:
        assert np.array_equal(np.asarray(a["outcomes"][k]), np.asarray(b["outcomes"][k])), k


def test_reused_query_images_give_the_same_results_bit_for_bit(world, query_cache):
    """A job's methods reuse the query set's preprocessed images (params query_cache_mb): every
    method's numbers, curves and per-query ranks are those of decoding each time."""
    from qshift.gallery import set_query_cache

    model = load_model(f"local-dir:{world['clip']}")  # one model, restored between runs as a job's cells are
    plain = {m: _run(world, "i2t", 3, method=m, model=model) for m in ("tent", "deyo", "tcr")}
    set_query_cache(64)
    cached = {m: _run(world, "i2t", 3, method=m, model=model) for m in ("tent", "deyo", "tcr")}
    assert query_cache.misses == 40 and query_cache.hits == 80  # decoded once, reused by the next two
    for m in plain:
        assert plain[m]["counters"]["steps"] > 0
        _same(plain[m], cached[m])
    other = load_model(f"local-dir:{world['clip']}")  # another model: its own transform, a fresh cache
    _same(plain["tent"], _run(world, "i2t", 3, method="tent", model=other))
    assert query_cache.misses == 40 and query_cache.hits == 0


def test_the_query_cache_sees_a_rewritten_image_and_stops_at_its_budget(world, query_cache, tmp_path):
    import dataclasses

    from PIL import Image

    from qshift.gallery import make_loader, set_query_cache

    model = load_model(f"local-dir:{world['clip']}")
    q = world["queries"]
    paths = [tmp_path / f"{i}.png" for i in range(4)]
    for p, src in zip(paths, q.image_paths[:4]):
        Image.open(src).save(p)
    split = dataclasses.replace(q, image_paths=paths, image_ids=q.image_ids[:4])
    one = next(iter(make_loader(model, "image", split, batch_size=4)))[0].nbytes  # one preprocessed image
    set_query_cache(1)
    query_cache.budget = 2 * one + one // 2  # room for two images
    first = next(iter(make_loader(model, "image", split, batch_size=4, cache=True)))
    assert query_cache.misses == 4 and len(query_cache.items) == 2 and query_cache.used <= query_cache.budget
    Image.open(q.image_paths[9]).save(paths[0])  # another picture under the same name
    again = next(iter(make_loader(model, "image", split, batch_size=4, cache=True)))
    plain = next(iter(make_loader(model, "image", split, batch_size=4)))
    assert torch.equal(again, plain) and not torch.equal(again[0], first[0])
    assert torch.equal(again[1:], first[1:]) and query_cache.hits == 1  # image 1 cached; 0 rewritten, 2-3 over budget
