"""The papers' observations: statistics on hand-made embeddings, the angle probe (which must not
change any number), the per-run summary and the report section."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from _tiny import EMB_DIM, IN_DIM, TinyDual, one_torch_thread
from qshift import observations as ob
from qshift.config import Run
from qshift.report.blocks import html, markdown
from qshift.tta import build_method
from qshift.tta.base import PROBE_KEY
from qshift.tta.probe import embedding_stats, general_angle

_one_thread = pytest.fixture(autouse=True, scope="module")(one_torch_thread)


def test_embedding_stats_hand_made():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    gallery = torch.tensor([[1.0, 0.0], [0.6, 0.8], [-1.0, 0.0]])
    scores = z @ gallery.T  # top-1: item 0 for query 0, item 1 for query 1
    s = embedding_stats(z, scores, gallery)
    zbar = torch.tensor([0.5, 0.5])
    assert s["obs_uniformity"] == pytest.approx(math.sqrt(0.5), rel=1e-6)  # both at distance sqrt(.5)
    assert s["obs_gap"] == pytest.approx(float((zbar - torch.tensor([0.8, 0.4])).norm()), rel=1e-6)
    assert s["obs_consistency"] == pytest.approx((1.0 + 0.8) / 2, rel=1e-6)
    # a collapsed batch: no uniformity
    assert embedding_stats(torch.tensor([[1.0, 0.0]] * 3), torch.ones(3, 3), gallery)["obs_uniformity"] == 0.0


def _unit_rows(n, d, seed):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


@pytest.mark.parametrize("method", ["tcr", "tent", "rest"])
def test_angle_probe_changes_no_number_and_is_recorded(method):
    gallery = _unit_rows(12, EMB_DIM, 1)
    plain = build_method(method, TinyDual(seed=0), "image", gallery, {"lr": 1e-2}, steps=3)
    probed = build_method(method, TinyDual(seed=0), "image", gallery, {"lr": 1e-2, PROBE_KEY: True}, steps=3)
    assert PROBE_KEY not in probed.hp  # an observation, not a hyperparameter
    angles = []
    for k in range(4):
        x = torch.randn(20, IN_DIM, generator=torch.Generator().manual_seed(40 + k))
        a, b = plain(x), probed(x)
        assert torch.equal(a.scores, b.scores)
        assert "grad_angle" not in a.stats and {"obs_uniformity", "obs_gap", "obs_consistency"} <= set(a.stats)
        angles.append(b.stats["grad_angle"])
    assert all(torch.equal(p, q) for p, q in zip(plain.params, probed.params))
    assert all(0 <= a <= 180 for a in angles) and len(set(angles)) > 1


def test_general_angle_is_180_against_its_own_negative():
    """The probe's g_s is the gradient of an InfoNCE on the batch's source-like pairs: pass -g_s
    as the adaptation gradient and the angle is 180 deg; g_s itself gives 0."""
    model = TinyDual(seed=0)
    tta = build_method("tent", model, "image", _unit_rows(12, EMB_DIM, 1), steps=1)
    x = torch.randn(20, IN_DIM, generator=torch.Generator().manual_seed(3))
    z = tta.encode(x)
    captured = {}
    orig = torch.autograd.grad

    def spy(loss, params, **kw):
        out = orig(loss, params, **kw)
        captured["g_s"] = torch.cat([g.reshape(-1) for g in out])
        return out

    torch.autograd.grad = spy
    try:
        general_angle(torch.ones(sum(p.numel() for p in tta.params)), z, tta.gallery, tta.params)
    finally:
        torch.autograd.grad = orig
    g_s = captured["g_s"]
    assert general_angle(-g_s, z, tta.gallery, tta.params) == pytest.approx(180.0, abs=1e-3)
    assert general_angle(g_s, z, tta.gallery, tta.params) == pytest.approx(0.0, abs=1e-2)


def _doc(method, corruption, stats, sizes, stream=None, domains=None):
    online = {"batch_size": sizes, "batch_r1": [0.0] * len(sizes), "cum_r1": [0.0] * len(sizes), "stats": stats}
    if domains:
        online["domain"] = domains
    d = {"run_key": f"b/m/i2t/{method}/{corruption}-s{0 if stream else 3}", "online": online,
         "metrics": {"R@1": 1.0, "R@5": 2.0, "R@10": 3.0}}
    if stream:
        d["stream"] = {"name": corruption, "kind": "mixed", "domains": sorted(set(domains))}
    return d


def test_run_summary_weights_batches_and_splits_stream_domains():
    stats = {"obs_uniformity": [1.0, 0.5, None], "obs_gap": [0.2, 0.4, 0.6], "obs_consistency": [0.3, 0.3, 0.3],
             "grad_angle": [100.0, None, 120.0]}
    out = ob.run_observation(_doc("tent", "mix", stats, [64, 64, 32], stream=True, domains=["a-s3", "b-s3", "a-s3"]))
    assert out["uniformity"] == pytest.approx(0.75)  # the None batch is left out
    assert out["gap"] == pytest.approx((0.2 * 64 + 0.4 * 64 + 0.6 * 32) / 160)
    assert out["angle"] == {"median": 110.0, "min": 100.0, "max": 120.0, "n": 2, "frac_conflict": 1.0}
    assert out["by_domain"]["a-s3"]["gap"] == pytest.approx((0.2 * 64 + 0.6 * 32) / 96)
    assert ob.run_observation({"online": {"stats": {"loss": [1.0]}}}) is None  # older results file


def test_observe_and_report_section(tmp_path):
    stats = lambda u: {"obs_uniformity": [u], "obs_gap": [0.7], "obs_consistency": [0.2]}  # noqa: E731
    found = {Run("b", "m", "i2t", "source", "clean", 0, 42): _doc("source", "clean", stats(0.7), [64]),
             Run("b", "m", "i2t", "source", "fog", 3, 42): _doc("source", "fog", stats(0.6), [64]),
             Run("b", "m", "i2t", "tcr", "fog", 3, 42): _doc("tcr", "fog", {**stats(0.65), "grad_angle": [95.0, 125.0]},
                                                         [64]),
             Run("b", "m", "i2t", "eata", "fog", 3, 42): {"run_key": "old", "online": {"stats": {}}, "metrics": {}}}
    doc = ob.observe({}, found)
    d = doc["directions"]["i2t"]
    assert d["shifts"] == ["clean", "fog-s3"]
    assert d["source"]["clean"]["uniformity"] == 0.7 and d["source"]["fog-s3"]["uniformity"] == 0.6
    assert d["methods"]["tcr"]["fog-s3"]["angle"]["median"] == 110.0
    assert doc["without"] == ["old"]
    assert ob.mlflow_metrics(doc["runs"]["b/m/i2t/tcr/fog-s3"])["obs.grad_angle_max"] == 125.0
    path = tmp_path / "observations.json"
    path.write_text(json.dumps(doc))
    cfg = {"adapt": {"directions": ["i2t"], "methods": ["source", "tcr"]}, "methods": {"source": {}, "tcr": {}}}
    blocks, summary = ob.report_section(cfg, {}, tmp_path, path)
    text, page = markdown(blocks), html(blocks)
    assert "QShift's definitions" in text and "| fog-s3 | 0.600 | 0.700 | 0.200 |" in text
    assert "110° [95–125]" in text and "1 results file(s) carry no observation statistics" in text
    assert "| `tcr` | — | 110° [95–125] |" in text  # method names are code cells
    assert "<b>QShift&#x27;s definitions</b>" in page and "<td class='m'><code>tcr</code></td>" in page
    assert page.count("<table>") == 3 and page.count("<img ") == 2 and "`" not in page
    assert (tmp_path / "i2t_observations.png").is_file() and (tmp_path / "i2t_angles.png").is_file()
    assert summary["observations"]["i2t"]["source"]["clean"]["uniformity"] == 0.7
    blocks, _ = ob.report_section(cfg, {}, tmp_path, tmp_path / "absent.json")
    assert "is missing (stage `observe`)" in markdown(blocks)
    assert "is missing (stage <code>observe</code>)" in html(blocks)


def test_variant_table_lists_each_variant_with_its_overrides(monkeypatch):
    from qshift import report

    cfg = {"adapt": {"methods": ["source", "rest", "rest_k3"], "directions": ["i2t"]},
           "methods": {"source": {}, "rest": {"topk": 1, "lr": 3e-4}, "rest_k3": {"method": "rest", "topk": 3}}}
    table = {"columns": ["fog", "Avg", "Clean"],
             "rows": {"source": {"fog": 10.0, "Avg": 10.0, "Clean": 20.0}, "rest": {"fog": 12.0, "Avg": 12.0,
                                                                              "Clean": None},
                      "rest_k3": {"fog": 13.0, "Avg": 13.0, "Clean": None}}}
    monkeypatch.setattr(report, "direction_table", lambda *a, **k: table)
    (title, header, rows), = ob.variant_tables(cfg, "i2t", {})
    assert title.startswith("Variants of `rest`") and header[:2] == ["method", "overrides"]
    assert rows == [["`rest`", "(base)", "12.0", "12.0", "—"], ["`rest_k3`", "topk=3", "13.0", "13.0", "—"]]
