"""Composed image retrieval (CIR): the built-in triplets, the combiner, TTA on composed queries,
bad input, and one builtin-cir pipeline run through Snakemake (qshift.cir, qshift.tasks)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from _tiny import TINY_CLIP_ARGS, one_torch_thread
from qshift.data.builtin import POSITIONS, Scene
from qshift.data.builtin_cir import apply_modification, generate_builtin_cir, make_triplet, refer
from qshift.errors import InputError

SPLITS = dict(n_train=300, n_restval=600, n_val=100, n_test=48)


@pytest.fixture(autouse=True)
def _one_thread():
    yield from one_torch_thread()


def test_triplets_are_deterministic_and_the_text_describes_the_change():
    assert make_triplet(42, "test", 3)["text"] == make_triplet(42, "test", 3)["text"]
    assert make_triplet(42, "test", 3)["target"] == make_triplet(42, "test", 3)["target"]
    assert make_triplet(42, "test", 3)["text"] != make_triplet(7, "test", 3)["text"] or \
        make_triplet(42, "test", 3)["reference"] != make_triplet(7, "test", 3)["reference"]
    kinds = set()
    for i in range(300):
        t = make_triplet(42, "val", i)
        ref, mod, text = t["reference"], t["modification"], t["text"]
        kinds.add(mod["kind"])
        assert t["target"] == apply_modification(ref, mod)
        assert t["target"].key() != ref.key() and t["distractor"].key() != t["target"].key()
        assert t["distractor"].background == ref.background == t["target"].background
        if mod["kind"] == "add":
            a = mod["object"]
            assert f"{a['size']} {a['colour']} {a['shape']}" in text and POSITIONS[a["position"]][0] in text
            assert len(t["target"].objects) == len(ref.objects) + 1
            continue
        assert refer(ref, mod["index"]) in text  # the object, named uniquely in its scene
        desc = refer(ref, mod["index"])
        assert sum(desc == refer(ref, j) for j in range(len(ref.objects))) == 1
        if mod["kind"] in ("colour", "shape"):
            assert text.rstrip().endswith(mod["to"]) or f" {mod['to']}" in text
            changed = [(a, b) for a, b in zip(ref.objects, t["target"].objects) if a != b]
            assert len(changed) == 1 and getattr(changed[0][1], mod["kind"]) == mod["to"]
        else:
            assert len(t["target"].objects) == len(ref.objects) - 1
    assert kinds == {"colour", "shape", "remove", "add"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny built-in CIR dataset, a tiny CLIP trained on its scenes, its combiner (the real stages' code)."""
    from qshift.cir import load_composed, pretrain_combiner
    from qshift.models import load_model
    from qshift.models.train import pretrain

    root = tmp_path_factory.mktemp("cir")
    data, model_dir = root / "data", root / "models" / "tiny-cir"
    generate_builtin_cir(data, **SPLITS, image_size=32, seed=0, progress=False)
    dim, vision, text, temp = TINY_CLIP_ARGS
    pc = {"embed_dim": dim, "vision": vision, "text": text, "init_temperature": temp, "steps": 120,
          "batch_size": 64, "lr": 1e-3, "weight_decay": 0.1, "warmup": 10}
    pretrain(data / "manifest.json", model_dir, pc, seed=0, device=torch.device("cpu"), progress=False,
             eval_splits=())
    cfg = {"seed": 0, "pretrain": {"combiner": {"steps": 600, "batch_size": 128}},
           "model": {"name": "tiny-cir", "combiner": "trained"}}
    figures = pretrain_combiner(cfg, data, model_dir, torch.device("cpu"), progress=False)
    base = load_model(f"local-dir:{model_dir}")
    import os

    cwd = os.getcwd()
    os.chdir(root)  # load_composed reads models/<name>/ relative to the project
    try:
        composed = load_composed(cfg, base)
    finally:
        os.chdir(cwd)
    return {"root": root, "data": data, "model_dir": model_dir, "figures": figures, "model": composed}


def test_the_dataset_is_two_valid_manifests_and_every_triplet_finds_its_target(world):
    from qshift.cir import check_targets, load_gallery_split, load_triplets

    q = load_triplets(world["data"] / "manifest.json", "test")
    g = load_gallery_split(world["data"], "test")
    assert q.n_queries == SPLITS["n_test"] and len(g.image_ids) == 2 * SPLITS["n_test"]
    assert g.roles.count("target") == g.roles.count("distractor") == SPLITS["n_test"]
    check_targets(q, g.image_ids)
    assert all(c for c in q.captions) and len(set(q.targets.tolist())) == q.n_queries


def test_the_trained_combiner_beats_the_zero_shot_sum_on_val(world):
    f = world["figures"]
    assert f["combiner_val_trained_R@1"] > f["combiner_val_sum_R@1"] + 5, f
    assert f["combiner_val_trained_R@10"] >= f["combiner_val_sum_R@10"], f
    # a retrain with the same seed writes the same bytes (no timing in the model folder)
    info = json.loads((world["model_dir"] / "qshift_combiner.json").read_text())
    assert "train_seconds" not in info and info["steps"] == 600


def _gallery(world):
    from qshift.cir import encode_cir_gallery
    from qshift.gallery import load_gallery

    out = world["root"] / "gallery.pt"
    if not out.exists():
        encode_cir_gallery(world["model"], world["data"], out, batch_size=64)
    return load_gallery(out)


def _corrupted_queries(world, kind: str):
    """A corrupted query set built by the corruption stages' own builders (references or texts)."""
    from qshift.cir import load_triplets
    from qshift.corrupt.build import build_image_queries, build_text_queries

    if kind == "image":
        out = world["root"] / "q-image"
        if not out.exists():
            build_image_queries(world["data"] / "manifest.json", out, "gaussian_noise", 3, seed=0, progress=False)
        return load_triplets(out / "manifest.json")
    out = world["root"] / "q-text.json"
    if not out.exists():
        build_text_queries(world["data"] / "manifest.json", out, "ocr", 2, seed=0, progress=False)
    return load_triplets(out)


def test_corrupted_query_sets_keep_the_triplets(world):
    from qshift.cir import load_triplets

    clean = load_triplets(world["data"] / "manifest.json")
    img, txt = _corrupted_queries(world, "image"), _corrupted_queries(world, "text")
    assert (img.targets == clean.targets).all() and img.captions == clean.captions
    assert (txt.targets == clean.targets).all() and txt.captions != clean.captions
    assert txt.image_paths == clean.image_paths and img.image_paths != clean.image_paths


METHODS = ("source", "tent", "eata", "sar", "read", "deyo", "tcr", "tcr_untrain", "rest", "rest_v1")


@pytest.mark.parametrize("method", METHODS)
def test_every_method_adapts_composed_queries(world, method):
    from qshift.adapt import run_stream
    from qshift.config import method_hparams

    model, gallery = world["model"], _gallery(world)
    queries = _corrupted_queries(world, "text" if method in ("tent", "rest") else "image")
    before = [p.detach().clone() for _, m in model.norm_layers("composed") for p in (m.weight, m.bias)]
    hp = method_hparams({"methods": {method: {}}}, method, "cir")
    out = run_stream(model, method, hp, "cir", queries, gallery, batch_size=16, steps=2, seed=0, progress=False)
    assert out["status"] == "ok", out.get("diverged")
    assert set(out["metrics"]) == {"R@1", "R@5", "R@10", "R@50"} and out["n_queries"] == SPLITS["n_test"]
    assert out["metrics"]["R@50"] >= out["metrics"]["R@10"] >= out["metrics"]["R@1"]
    after = [p for _, m in model.norm_layers("composed") for p in (m.weight, m.bias)]
    assert all(torch.equal(a, b) for a, b in zip(before, after))  # handed back as it came
    assert not any(p.requires_grad for p in model.module.parameters())
    assert len(out["outcomes"]["rank"]) == SPLITS["n_test"]


def test_adaptation_trains_both_towers_layer_norms_not_the_combiner(world):
    from qshift.tta import build_method

    model = world["model"]
    tta = build_method("tcr", model, "composed", _gallery(world)["image"], {}, steps=1)
    try:
        names = {n for n, _ in model.norm_layers("composed")}
        ids = {id(p) for p in tta.params}
        assert any(n.startswith("visual") for n in names) and any(n.startswith("transformer") for n in names)
        assert not any(id(p) in ids for p in model.combiner.parameters())
    finally:
        tta.close()


def test_an_empty_modification_is_a_valid_query(world, tmp_path):
    from qshift.adapt import run_stream
    from qshift.cir import load_triplets

    doc = json.loads((world["data"] / "manifest.json").read_text())
    test = [im for im in doc["images"] if im["split"] == "test"]
    test[0]["sentences"][0]["raw"] = ""
    doc["image_root"] = str(world["data"] / "images")
    (tmp_path / "m.json").write_text(json.dumps(doc))
    q = load_triplets(tmp_path / "m.json")
    assert q.captions[0] == ""
    out = run_stream(world["model"], "source", {}, "cir", q, _gallery(world), batch_size=16, steps=1, progress=False)
    assert out["status"] == "ok"


def test_a_triplet_without_its_reference_or_target_is_named(world, tmp_path):
    from qshift.cir import check_targets, load_gallery_split, load_triplets

    doc = json.loads((world["data"] / "manifest.json").read_text())
    doc["image_root"] = str(world["data"] / "images")
    test = [im for im in doc["images"] if im["split"] == "test"]
    sent = test[2]["sentences"][0]
    good = json.dumps(doc)
    test[2]["filename"] = "gone.png"
    (tmp_path / "m.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match=rf"CIR triplet {sent['sentid']} \(reference image {test[2]['imgid']}.*"
                                         r"reference image .*gone.png not found"):
        load_triplets(tmp_path / "m.json")
    doc = json.loads(good)
    test = [im for im in doc["images"] if im["split"] == "test"]
    test[2]["sentences"][0]["target"] = 10 ** 7
    (tmp_path / "m.json").write_text(json.dumps(doc))
    q = load_triplets(tmp_path / "m.json")
    with pytest.raises(InputError, match=rf"CIR triplet {sent['sentid']} .*target 10000000 is not in the gallery"):
        check_targets(q, load_gallery_split(world["data"]).image_ids)
    del test[2]["sentences"][0]["target"]
    (tmp_path / "m.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match=rf"CIR triplet {sent['sentid']} .*has no target"):
        load_triplets(tmp_path / "m.json")


def test_tuning_runs_on_the_val_triplets_under_validation_only_corruptions(world, tmp_path, monkeypatch):
    """The tune stage's CIR hooks: the val split's own gallery and its triplets with corrupted
    references (tune.image) or modification texts (tune.text); never the test split, never a cell a
    composed stream reports."""
    from qshift.cir import load_triplets, tune_queries
    from qshift.config import load_params
    from qshift.errors import ConfigError
    from qshift.tune import run_tune, tuning_summary

    from pipeline_utils import REPO

    cfg = load_params(REPO / "params.yaml", ["benchmark=builtin-cir"])
    assert cfg["tune"]["enabled"]
    (tmp_path / "data").mkdir()
    (tmp_path / "data/builtin-cir").symlink_to(world["data"])
    monkeypatch.chdir(tmp_path)
    sets = tune_queries(cfg, "cir", tmp_path / "work")
    assert list(sets) == ["gaussian_blur-s3", "spatter-s3", "char_insert-s2"]
    val = load_triplets(world["data"] / "manifest.json", "val")
    blur, text = sets["gaussian_blur-s3"], sets["char_insert-s2"]
    assert blur.sentids.tolist() == val.sentids.tolist() and blur.captions == val.captions
    assert all(p.is_file() and p.parent.name == "gaussian_blur-s3" for p in blur.image_paths)
    assert [p.resolve() for p in text.image_paths] == [p.resolve() for p in val.image_paths]
    assert sum(a != b for a, b in zip(text.captions, val.captions)) > val.n_queries // 2

    cfg["adapt"]["methods"] = ["source", "tcr"]
    cfg["tune"].update(methods=["tcr"], lr=[1.0e-2])
    cfg["tune"]["image"] = {"corruptions": ["spatter"], "severity": 3}
    doc = run_tune(cfg, world["model"], "data/builtin-cir/manifest.json")
    assert doc["corruptions"] == {"cir": ["spatter-s3", "char_insert-s2"]}
    assert doc["n_triplets"] == SPLITS["n_val"] and doc["n_gallery"] == 2 * SPLITS["n_val"]
    assert sorted(r["lr"] for r in doc["table"]) == [3.0e-4, 1.0e-2]
    assert all(set(r["r1"]) == {"spatter-s3", "char_insert-s2"} for r in doc["table"])
    assert "cir" in doc["best"]["tcr"]
    assert f"{SPLITS['n_val']} triplets" in tuning_summary(doc)[0]
    # a cell only a composed stream reports is refused too (the grid's own: qshift.tune)
    with pytest.raises(ConfigError, match=r"tune\.image\.corruptions has 'spatter', which the composed stream "
                                          r"streams\.cir\.multimodal reports"):
        load_params(REPO / "params.yaml", ["benchmark=builtin-cir", "streams.cir.multimodal.image.corruptions=[spatter]"])


def test_tasks_keep_image_text_as_it_was():
    from qshift import tasks
    from qshift.config import load_params, query_cells, streams
    from qshift.errors import ConfigError

    assert tasks.recall_ks("i2t") == tasks.recall_ks("t2i") == (1, 5, 10)
    assert tasks.direction("cir").query_modality == "composed" and tasks.recall_ks("cir")[-1] == 50
    root = Path(__file__).resolve().parents[1]
    cfg = load_params(root / "params.yaml", ["benchmark=builtin-cir"])
    assert tasks.is_cir(cfg) and list(streams(cfg, "cir")) == ["multimodal", "joint"]  # streams.cir (test_cir_streams.py)
    cells = query_cells(cfg, "cir")
    assert cells[0] == ("clean", 0) and set(cells[1:]) == set(query_cells(cfg, "i2t")[1:]) | set(
        query_cells(cfg, "t2i")[1:])
    with pytest.raises(ConfigError, match="mixes tasks"):
        load_params(root / "params.yaml", ["adapt.directions=[i2t, cir]"])
    with pytest.raises(ConfigError, match="is a image-text dataset, but adapt.directions"):
        load_params(root / "params.yaml", ["adapt.directions=[cir]"])
    with pytest.raises(ConfigError, match="model.combiner 'avg'; valid: sum, trained"):
        load_params(root / "params.yaml", ["benchmark=builtin-cir", "model.combiner=avg"])


# -- one builtin-cir pipeline, through Snakemake -------------------------------------------------------

# what a tiny_cir_params pipeline writes under results/builtin-cir/qshift-tiny-cir/cir/ (either orchestrator)
TINY_CIR_RESULTS = ["source/seed42/clean-s0.json", "source/seed42/gaussian_noise-s3.json",
                    "source/seed42/joint-s0.json", "source/seed42/multimodal-s0.json", "source/seed42/ocr-s2.json",
                    "tcr/seed42/gaussian_noise-s3.json", "tcr/seed42/joint-s0.json", "tcr/seed42/multimodal-s0.json",
                    "tcr/seed42/ocr-s2.json"]


def tiny_cir_params(params: dict) -> dict:
    p = yaml.safe_load(yaml.safe_dump(params))
    p["benchmark"] = "builtin-cir"
    p["datasets"]["builtin-cir"].update(n_train=300, n_restval=400, n_val=60, n_test=64, image_size=64)
    preset = p["benchmarks"]["builtin-cir"]
    preset["pretrain"].update(steps=30, batch_size=64, warmup=5, combiner={"steps": 200, "batch_size": 128})
    preset["corrupt"] = {"image": {"names": ["gaussian_noise"], "severities": [3]},
                         "text": {"names": ["ocr"], "levels": [2]}}
    p["adapt"]["methods"] = ["source", "tcr"]
    p["threads"] = 1
    return p


@pytest.mark.pipeline
def test_builtin_cir_runs_through_snakemake(tmp_path):
    import subprocess

    from pipeline_utils import REPO, env, make_repo, run

    repo = make_repo(tmp_path)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_cir_params(params), sort_keys=False))
    run(["snakemake", "--cores", "2"], repo, timeout=600)
    res = repo / "results/builtin-cir/qshift-tiny-cir/cir"
    files = sorted(p.relative_to(res).as_posix() for p in res.rglob("*.json"))
    assert files == TINY_CIR_RESULTS
    # the joint stream: a third domain shifting both parts of the query at once
    joint = json.loads((res / "source/seed42/joint-s0.json").read_text())
    assert list(joint["metrics_by_domain"]) == ["gaussian_noise-s3", "ocr-s2", "gaussian_noise-s3+ocr-s2"]
    # the preset's multi-modal stream (streams.cir.multimodal): R@K per domain, shown in the report
    mm = json.loads((res / "tcr/seed42/multimodal-s0.json").read_text())
    assert list(mm["metrics_by_domain"]) == ["gaussian_noise-s3", "ocr-s2"] and mm["stream"]["kind"] == "mixed"
    assert sum(d["n_queries"] for d in mm["metrics_by_domain"].values()) == mm["n_queries"] == 64
    assert (repo / "logs/corrupt_stream/builtin-cir/cir/multimodal.log").is_file()
    doc = json.loads((res / "tcr/seed42/ocr-s2.json").read_text())
    assert set(doc["metrics"]) == {"R@1", "R@5", "R@10", "R@50"} and doc["n_queries"] == 64
    assert doc["n_gallery"] == 128 and doc["key"]["direction"] == "cir"
    report = (repo / "reports/report.md").read_text()
    assert "Composed image retrieval" in report and "R@50 (%)" in report
    assert "Streams — cir" in report and "`multimodal`" in report
    assert "Its combiner trained for 200 steps: composed val R@1" in report and "i2t —" not in report
    pre = json.loads((repo / "reports/pretrain.json").read_text())
    assert pre["combiner_val_trained_R@1"] > pre["combiner_val_sum_R@1"], pre
    # tuned on the 60 val triplets (their own gallery), the choice applied by the adapt job
    tuned = json.loads((repo / "results/builtin-cir/qshift-tiny-cir/tuned/tcr.json").read_text())
    assert tuned["corruptions"] == {"cir": ["gaussian_blur-s3", "spatter-s3", "char_insert-s2"]}
    assert tuned["n_triplets"] == 60 and "cir" in tuned["best"]["tcr"]
    assert doc["hparams"]["lr"] == tuned["best"]["tcr"]["cir"]["lr"]
    assert "validation split** (60 triplets, a gallery of 120 images)" in report
    again = run(["snakemake", "--cores", "1", "-n"], repo)
    assert "Nothing to be done" in again.stdout + again.stderr  # a rerun does nothing
    # bad input reaches the stage as one line and exit 2: a triplet whose target left the gallery
    qpath = repo / "data/queries/builtin-cir/text/ocr-s2.json"
    q = json.loads(qpath.read_text())
    first = next(im for im in q["images"] if im["split"] == "test")
    first["sentences"][0]["target"] = 10 ** 7
    qpath.write_text(json.dumps(q))
    proc = subprocess.run(["python", "stages/adapt.py", "--method", "source", "--direction", "cir", "--corruption",
                           "ocr", "--severity", "2"], cwd=repo, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert re.search(rf"CIR triplet {first['sentences'][0]['sentid']} .*target 10000000 is not in the gallery",
                     proc.stderr), proc.stderr[-2000:]
    # under DVC while dvc.yaml is builtin's (not rendered for builtin-cir): refused with the way to render it
    proc = subprocess.run(["python", "stages/prepare.py"], cwd=repo, env={**env(), "DVC_STAGE": "prepare"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "dvc.yaml is stale" in proc.stderr and "adapt_cir" in proc.stderr
    assert "python -m qshift.pipeline dvc" in proc.stderr
    shutil.rmtree(repo / "data", ignore_errors=True)


def test_snakemake_schedules_the_drawn_composed_queries(tmp_path):
    """seed_corruptions: true — run seed 7's CIR cells and streams read their own drawn sets (the
    image-text corruption rules' _drawn variants on the CIR manifest, corrupt_stream_cir_drawn)."""
    from pipeline_utils import REPO, dry_run_commands

    params = tiny_cir_params(yaml.safe_load((REPO / "params.yaml").read_text()))
    cmds, _ = dry_run_commands(tmp_path, {**params, "seeds": [42, 7], "seed_corruptions": True})
    assert {"python stages/corrupt_stream.py --direction cir --stream multimodal",
            "python stages/corrupt_stream.py --direction cir --stream multimodal --draw-seed 7",
            "python stages/corrupt_stream.py --direction cir --stream joint --draw-seed 7",
            "python stages/corrupt_images.py --corruption gaussian_noise --severity 3 --draw-seed 7",
            "python stages/corrupt_text.py --corruption ocr --level 2 --draw-seed 7"} <= cmds, cmds


def test_reused_reference_images_give_the_same_composed_results(world):
    """The adapt / tune jobs' query image cache (params query_cache_mb) on composed queries: the
    reference images decoded once, the same numbers and per-query ranks as decoding each time."""
    import numpy as np

    from qshift.adapt import run_stream
    from qshift.config import method_hparams
    from qshift.gallery import QUERY_IMAGES, set_query_cache

    model, gallery = world["model"], _gallery(world)
    queries = _corrupted_queries(world, "image")
    hp = method_hparams({"methods": {"tcr": {}}}, "tcr", "cir")

    def run():
        return run_stream(model, "tcr", dict(hp), "cir", queries, gallery, batch_size=16, steps=2, seed=0,
                          progress=False)

    plain = run()
    try:
        set_query_cache(64)
        first, second = run(), run()
        assert QUERY_IMAGES.hits >= SPLITS["n_test"] and QUERY_IMAGES.misses <= SPLITS["n_test"]
    finally:
        set_query_cache(0)
    for out in (first, second):
        assert out["metrics"] == plain["metrics"] and out["online"] == plain["online"]
        assert np.array_equal(np.asarray(out["outcomes"]["rank"]), np.asarray(plain["outcomes"]["rank"]))
