"""Per-query outcomes, bootstrap intervals, paired differences and matched stream comparisons."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from _tiny import make_tiny_clip_dir, make_tiny_dataset, one_torch_thread
from qshift import report, stats
from qshift.adapt import run_stream
from qshift.config import Run, load_params
from qshift.corrupt.build import build_image_queries
from qshift.data.manifest import load_split
from qshift.evaluation import hits_and_ranks, topk_hits
from qshift.gallery import encode_gallery, load_gallery
from qshift.io import write_json
from qshift.models import load_model
from qshift.outcomes import read_outcomes, recall_from_ranks, write_outcomes
from qshift.results import run_key
from qshift.streams import build_image_stream

REPO = Path(__file__).resolve().parents[1]
_one_thread = pytest.fixture(autouse=True, scope="module")(one_torch_thread)
SEQ = {"kind": "sequential", "corruptions": ["gaussian_noise", "contrast"], "severities": [3]}
MIX = {"kind": "mixed", "corruptions": ["gaussian_noise", "contrast"], "severities": [3]}


# -- ranks ---------------------------------------------------------------------------------------------

def test_ranks_reproduce_topk_hits_exactly_even_with_ties():
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        scores = torch.randint(0, 4, (23, 50), generator=g).float()  # many ties at the top-K boundary
        g_owner, q_owner = torch.randint(0, 9, (50,), generator=g), torch.randint(0, 10, (23,), generator=g)
        want = topk_hits(scores, q_owner, g_owner)
        hits, rank = hits_and_ranks(scores, q_owner, g_owner)
        for k, h in want.items():
            assert torch.equal(hits[k], h) and torch.equal(rank < k, h)
        assert (rank <= 50).all()


def test_rank_beyond_top_k_counts_better_scored_items():
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.01, 0.0]])
    owner = torch.arange(12)
    _, rank = hits_and_ranks(scores, torch.tensor([11]), owner)
    assert rank.tolist() == [11]  # 0-based: eleven items score above the correct one
    _, rank = hits_and_ranks(scores, torch.tensor([99]), owner)
    assert rank.tolist() == [12]  # no correct item: the gallery size


# -- the bootstrap -------------------------------------------------------------------------------------------

def test_interval_all_hits_none_and_half():
    assert stats.interval(stats.replicates(np.ones(500, bool), seed=1)[0]) == (100.0, 100.0)
    assert stats.interval(stats.replicates(np.zeros(500, bool), seed=1)[0]) == (0.0, 0.0)
    half = np.arange(1000) % 2 == 0
    lo, hi = stats.interval(stats.replicates(half, seed=1, n_boot=2000)[0])
    expect = 100 * 1.96 * np.sqrt(0.25 / 1000)  # the normal approximation: +-3.1 points
    assert lo < 50 < hi
    assert (hi - lo) / 2 == pytest.approx(expect, rel=0.12)
    assert stats.interval(stats.replicates(half, seed=1, n_boot=2000)[0]) == (lo, hi)  # seeded
    assert stats.interval(stats.replicates(half, seed=2, n_boot=2000)[0]) != (lo, hi)


def test_chunking_does_not_change_the_replicates():
    h = np.random.default_rng(0).random((3, 300)) < 0.4
    a = stats.replicates(h, seed=5, n_boot=97)
    b = stats.replicates(h, seed=5, n_boot=97, budget=1)  # one replicate per chunk
    assert np.array_equal(a, b)


def _cfg(methods=("source", "tcr", "same")) -> dict:
    cfg = load_params(REPO / "params.yaml")
    cfg["adapt"].update(methods=list(methods), directions=["i2t"], clean_methods=["source"])
    cfg["corrupt"]["image"].update(names=["gaussian_noise", "contrast"], severities=[3])
    cfg["streams"] = {"methods": [], "image": {}, "text": {}}
    cfg["methods"]["same"] = {}
    return cfg


def _write_run(run: Run, ranks: np.ndarray, ids: np.ndarray, with_outcomes: bool = True, extra: dict | None = None):
    m = recall_from_ranks(ranks)
    doc = {"schema": 1, "key": run.key, "run_key": run_key(run.key), "metrics": m, "n_queries": len(ranks),
           "online": {"batch_size": [len(ranks)], "batch_r1": [m["R@1"]], "cum_r1": [m["R@1"]], "stats": {}},
           "counters": {}, "hparams": {}, "timing": {"seconds": 1.0}, "mlflow": {"logged": True}, **(extra or {})}
    write_json(run.result_path, doc)
    if with_outcomes:
        order = np.random.default_rng(len(ranks)).permutation(len(ids))  # arrival order differs from id order
        write_outcomes(run.outcomes_path, {"query_id": ids[order], "index": order.astype(np.int32),
                                           "rank": ranks[order].astype(np.int32)})


def _synthetic_grid(tmp_path, monkeypatch, with_outcomes=True):
    monkeypatch.chdir(tmp_path)
    cfg = _cfg()
    rng = np.random.default_rng(3)
    n = 800
    ids = np.arange(1000, 1000 + n)
    base = {c: rng.integers(0, 20, n) for c in ("clean", "gaussian_noise", "contrast")}
    from qshift.config import runs
    for run in runs(cfg):
        r = base[run.corruption].copy()
        if run.method == "tcr":  # tcr turns 15% of the source's misses into top-1 hits
            flip = (r > 0) & (rng.random(n) < 0.15)
            r[flip] = 0
        _write_run(run, r, ids, with_outcomes)
    return cfg


def test_paired_delta_of_a_method_against_itself_is_exactly_zero(tmp_path, monkeypatch):
    cfg = _synthetic_grid(tmp_path, monkeypatch)
    found, missing = report.collect(cfg)
    assert not missing
    unc = stats.direction_intervals(cfg, "i2t", found, n_boot=300)
    same = unc["delta"]["same"]  # `same` has the source's exact ranks
    assert set(same) == {"gaussian_noise", "contrast", "Avg"}
    for v in same.values():
        assert (v["d"], v["lo"], v["hi"], v["sig"]) == (0.0, 0.0, 0.0, False)
    tcr = unc["delta"]["tcr"]
    assert all(v["sig"] and v["lo"] > 0 for v in tcr.values())  # a real, large improvement is significant
    lo, hi = unc["ci"]["tcr"]["Avg"]
    table = report.direction_table(cfg, "i2t", found)
    assert lo < table["rows"]["tcr"]["Avg"] < hi
    assert unc["point"]["tcr"]["Avg"] == pytest.approx(table["rows"]["tcr"]["Avg"])
    # the Avg interval is narrower than a single cell's (two cells averaged)
    cell = unc["ci"]["tcr"]["gaussian_noise"]
    assert hi - lo < cell[1] - cell[0]
    assert "Clean" in unc["ci"]["source"] and "Clean" not in unc["ci"]["tcr"]


def test_report_shows_intervals_marks_and_companions(tmp_path, monkeypatch):
    cfg = _synthetic_grid(tmp_path, monkeypatch)
    summary = report.build_report(cfg, tmp_path / "reports", track=False)
    md = (tmp_path / "reports/report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| tcr |"))
    assert "±" in row and "*)" in row  # intervals, and the Avg's significant Δ
    assert "paired bootstrap" in md
    t = summary["directions"]["i2t"]["tcr"]
    assert t["avg_r1_lo"] < t["avg_r1"] < t["avg_r1_hi"]
    assert set(t["cells_r1_lo"]) == {"gaussian_noise", "contrast"}
    assert t["delta_to_source"]["Avg"]["significant"] is True
    assert summary["directions"]["i2t"]["same"]["delta_to_source"]["Avg"]["d_lo"] == 0.0


def test_old_results_without_outcomes_give_a_note_not_a_crash(tmp_path, monkeypatch):
    cfg = _synthetic_grid(tmp_path, monkeypatch, with_outcomes=False)
    summary = report.build_report(cfg, tmp_path / "reports", track=False)
    md = (tmp_path / "reports/report.md").read_text()
    assert "No intervals for" in md and "per-query outcomes" in md
    assert "avg_r1_lo" not in summary["directions"]["i2t"]["tcr"]


# -- real runs: outcomes of run_stream, matched streams ----------------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("stats")
    manifest = make_tiny_dataset(root / "builtin", n_test=24)
    clip = make_tiny_clip_dir(root / "tiny-clip")
    encode_gallery(load_model(f"local-dir:{clip}"), manifest, root / "gallery.pt", batch_size=64)
    build_image_stream(manifest, root / "seq", "seq", SEQ, seed=42, progress=False)
    build_image_stream(manifest, root / "mix", "mix", MIX, seed=42, progress=False)
    for c in SEQ["corruptions"]:
        build_image_queries(manifest, root / f"{c}-s3", c, 3, seed=42, progress=False)
    return {"root": root, "manifest": manifest, "clip": clip, "gallery": load_gallery(root / "gallery.pt")}


def test_run_stream_outcomes_are_in_arrival_order_and_reproduce_recall(world):
    split = load_split(world["root"] / "seq/manifest.json")
    model = load_model(f"local-dir:{world['clip']}")
    out = run_stream(model, "tcr", {"lr": 1e-2}, "i2t", split, world["gallery"], batch_size=5, steps=1, seed=3,
                     progress=False)
    o = out["outcomes"]
    assert recall_from_ranks(o["rank"]) == out["metrics"]
    assert np.array_equal(o["query_id"], split.image_ids[o["index"]])
    order = np.asarray([i for i in o["index"]])
    labels = o["domains"][o["domain"]]
    assert list(dict.fromkeys(labels)) == ["gaussian_noise-s3", "contrast-s3"]  # blocks, in arrival order
    assert sorted(order.tolist()) == list(range(24))
    path = world["root"] / "o.npz"
    write_outcomes(path, o)
    back = read_outcomes(path)
    assert all(np.array_equal(back[k], o[k]) for k in o)
    assert path.stat().st_size < 2000


def _run_all(world, tmp_path, method, hp):
    """The method alone on each domain and on both streams, written as a results tree."""
    model = load_model(f"local-dir:{world['clip']}")
    root = world["root"]
    sets = {c: root / f"{c}-s3/manifest.json" for c in SEQ["corruptions"]}
    sets.update(seq=root / "seq/manifest.json", mix=root / "mix/manifest.json")
    for name, manifest in sets.items():
        split = load_split(manifest)
        out = run_stream(model, method, copy.deepcopy(hp), "i2t", split, world["gallery"], batch_size=5, steps=1,
                         seed=7, progress=False)
        run = Run("builtin", "qshift-tiny-clip", "i2t", method, name, 0 if name in ("seq", "mix") else 3, 42)
        o = out.pop("outcomes")
        write_outcomes(run.outcomes_path, o)
        write_json(run.result_path, {"schema": 1, "key": run.key, "run_key": run_key(run.key), **out})


@pytest.mark.parametrize("method,hp", [("source", {}), ("tcr", {"lr": 5e-2})])
def test_matched_stream_gap_is_exactly_zero_for_source(world, tmp_path, monkeypatch, method, hp):
    monkeypatch.chdir(tmp_path)
    _run_all(world, tmp_path, method, hp)
    cfg = _cfg(methods=(method,))
    cfg["adapt"]["clean_methods"] = []
    cfg["streams"] = {"methods": [method], "image": {"seq": SEQ, "mix": MIX}, "text": {}}
    found, missing = report.collect(cfg)
    assert not missing
    tables = report.stream_tables(cfg, "i2t", found, report.independent_r1(found, "i2t"))
    rows = stats.matched_streams(cfg, "i2t", found, tables, n_boot=200)
    assert {(r["stream"], r["domain"]) for r in rows} == {(s, f"{c}-s3") for s in ("seq", "mix")
                                                          for c in SEQ["corruptions"]}
    assert sum(r["n"] for r in rows if r["stream"] == "seq") == 24
    for r in rows:  # the matched R@1 in the stream is the stream's own per-domain R@1
        assert r["r1"] == pytest.approx(found[next(k for k in found if k.corruption == r["stream"])]
                                        ["metrics_by_domain"][r["domain"]]["R@1"])
    if method == "source":
        assert all(r["gap"] == 0.0 and r["gap_lo"] == 0.0 and r["gap_hi"] == 0.0 for r in rows)
        assert all(t["rows"]["source"]["r1"] == t["rows"]["source"]["alone"] for t in tables.values())
    else:  # an adapting method: the stream changes what it scores
        assert any(r["gap"] != 0.0 for r in rows)
    assert all(c.get("matched") for t in tables.values() for c in t["rows"][method]["by_domain"].values())
    if method == "source":  # and the report says so
        summary = report.build_report(cfg, tmp_path / "reports", track=False)
        md = (tmp_path / "reports/report.md").read_text()
        assert "| seq (sequential) | source | gaussian_noise-s3 | 12 |" in md and "| +0.0 ±0.0 |" in md
        assert all(r["gap"] == 0.0 for r in summary["streams_matched"]["i2t"])
        seq = summary["streams"]["i2t"]["seq"]["methods"]["source"]
        assert seq["r1"] == seq["alone_r1"]


def test_mlflow_runs_get_lo_hi_companions(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from qshift import tracking

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = Run("builtin", "qshift-tiny-clip", "i2t", "tcr", "contrast", 3, 42)
    ranks = np.arange(200) % 7
    o = {"query_id": np.arange(200), "index": np.arange(200, dtype=np.int32), "rank": ranks.astype(np.int32)}
    m = recall_from_ranks(ranks)
    ci = stats.check_and_interval(o, m, 42, run.key, n_boot=200)
    assert ci["R@1_lo"] < m["R@1"] < ci["R@1_hi"] and ci["R@10_lo"] == ci["R@10_hi"] == 100.0
    with pytest.raises(RuntimeError, match="per-query ranks give"):
        stats.check_and_interval(o, {**m, "R@1": m["R@1"] + 1}, 42, run.key, n_boot=10)
    doc = {"schema": 1, "key": run.key, "run_key": run_key(run.key), "metrics": m, "metrics_ci": ci,
           "online": {"batch_size": [200], "batch_r1": [m["R@1"]], "cum_r1": [m["R@1"]], "stats": {}},
           "counters": {}, "hparams": {}, "timing": {}, "env": {}}
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    status = tracking.log_result(doc, uri, "qshift-test")
    assert status["logged"], status
    got = MlflowClient(tracking_uri=uri).get_run(status["run_id"]).data.metrics
    assert got["R_at_1_lo"] == pytest.approx(ci["R@1_lo"]) and got["R_at_1_hi"] == pytest.approx(ci["R@1_hi"])


# -- seeds ---------------------------------------------------------------------------------------------------

def test_t_interval_on_a_hand_made_case():
    mean, lo, hi = stats.t_interval([60.0, 62.0, 64.0])  # sd 2, n 3: t(0.975, 2) = 4.303
    assert mean == 62.0 and (hi - lo) / 2 == pytest.approx(4.303 * 2 / np.sqrt(3))
    assert stats.t_interval([5.0, 5.0]) == (5.0, 5.0, 5.0)
    assert stats.t_interval([1.0]) is None


def _seeded_grid(tmp_path, monkeypatch, seeds):
    monkeypatch.chdir(tmp_path)
    cfg = _cfg()
    cfg["seeds"] = list(seeds)
    n = 600
    ids = np.arange(n)
    base = {c: np.random.default_rng(3).integers(0, 20, n) for c in ("clean", "gaussian_noise", "contrast")}
    from qshift.config import runs
    for run in runs(cfg):
        r = base[run.corruption].copy()
        if run.method == "tcr":  # each seed's stream order helps a different share of the queries
            rng = np.random.default_rng(run.seed)
            r[(r > 0) & (rng.random(n) < 0.10 + 0.002 * (run.seed % 10))] = 0
        _write_run(run, r, ids)
    return cfg


def test_seeds_coexist_and_the_report_aggregates_them(tmp_path, monkeypatch):
    from qshift.config import runs

    cfg = _seeded_grid(tmp_path, monkeypatch, [42, 7, 3])
    paths = {r.result_path for r in runs(cfg)}
    assert len(paths) == 3 * len(list(runs(cfg, [42])))
    assert all(Path(p).is_file() for p in paths)
    by_seed = {s: report.collect(cfg, seeds=[s])[0] for s in (42, 7, 3)}
    across = stats.seed_summary(cfg, "i2t", by_seed, n_boot=200)
    src, same, tcr = (across["rows"][m] for m in ("source", "same", "tcr"))
    assert src["n"] == 3 and src["lo"] == src["mean"] == src["hi"]  # no adaptation: every seed the same
    assert same["delta"] == {"d": 0.0, "lo": 0.0, "hi": 0.0, "sig": False}
    per = [tcr["per_seed"][s]["avg"] for s in (42, 7, 3)]
    assert len(set(per)) == 3 and tcr["mean"] == pytest.approx(np.mean(per))
    assert tcr["lo"] < tcr["mean"] < tcr["hi"] and tcr["delta"]["sig"] and tcr["delta"]["lo"] > 0
    summary = report.build_report(cfg, tmp_path / "reports", track=False)
    md = (tmp_path / "reports/report.md").read_text()
    assert "### Seeds — i2t" in md and "| Method | seed 42 | seed 7 | seed 3 | Mean over seeds |" in md
    assert "the first of seeds 42, 7, 3" in md
    s = summary["seeds"]["i2t"]["tcr"]
    assert s["n_seeds"] == 3 and s["avg_r1_mean"] == pytest.approx(tcr["mean"]) and s["delta_to_source"]["sig"]
    # the main tables are the first seed's
    assert summary["directions"]["i2t"]["tcr"]["avg_r1"] == pytest.approx(tcr["per_seed"][42]["avg"])
    assert "Seeds" in (tmp_path / "reports/report.html").read_text()
    from qshift.report_export import export

    m = export(cfg, tmp_path / "exported")  # DVC's metrics: the seeds' mean beside the first seed's numbers
    assert m["i2t"]["tcr"]["n_seeds"] == 3 and m["i2t"]["tcr"]["avg_r1_seeds_mean"] == pytest.approx(tcr["mean"])
    assert m["i2t"]["tcr"]["avg_r1"] == pytest.approx(tcr["per_seed"][42]["avg"])


def test_one_seed_has_no_seeds_section_and_a_missing_seed_run_is_listed(tmp_path, monkeypatch):
    cfg = _seeded_grid(tmp_path, monkeypatch, [42])
    summary = report.build_report(cfg, tmp_path / "reports", track=False)
    assert "seeds" not in summary and "### Seeds" not in (tmp_path / "reports/report.md").read_text()
    cfg["seeds"] = [42, 9]  # seed 9 never ran: its runs are missing, the tables stay seed 42's
    summary = report.build_report(cfg, tmp_path / "reports", track=False)
    assert summary["missing"] and all("/seed9/" in m["run"] for m in summary["missing"])
    assert summary["seeds"]["i2t"]["tcr"]["n_seeds"] == 1
