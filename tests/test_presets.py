"""Benchmark presets: one switch moves the pipeline, Snakemake and DVC alike."""

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


def _params() -> dict:
    import yaml

    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_dvc_guard_refuses_a_dvc_yaml_rendered_for_another_benchmark_and_only_under_dvc(tmp_path):
    from qshift import pipeline

    raw = _params()
    (tmp_path / "dvc.yaml").write_text(pipeline.render_dvc(raw))  # rendered for builtin
    cir = {**raw, "benchmark": "builtin-cir"}
    resolved = presets.apply_preset(cir)
    presets.dvc_guard(cir, resolved, environ={})  # Snakemake / direct runs: presets are applied, fine
    env = {"DVC_STAGE": "prepare", "DVC_ROOT": str(tmp_path)}
    with pytest.raises(ConfigError) as e:
        presets.dvc_guard(cir, resolved, environ=env)
    msg = str(e.value)
    assert ("dvc.yaml is stale: it was rendered for other params (stages only in the file: adapt_i2t, adapt_t2i, "
            "corrupt_stream_image, corrupt_stream_text; only for params.yaml's benchmark 'builtin-cir': adapt_cir, "
            "corrupt_stream_cir)") in msg and "`python -m qshift.pipeline dvc`, then run `dvc repro` again" in msg
    (tmp_path / "dvc.yaml").write_text(pipeline.render_dvc(cir))  # rendered for it: the stage runs
    presets.dvc_guard(cir, resolved, environ=env)
    (tmp_path / "dvc.yaml").write_text(pipeline.render_dvc(raw))
    coco = {**raw, "benchmark": "coco-c"}  # builtin's stages, other values
    with pytest.raises(ConfigError, match=r"dvc.yaml is stale: line \d+ differs"):
        presets.dvc_guard(coco, presets.apply_preset(coco), environ=env)


def test_dvc_yaml_writes_out_what_the_preset_sets_and_tracks_it_there():
    """DVC cannot select benchmarks.<benchmark>: a value the preset sets is written out, and the
    stages reading it track the preset's key (a key the preset replaces: there only)."""
    import yaml

    from qshift import pipeline

    raw = _params()
    default = pipeline.render_dvc(raw)
    assert "corruption: ${corrupt.image.names}" in default and "models/${model.name}" in default
    doc = yaml.safe_load(pipeline.render_dvc({**raw, "benchmark": "coco-c"}))["stages"]
    assert doc["corrupt_images"]["matrix"]["severity"] == [5] and len(doc["corrupt_images"]["matrix"]["corruption"]) == 16
    assert doc["encode_gallery"]["outs"] == ["data/embeddings/blip-itm-base-coco/${benchmark}/gallery.pt"]
    adapt = doc["adapt_i2t"]["params"]
    assert "benchmarks.coco-c.corrupt.image.severities" in adapt and "corrupt.image.severities" not in adapt
    assert "adapt.batch_size" in adapt and not any(k.startswith("benchmarks.coco-c.adapt.b") for k in adapt)
    # a fetched model: the fetch stage, as Snakemake's pretrain rule (model keys only)
    assert doc["pretrain"]["cmd"] == ("python stages/pretrain.py --set model.name=blip-itm-base-coco --set "
                                      "model.source=hf-blip:Salesforce/blip-itm-base-coco --set model.cache_dir=models/cache")
    assert doc["pretrain"]["outs"] == ["models/blip-itm-base-coco"]
    # the other tasks' stages, matrices from the preset's own keys; no streams where none run
    va = yaml.safe_load(pipeline.render_dvc({**raw, "benchmark": "builtin-va"}))["stages"]
    assert va["corrupt_audio"]["matrix"] == {"corruption": ["traffic", "rain", "crowd"], "severity": [3, 5]}
    assert "adapt_i2t" not in va and {"adapt_v2a", "adapt_a2v", "corrupt_stream_video"} <= set(va)
    qgs = yaml.safe_load(pipeline.render_dvc({**raw, "benchmark": "qgs-coco"}))["stages"]
    assert qgs["corrupt_stream_image"]["matrix"] == {"stream": []} and qgs["corrupt_images"]["matrix"]["corruption"] == []


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


def test_dvc_yaml_leaves_out_text_types_that_cannot_run():
    """As Snakemake does (the report lists them as not run): the matrix holds the runnable ones."""
    import yaml

    from qshift import pipeline

    raw = _params()
    raw["corrupt"]["text"]["names"] = ["ocr", "formal"]
    doc = yaml.safe_load(pipeline.render_dvc(raw))["stages"]
    assert doc["corrupt_text"]["matrix"]["corruption"] == ["ocr"]
