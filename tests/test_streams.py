"""Multi-domain query streams: building (mixed / sequential), validation, the grid, and
run_stream's order, per-batch domains and per-domain metrics on a tiny real open_clip CLIP."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from _tiny import make_tiny_clip_dir, make_tiny_dataset, one_torch_thread
from qshift import config as qc
from qshift.adapt import run_stream, stream_order
from qshift.corrupt.build import build_image_queries, build_text_queries
from qshift.data.manifest import load_split, read_manifest
from qshift.errors import ConfigError, InputError
from qshift.evaluation import recall_at_k
from qshift.gallery import encode_all, encode_gallery, load_gallery
from qshift.models import load_model
from qshift.streams import assign_domains, build_image_stream, build_text_stream, majority, stream_info

REPO = Path(__file__).resolve().parents[1]
_one_thread = pytest.fixture(autouse=True, scope="module")(one_torch_thread)

MIXED = {"kind": "mixed", "corruptions": ["gaussian_noise", "contrast"], "severities": [3]}
SEQ = {"kind": "sequential", "corruptions": ["contrast", "gaussian_noise"], "severities": [2, 4]}
TEXT_SEQ = {"kind": "sequential", "corruptions": ["ocr", "char_swap"], "levels": [2]}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("streams")
    manifest = make_tiny_dataset(root / "builtin", n_test=24)
    clip = make_tiny_clip_dir(root / "tiny-clip")
    encode_gallery(load_model(f"local-dir:{clip}"), manifest, root / "gallery.pt", batch_size=64)
    build_image_stream(manifest, root / "mixed", "mixed", MIXED, seed=42, progress=False)
    build_image_stream(manifest, root / "seq", "seq", SEQ, seed=42, progress=False)
    build_text_stream(manifest, root / "tseq.json", "tseq", TEXT_SEQ, seed=42, progress=False)
    return {"root": root, "manifest": manifest, "clip": clip, "gallery": load_gallery(root / "gallery.pt")}


# -- domain assignment ------------------------------------------------------------------------------

def test_mixed_draws_every_domain_deterministically_in_the_runs_order():
    dom, order = assign_domains(1000, 3, "mixed", seed=5)
    assert order is None  # the run's own seeded permutation decides the order
    assert np.array_equal(dom, assign_domains(1000, 3, "mixed", seed=5)[0])
    assert not np.array_equal(dom, assign_domains(1000, 3, "mixed", seed=6)[0])
    counts = np.bincount(dom, minlength=3)
    assert counts.sum() == 1000 and counts.min() > 250  # i.i.d. uniform draws over the set


def test_sequential_blocks_arrive_in_the_listed_order():
    dom, order = assign_domains(10, 3, "sequential", seed=5)
    assert sorted(order.tolist()) == list(range(10))
    assert dom[order].tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]  # equal blocks, first domain first
    assert np.array_equal(order, assign_domains(10, 3, "sequential", seed=5)[1])
    with pytest.raises(InputError, match="at least as many queries"):
        assign_domains(2, 3, "sequential", seed=0)


def test_majority_breaks_ties_by_stream_order():
    assert majority(["b", "a", "b"], ["a", "b"]) == "b"
    assert majority(["b", "a"], ["a", "b"]) == "a"


# -- building -----------------------------------------------------------------------------------------

def test_image_stream_records_domains_and_reuses_the_per_corruption_pixels(world):
    root = world["root"]
    doc = read_manifest(root / "mixed/manifest.json")
    domains = [im["domain"] for im in doc["images"]]
    assert set(domains) == {"gaussian_noise-s3", "contrast-s3"} and len(domains) == 24
    assert doc["meta"]["stream"] == {"name": "mixed", "kind": "mixed", "seed": 42,
                                     "domains": ["gaussian_noise-s3", "contrast-s3"]}
    build_image_queries(world["manifest"], root / "gn3", "gaussian_noise", 3, seed=42, progress=False)
    im = next(im for im in doc["images"] if im["domain"] == "gaussian_noise-s3")
    assert (root / "mixed" / im["filename"]).read_bytes() == (root / "gn3" / im["filename"]).read_bytes()
    # rebuilding gives the same stream, byte for byte
    build_image_stream(world["manifest"], root / "mixed2", "mixed", MIXED, seed=42, progress=False)
    assert (root / "mixed2/manifest.json").read_text().replace("mixed2", "mixed") == \
        (root / "mixed/manifest.json").read_text()


def test_sequential_image_stream_order_puts_domains_in_blocks(world):
    split = load_split(world["root"] / "seq/manifest.json")
    info = stream_info(split, "i2t")
    assert info["kind"] == "sequential"
    assert info["domains"] == ["contrast-s2", "contrast-s4", "gaussian_noise-s2", "gaussian_noise-s4"]
    arrived = [info["query_domain"][i] for i in info["order"]]
    assert arrived == [d for d in info["domains"] for _ in range(6)]  # 24 queries, 4 blocks of 6
    with pytest.raises(InputError, match="direction t2i needs a text stream"):
        stream_info(split, "t2i")
    assert stream_info(load_split(world["manifest"]), "i2t") is None  # an ordinary query set


def test_text_stream_corrupts_each_caption_by_its_domain(world):
    root = world["root"]
    split = load_split(root / "tseq.json")
    info = stream_info(split, "t2i")
    assert len(info["query_domain"]) == split.n_captions == 120
    assert Counter(info["query_domain"]) == {"ocr-s2": 60, "char_swap-s2": 60}
    build_text_queries(world["manifest"], root / "ocr2.json", "ocr", 2, seed=42, progress=False)
    ocr = {s["sentid"]: s["raw"] for im in read_manifest(root / "ocr2.json")["images"] for s in im["sentences"]}
    sents = [s for im in read_manifest(root / "tseq.json")["images"] for s in im["sentences"]]
    assert all(s["raw"] == ocr[s["sentid"]] for s in sents if s["domain"] == "ocr-s2")
    assert sum(s["raw"] != s["clean"] for s in sents) > 60  # it really corrupts
    assert split.image_paths[0].is_file()  # images stay the clean ones


def test_a_draw_seed_draws_other_corruptions_and_streams_reuse_that_draw(world):
    """seed_corruptions: a set drawn for another run seed differs from the standard draw, is
    reproducible, and that seed's stream reuses its pixels / captions exactly."""
    root, manifest = world["root"], world["manifest"]
    build_image_queries(manifest, root / "gn3-std", "gaussian_noise", 3, seed=42, progress=False)
    build_image_queries(manifest, root / "gn3-d7", "gaussian_noise", 3, seed=42, progress=False, draw=7)
    build_image_queries(manifest, root / "gn3-d7b", "gaussian_noise", 3, seed=42, progress=False, draw=7)
    doc = read_manifest(root / "gn3-d7/manifest.json")
    assert doc["meta"]["draw_seed"] == 7 and "draw_seed" not in read_manifest(root / "gn3-std/manifest.json")["meta"]
    names = [im["filename"] for im in doc["images"]]
    assert all((root / "gn3-d7" / n).read_bytes() == (root / "gn3-d7b" / n).read_bytes() for n in names)
    assert sum((root / "gn3-d7" / n).read_bytes() != (root / "gn3-std" / n).read_bytes() for n in names) == len(names)
    build_image_stream(manifest, root / "mixed-d7", "mixed", MIXED, seed=42, progress=False, draw=7)
    sdoc = read_manifest(root / "mixed-d7/manifest.json")
    assert [im["domain"] for im in sdoc["images"]] == [im["domain"] for im in read_manifest(
        root / "mixed/manifest.json")["images"]]  # the same domains: only the draws change
    im = next(im for im in sdoc["images"] if im["domain"] == "gaussian_noise-s3")
    assert (root / "mixed-d7" / im["filename"]).read_bytes() == (root / "gn3-d7" / im["filename"]).read_bytes()
    build_text_queries(manifest, root / "ocr2-d7.json", "ocr", 2, seed=42, progress=False, draw=7)
    build_text_stream(manifest, root / "tseq-d7.json", "tseq", TEXT_SEQ, seed=42, progress=False, draw=7)
    ocr = {s["sentid"]: s["raw"] for im in read_manifest(root / "ocr2-d7.json")["images"] for s in im["sentences"]}
    build_text_queries(manifest, root / "ocr2-std.json", "ocr", 2, seed=42, progress=False)
    std = {s["sentid"]: s["raw"] for im in read_manifest(root / "ocr2-std.json")["images"] for s in im["sentences"]}
    sents = [s for im in read_manifest(root / "tseq-d7.json")["images"] for s in im["sentences"]]
    assert all(s["raw"] == ocr[s["sentid"]] for s in sents if s["domain"] == "ocr-s2")
    assert sum(ocr[k] != std[k] for k in ocr) > len(ocr) // 4


def test_draw_paths_and_the_draw_seed_checks():
    cfg = qc.load_params(REPO / "params.yaml", ["seeds=[42, 7]"])
    assert qc.draw_seed(cfg, 7) is None  # seed_corruptions is off by default: one standard draw
    assert qc.queries_path(cfg, "i2t", "fog", 3, 7) == qc.queries_path(cfg, "i2t", "fog", 3, 42)
    with pytest.raises(ConfigError, match="seed_corruptions is false"):
        qc.check_draw(cfg, 7)
    cfg["seed_corruptions"] = True
    assert qc.draw_seed(cfg, 42) is None and qc.draw_seed(cfg, 7) == 7
    assert qc.queries_path(cfg, "i2t", "fog", 3, 7) == "data/queries/builtin/image-seed7/fog-s3/manifest.json"
    assert qc.queries_path(cfg, "t2i", "ocr", 2, 7) == "data/queries/builtin/text-seed7/ocr-s2.json"
    assert qc.queries_path(cfg, "t2i", "ocr", 2, 42) == "data/queries/builtin/text/ocr-s2.json"
    assert qc.stream_path(cfg, "i2t", "mix", 7) == "data/queries/builtin/image-stream-seed7/mix"
    assert qc.queries_path(cfg, "i2t", "clean", 0, 7) == qc.MANIFEST.format(dataset="builtin")
    with pytest.raises(ConfigError, match="valid: 7"):
        qc.check_draw(cfg, 42)
    from qshift import presets

    # under DVC: dvc.yaml rendered without drawn seeds lacks their stages (python -m qshift.pipeline dvc renders them)
    root = str(Path(__file__).resolve().parents[1])
    with pytest.raises(ConfigError, match="only for params.yaml's benchmark 'builtin': corrupt_images_drawn, "
                                          "corrupt_stream_image_drawn, corrupt_stream_text_drawn, corrupt_text_drawn"):
        presets.dvc_guard(cfg, cfg, environ={"DVC_STAGE": "corrupt_images", "DVC_ROOT": root})


# -- run_stream ------------------------------------------------------------------------------------------

def test_run_stream_follows_the_sequential_order_and_labels_batches(world):
    split = load_split(world["root"] / "seq/manifest.json")
    model = load_model(f"local-dir:{world['clip']}")
    out = run_stream(model, "tcr", {"lr": 1e-2}, "i2t", split, world["gallery"], batch_size=6, steps=1, seed=3,
                     progress=False)
    assert out["online"]["domain"] == ["contrast-s2", "contrast-s4", "gaussian_noise-s2", "gaussian_noise-s4"]
    assert out["stream"] == {"name": "seq", "kind": "sequential", "domains": out["online"]["domain"]}
    by = out["metrics_by_domain"]
    assert list(by) == out["stream"]["domains"] and all(v["n_queries"] == 6 for v in by.values())
    for k in ("R@1", "R@5"):  # the per-domain numbers add up to the stream's
        assert sum(v[k] * v["n_queries"] for v in by.values()) / 24 == pytest.approx(out["metrics"][k])
    assert out["online"]["batch_r1"] == pytest.approx([by[d]["R@1"] for d in out["online"]["domain"]])


def test_source_on_a_mixed_stream_scores_each_domain_like_its_own_queries(world):
    """Without adaptation a query's score cannot depend on its neighbours: each domain's R@K
    equals Recall@K over that domain's queries scored alone; the order is the seeded one."""
    split = load_split(world["root"] / "mixed/manifest.json")
    model = load_model(f"local-dir:{world['clip']}")
    out = run_stream(model, "source", {}, "i2t", split, world["gallery"], batch_size=8, seed=9, progress=False)
    info = stream_info(split, "i2t")
    emb = encode_all(model, "image", split, batch_size=64)
    g = world["gallery"]
    for dom, got in out["metrics_by_domain"].items():
        idx = [i for i, d in enumerate(info["query_domain"]) if d == dom]
        want = recall_at_k(emb[idx] @ g["text"].T, split.image_ids[idx], g["text_owner"])
        assert got["n_queries"] == len(idx)
        assert {k: got[k] for k in want} == pytest.approx(want, abs=1e-4)
    order = stream_order(24, 9)
    first = Counter(info["query_domain"][i] for i in order[:8])
    assert out["online"]["domain"][0] == majority([info["query_domain"][i] for i in order[:8]], info["domains"])
    assert sum(first.values()) == 8


def test_run_stream_on_a_text_stream(world):
    split = load_split(world["root"] / "tseq.json")
    model = load_model(f"local-dir:{world['clip']}")
    out = run_stream(model, "tent", {"lr": 1e-3}, "t2i", split, world["gallery"], batch_size=30, steps=1, seed=1,
                     progress=False)
    assert out["online"]["domain"] == ["ocr-s2"] * 2 + ["char_swap-s2"] * 2
    assert {d: v["n_queries"] for d, v in out["metrics_by_domain"].items()} == {"ocr-s2": 60, "char_swap-s2": 60}


# -- params and the grid -----------------------------------------------------------------------------------

def _cfg(**streams) -> dict:
    cfg = qc.load_params(REPO / "params.yaml")
    cfg["streams"] = {"methods": ["source", "tcr"], "image": {"mix": MIXED, "seq": SEQ},
                      "text": {"tseq": TEXT_SEQ}, **streams}
    return cfg


def test_grid_has_stream_runs_and_their_query_paths():
    cfg = _cfg()
    qc.validate(cfg)
    stream_runs = [r for r in qc.runs(cfg) if r.severity == 0 and r.corruption != "clean"]
    assert {(r.direction, r.method, r.corruption) for r in stream_runs} == {
        (d, m, s) for m in ("source", "tcr") for d, s in [("i2t", "mix"), ("i2t", "seq"), ("t2i", "tseq")]}
    assert stream_runs[0].result_path.endswith("/i2t/source/seed42/mix-s0.json")
    assert qc.queries_path(cfg, "i2t", "mix", 0) == "data/queries/builtin/image-stream/mix/manifest.json"
    assert qc.queries_path(cfg, "t2i", "tseq", 0) == "data/queries/builtin/text-stream/tseq.json"
    cfg["streams"]["methods"] = []
    assert not [r for r in qc.runs(cfg) if r.corruption in ("mix", "seq", "tseq")]
    del cfg["streams"]
    qc.validate(cfg)  # the section is optional


@pytest.mark.parametrize("change, message", [
    ({"methods": ["source", "deyo_x"]}, "streams.methods has 'deyo_x', which is not in adapt.methods"),
    ({"image": {"contrast": MIXED}}, "collides with a corruption name"),
    ({"image": {"clean": MIXED}}, "collides with a corruption name"),
    ({"image": {"Mix-1": MIXED}}, "names use a-z, 0-9 and _ only"),
    ({"image": {"m": {**MIXED, "kind": "shuffled"}}}, "streams.image.m.kind is 'shuffled'; valid: mixed, sequential"),
    ({"image": {"m": {**MIXED, "corruptions": ["gaussian_noise"]}}}, "single domain"),
    ({"image": {"m": {**MIXED, "corruptions": ["gaussian_nois", "fog"]}}}, "gaussian_nois"),
    ({"image": {"m": {**MIXED, "severities": [6]}}}, "severities has 6; valid: 1..5"),
    ({"image": {"m": {**MIXED, "levels": [2]}}}, "unknown key"),
    ({"text": {"t": {**TEXT_SEQ, "corruptions": ["ocr", "fog"]}}}, "unknown text corruption 'fog'"),
    ({"text": {"t": {**TEXT_SEQ, "levels": []}}}, "levels must be a non-empty list"),
])
def test_bad_stream_params_fail_with_a_clear_message(change, message):
    cfg = _cfg(**change)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        qc.validate(copy.deepcopy(cfg))


def test_corrupt_stream_stage_rejects_an_unknown_stream(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "stages/corrupt_stream.py"), "--params",
                           str(REPO / "params.yaml"), "--direction", "i2t", "--stream", "nope"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "unknown stream (params streams.image) 'nope'; valid choices: mixed, sequential" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--corruption", "mixed", "--severity", "3"], "stream 'mixed' takes --severity 0, got 3"),
    (["--corruption", "mixd", "--severity", "0"], "valid choices: brightness, clean, contrast"),
])
def test_adapt_stage_checks_stream_runs(tmp_path, args, message):
    proc = subprocess.run([sys.executable, str(REPO / "stages/adapt.py"), "--params", str(REPO / "params.yaml"),
                           "--method", "tcr", "--direction", "i2t", *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    if "mixd" in args:
        assert "mixed" in proc.stderr and "sequential" in proc.stderr  # streams are listed among the choices
