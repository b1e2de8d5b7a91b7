"""Benchmark presets: one switch moves the pipeline; DVC is refused what it cannot follow."""

from __future__ import annotations

from pathlib import Path

import pytest

from qshift import paper, presets
from qshift.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

BASE = {
    "benchmark": "builtin",
    "datasets": {"builtin": {"n_test": 10}, "coco": {"kind": "coco"}},
    "model": {"name": "tiny", "source": "local-dir:models/tiny", "batch_size": 256},
    "corrupt": {"image": {"names": ["contrast"], "severities": [3], "jpeg_quality": 95},
                "text": {"names": ["ocr"], "levels": [2]}},
    "benchmarks": {
        "builtin": {"dataset": "builtin", "setting": "query-shift"},
        "coco-c": {"dataset": "coco", "setting": "query-shift",
                   "model": {"name": "blip", "source": "hf-blip:x"},
                   "corrupt": {"image": {"names": ["fog", "snow"], "severities": [5]}}},
        "qgs-coco": {"dataset": "coco", "setting": "query-gallery-shift"},
        "bad": {"setting": "sideways"},
    },
}


def test_builtin_preset_changes_nothing():
    assert presets.apply_preset(BASE) == BASE
    assert presets.dataset_name(BASE) == "builtin"
    assert presets.setting(BASE) == "query-shift"


def test_a_preset_merges_mappings_and_replaces_lists():
    cfg = presets.apply_preset({**BASE, "benchmark": "coco-c"})
    assert cfg["model"] == {"name": "blip", "source": "hf-blip:x", "batch_size": 256}  # batch_size kept
    assert cfg["corrupt"]["image"] == {"names": ["fog", "snow"], "severities": [5], "jpeg_quality": 95}
    assert "dataset" not in cfg and "setting" not in cfg  # meta keys describe, they do not overlay
    assert presets.dataset_cfg(cfg) == {"kind": "coco"}
    assert BASE["model"]["name"] == "tiny"  # the input is not modified


def test_unknown_benchmark_and_setting_are_named():
    with pytest.raises(ConfigError, match=r"'nope'.*valid: builtin, coco-c, qgs-coco, bad"):
        presets.preset({**BASE, "benchmark": "nope"})
    with pytest.raises(ConfigError, match=r"'sideways'.*query-shift, query-gallery-shift"):
        presets.setting({**BASE, "benchmark": "bad"})
    cfg = {**BASE, "benchmark": "x", "benchmarks": {"x": {"dataset": "flickr"}}}
    with pytest.raises(ConfigError, match=r"'flickr'.*valid: builtin, coco"):
        presets.dataset_cfg(cfg)


def test_dvc_guard_lists_the_lines_to_copy_and_only_fires_under_dvc():
    resolved = presets.apply_preset({**BASE, "benchmark": "coco-c"})
    raw = {**BASE, "benchmark": "coco-c"}
    presets.dvc_guard(raw, resolved, environ={})  # Snakemake / direct runs: presets are applied, fine
    with pytest.raises(ConfigError) as e:
        presets.dvc_guard(raw, resolved, environ={"DVC_STAGE": "adapt"})
    msg = str(e.value)
    assert "model.name: blip   # now tiny" in msg
    assert "corrupt.image.names: [fog, snow]" in msg and "corrupt.image.severities: [5]" in msg
    # after copying those values to the top level, DVC's literal reading agrees: no error
    fixed = presets.deep_merge(raw, {"model": {"name": "blip"},
                                     "corrupt": {"image": {"names": ["fog", "snow"], "severities": [5]}}})
    presets.dvc_guard(fixed, presets.apply_preset(fixed), environ={"DVC_STAGE": "adapt"})


def test_paper_flags_base_cells_more_than_a_point_off():
    rows = {"source": {"gaussian_noise": (43.4, 43.4), "Avg": (46.5, 45.0), "fog": (None, 57.0)},
            "tcr": {"Avg": (30.0, 59.1)}}  # adapted rows are not Base: never flagged
    flags = paper.base_deviations(rows)
    assert flags == [{"column": "Avg", "ours": 46.5, "paper": 45.0, "gap": pytest.approx(1.5)}]
    assert paper.base_deviations({"source": {"Avg": (45.9, 45.0)}}) == []


def test_paper_knows_the_preset_names():
    assert paper.match("coco-c", "blip-itm-base-coco") == ("coco", "blip-vit-b16")
    assert paper.match("flickr-c", "Salesforce/blip-itm-base-flickr") == ("flickr", "blip-vit-b16")
    assert paper.match("qgs-flickr", "clip-vit-b16") == ("flickr", "clip-vit-b16")
    assert paper.match("qgs-coco", "ViT-B-16-openai") == ("coco", "clip-vit-b16")


def test_params_validation_knows_every_model_scheme():
    from qshift.config import MODEL_SCHEMES
    from qshift.models.base import schemes

    assert sorted(MODEL_SCHEMES) == sorted(schemes())


def test_every_preset_of_the_shipped_params_resolves():
    from qshift.config import load_params, runs

    grids = {}
    for name in ("builtin", "coco-c", "flickr-c", "qgs-coco", "qgs-flickr"):
        cfg = load_params(REPO / "params.yaml", [f"benchmark={name}"])
        grids[name] = {(r.direction, r.corruption) for r in runs(cfg)}
    # query-gallery shift: every method on the clean cell only; query shift: the paper's grid
    assert grids["qgs-coco"] == {("i2t", "clean"), ("t2i", "clean")}
    assert len({c for d, c in grids["coco-c"] if d == "i2t"}) == 17  # 16 corruptions + clean
    # the 5 sentence-level types have no model configured: left out of the grid (reported as not run)
    assert {c for d, c in grids["coco-c"] if d == "t2i"} >= {"ocr", "insert_punct", "synonym_replace"}
    assert not {c for d, c in grids["coco-c"] if d == "t2i"} & {"formal", "backtrans"}


def test_method_hyperparameters_can_differ_per_direction():
    from qshift.config import load_params, method_hparams

    cfg = load_params(REPO / "params.yaml", ["benchmark=coco-c"])
    assert method_hparams(cfg, "tcr", "t2i")["lr"] == 3.0e-5  # docs/methods.md: text queries on BLIP
    assert method_hparams(cfg, "tcr", "i2t")["lr"] == 3.0e-4
    assert "by_direction" not in method_hparams(cfg, "tcr", "i2t")
    with pytest.raises(ConfigError, match="by_direction has 'x2y'"):
        load_params(REPO / "params.yaml", ["methods.tcr={lr: 1.0e-3, by_direction: {x2y: {lr: 1}}}"])


def test_dvc_guard_refuses_text_types_that_cannot_run():
    from qshift.config import load_params

    cfg = load_params(REPO / "params.yaml", ["corrupt.text.names=[ocr, formal]"])
    presets.dvc_guard(cfg, cfg, environ={})
    with pytest.raises(ConfigError, match=r"formal: not run \(no model configured: corrupt.text.models.formal\)"):
        presets.dvc_guard(cfg, cfg, environ={"DVC_STAGE": "corrupt_text"})
