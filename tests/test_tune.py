"""Stage tune: grid, validation-only corruptions, the validation split only, the adapt stage's read."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from _tiny import make_tiny_clip_dir, one_torch_thread
from qshift import config, tune
from qshift.config import load_params
from qshift.data.manifest import read_manifest
from qshift.errors import ConfigError
from qshift.io import write_json
from qshift.models import load_model

REPO = Path(__file__).resolve().parents[1]
_one_thread = pytest.fixture(autouse=True, scope="module")(one_torch_thread)


def _cfg(**tune_over) -> dict:
    cfg = load_params(REPO / "params.yaml")
    cfg["tune"].update(tune_over)
    return cfg


def test_shipped_params_tune_the_builtin_benchmark_and_not_the_paper_presets():
    assert tune.enabled(load_params(REPO / "params.yaml"))
    for preset in ("coco-c", "flickr-c", "qgs-coco", "qgs-flickr"):
        assert not tune.enabled(load_params(REPO / "params.yaml", [f"benchmark={preset}"]))


@pytest.mark.parametrize("change,message", [
    ({"image": {"corruptions": ["gaussian_noise"], "severity": 3}}, "tune.image.corruptions has 'gaussian_noise'"),
    ({"text": {"corruptions": ["ocr"], "level": 2}}, "tune.text has 'ocr' at level 2"),
    ({"image": {"corruptions": ["no_such"], "severity": 3}}, "no_such"),
    ({"lr": [0.001, -1]}, "tune.lr must be a list of positive numbers"),
    ({"methods": ["tcr", "nope"]}, "tune.methods has 'nope'; valid: "),
])
def test_tuning_on_a_reported_corruption_or_bad_values_is_refused(change, message):
    cfg = _cfg(**change)
    with pytest.raises(ConfigError, match=message):
        tune.validate_tune(cfg)


def test_a_reported_text_type_at_an_unreported_level_is_allowed():
    tune.validate_tune(_cfg(text={"corruptions": ["ocr"], "level": 4}))


def test_grid_has_the_params_value_first_and_tau_only_for_entropy_methods():
    cfg = _cfg(lr=[1e-3, 3e-4], tau=[0.01, 0.05])
    tent = tune.grid(cfg, "tent", "i2t")
    assert tent[0] == {"lr": 3e-4, "tau": 0.01}  # the params' own value
    assert {(p["lr"], p["tau"]) for p in tent} == {(1e-3, 0.01), (1e-3, 0.05), (3e-4, 0.01), (3e-4, 0.05)}
    assert len(tent) == 4  # the default is not repeated
    assert tune.grid(cfg, "tcr", "i2t") == [{"lr": 3e-4}, {"lr": 1e-3}]
    assert tune.grid(cfg, "source", "i2t") == []


def test_tune_jobs_run_longest_grid_first():
    """Snakemake's priority of a tune job (qshift.pipeline.tune_priority, the rule's `priority:`):
    the grid points it runs, SAR's and REST's counted twice (two gradients a step); a job that
    tunes nothing 0."""
    from qshift.pipeline import tune_priority

    cfg = _cfg()
    prio = {m: tune_priority(cfg, m) for m in cfg["adapt"]["methods"]}
    points = {m: sum(len(tune.grid(cfg, m, d)) for d in cfg["adapt"]["directions"]) for m in prio}
    assert prio["source"] == prio["tcr_untrain"] == 0  # not in tune.methods: a "not tuned" file
    assert prio["sar"] == 2 * points["sar"] and prio["rest"] == 2 * points["rest"]
    assert prio["tent"] == points["tent"] > 0 and prio["tcr"] == points["tcr"]
    assert max(prio, key=prio.get) == "sar" and prio["tcr"] < prio["tent"]  # tau only for entropy methods
    assert prio["rest"] > prio["tent"]  # REST's grid is smaller, its steps cost twice as much
    assert tune_priority(_cfg(enabled=False), "sar") == 0
    variant = copy.deepcopy(cfg)  # a variant of SAR (methods.<name>: {method: sar}): SAR's two gradients
    variant["methods"]["sar_x"] = {"method": "sar"}
    variant["adapt"]["methods"].append("sar_x")
    variant["tune"]["methods"].append("sar_x")
    assert tune_priority(variant, "sar_x") == 2 * sum(len(tune.grid(variant, "sar_x", d))
                                                      for d in cfg["adapt"]["directions"]) > 0
    va = load_params(REPO / "params.yaml", ["benchmark=builtin-va"])  # every task's directions count
    assert tune_priority(va, "sar") == 2 * sum(len(tune.grid(va, "sar", d)) for d in ("v2a", "a2v")) > 0
    cfg["tune"]["lr"] = cfg["tune"]["lr"][:1]  # a smaller grid: a lower priority
    assert tune_priority(cfg, "tent") < prio["tent"]


def test_tune_reads_only_the_validation_split_and_adapt_reads_its_choice(tmp_path, monkeypatch):
    from PIL import Image

    from qshift.data.builtin import generate_builtin

    generate_builtin(tmp_path / "ds", n_train=2, n_val=12, n_test=8, image_size=32, seed=0, progress=False)
    manifest = tmp_path / "ds/manifest.json"
    doc = read_manifest(manifest)
    from qshift.data.manifest import image_root

    test_files = {(image_root(doc, manifest) / im.get("filepath", "") / im["filename"]).resolve()
                  for im in doc["images"] if im["split"] == "test"}
    for f in test_files:  # tuning must not need them
        f.unlink()
    opened = []
    real_open = Image.open

    def spy(fp, *a, **k):
        opened.append(Path(fp).resolve())
        return real_open(fp, *a, **k)

    monkeypatch.setattr(Image, "open", spy)
    cfg = _cfg(methods=["tent", "tcr"], lr=[1e-2], tau=[0.05], image={"corruptions": ["spatter"], "severity": 3},
               text={"corruptions": ["char_swap"], "level": 2})
    cfg["adapt"].update(batch_size=6, steps=1)
    model = load_model(f"local-dir:{make_tiny_clip_dir(tmp_path / 'clip')}")
    out = tune.run_tune(cfg, model, manifest)
    assert opened and not (set(opened) & test_files)
    assert out["n_images"] == 12 and out["n_captions"] == 60 and out["corruptions"] == {
        "i2t": ["spatter-s3"], "t2i": ["char_swap-s2"]}
    rows = [r for r in out["table"] if r["method"] == "tent" and r["direction"] == "i2t"]
    assert len(rows) == 2 and rows[0]["default"] and (rows[1]["lr"], rows[1]["tau"]) == (1e-2, 0.05)  # params first
    best = out["best"]["tent"]["i2t"]
    assert best["mean_r1"] == max(r["mean_r1"] for r in rows)
    assert {"tent", "tcr"} == set(out["best"])
    one = tune.validation_queries(manifest, "t2i", "char_swap", 2, tmp_path, captions_per_image=1)
    assert one.n_captions == 12 and one.txt2img.tolist() == list(range(12))  # the first caption of each val image
    val_sents = [im["sentences"][0]["sentid"] for im in doc["images"] if im["split"] == "val"]
    assert one.sentids.tolist() == val_sents
    path = tmp_path / "tuned.json"
    write_json(path, out)
    hp, applied = tune.tuned_hparams(cfg, "tent", "i2t", path)
    assert applied == {k: best[k] for k in ("lr", "tau")} and hp["lr"] == best["lr"]
    assert hp["weight_decay"] == config.method_hparams(cfg, "tent", "i2t")["weight_decay"]
    off = copy.deepcopy(cfg)
    off["tune"]["enabled"] = False
    assert tune.tuned_hparams(off, "tent", "i2t", path) == (config.method_hparams(cfg, "tent", "i2t"), {})
    assert tune.run_tune(off, None, manifest)["best"] == {}


def test_the_tune_stage_never_depends_on_test_data():
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["tune"]
    deps = " ".join(d for d in stage["deps"] if not d.startswith(("src/", "stages/")))  # its data, not its code
    assert "models/" in deps and "embeddings" not in deps and "queries" not in deps and "gallery" not in deps
    rule = (REPO / "workflow/rules/adapt.smk").read_text().split("rule tune:")[1].split("output:")[0]
    assert "GALLERY" not in rule and "QUERIES" not in rule and "adapt_queries" not in rule


def test_report_prints_the_tuning_table(tmp_path, monkeypatch):
    from test_stats import _synthetic_grid

    from qshift import report
    from qshift.config import TUNED

    cfg = _synthetic_grid(tmp_path, monkeypatch)
    doc = {"schema": 1, "enabled": True, "split": "val", "n_images": 500, "n_captions": 2500, "seconds": 12.0,
           "corruptions": {"i2t": ["spatter-s3"]}, "table": [],
           "best": {"tcr": {"i2t": {"lr": 0.01, "mean_r1": 40.0, "default_r1": 35.5}}}}
    write_json(TUNED.format(dataset="builtin", model="qshift-tiny-clip", method="tcr"), doc)
    summary = report.build_report(cfg, tmp_path / "reports", track=False)
    md = (tmp_path / "reports/report.md").read_text()
    assert "## Hyperparameters" in md and "validation split" in md
    assert "| i2t | tcr | lr 0.01 | 40.0 | 35.5 |" in md
    assert summary["tuned"]["tcr"]["i2t"]["lr"] == 0.01
    assert "<h2>Hyperparameters</h2>" in (tmp_path / "reports/report.html").read_text()
