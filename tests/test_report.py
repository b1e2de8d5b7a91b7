"""The report: Markdown + self-contained HTML, paper numbers, plots, replay notes, Chromium rendering.

Results documents are built by hand for a small grid (no pipeline run); the report is
built once per module and shared by the tests that only read it.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from qshift import paper, report
from qshift.config import load_params, runs
from qshift.io import write_json, write_text
from qshift.results import run_key

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def grid(methods=("source", "tcr"), directions=("i2t", "t2i"), image=("gaussian_noise", "defocus_blur", "contrast"),
         severities=(3, 5), text=("ocr", "char_replace"), levels=(2,), benchmark=None, model=None,
         clean_methods=None, streams=None) -> dict:
    cfg = load_params(REPO / "params.yaml")
    cfg["streams"] = streams or {"methods": [], "image": {}, "text": {}}
    cfg["adapt"].update(methods=list(methods), directions=list(directions),
                        clean_methods=list(methods if clean_methods is None else clean_methods))
    cfg["corrupt"]["image"].update(names=list(image), severities=list(severities))
    cfg["corrupt"]["text"].update(names=list(text), levels=list(levels))
    if benchmark:
        cfg["benchmark"] = benchmark
        cfg["datasets"][benchmark] = {}
    if model:
        cfg["model"]["name"] = model
    return cfg


def r1_of(run) -> float:
    """A deterministic, plausible R@1 per cell: adaptation helps, severity hurts."""
    base = {"i2t": 60.0, "t2i": 45.0}[run.direction] - 6.0 * run.severity - 2.0 * len(run.corruption) % 7
    return round(base + (4.5 if run.method == "tcr" else 0.0), 2)


def make_doc(run, logged: bool = True, n_batches: int = 4, domains: list[str] | None = None) -> dict:
    r1 = r1_of(run)
    online = {"batch_size": [64] * n_batches, "batch_r1": [r1 - 3 + 2 * i for i in range(n_batches)],
              "cum_r1": [r1 - 3 + i for i in range(n_batches)],
              "stats": {"entropy": [2.0 - 0.1 * i for i in range(n_batches)], "n_selected": [20] * n_batches}}
    if domains:
        online["domain"] = domains
    return {"schema": 1, "key": run.key, "run_key": run_key(run.key),
            "metrics": {"R@1": r1, "R@5": r1 + 20, "R@10": r1 + 28}, "n_queries": 64 * n_batches,
            "n_gallery": 320, "online": online,
            "counters": {"skipped_steps": 2 if (run.method == "tcr" and run.corruption == "contrast") else 0},
            "hparams": {}, "timing": {"seconds": 1.0}, "run": {"batch_size": 64, "steps": 3, "seed": 42},
            "env": {"git_commit": "abc", "params_hash": "h", "host": "x", "device": "cpu"},
            "finished_at": 1700000000.0,
            "mlflow": {"logged": logged, "run_id": "r" if logged else None,
                       "error": None if logged else "ConnectionError: refused"}}


def write_grid(cfg: dict, root: Path, skip: set[str] = frozenset(), logged: bool = True) -> list:
    written = []
    for run in runs(cfg):
        if run.result_path in skip:
            continue
        write_json(root / run.result_path, make_doc(run, logged=logged))
        written.append(run)
    return written


MISSING = "results/builtin/qshift-tiny-clip/i2t/tcr/seed42/contrast-s5.json"
BROKEN = "results/builtin/qshift-tiny-clip/t2i/source/seed42/ocr-s2.json"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A report over a 2-method, 2-direction grid with two severities, one missing and one broken file."""
    root = tmp_path_factory.mktemp("report")
    cfg = grid()
    write_grid(cfg, root, skip={MISSING})
    write_text(root / BROKEN, "{ not json")
    write_json(root / "reports/pretrain.json", {"model": "qshift-tiny-clip", "steps": 30, "train_seconds": 1.0,
                                                 "device": "cpu", "test_i2t_R@1": 61.0, "test_t2i_R@1": 47.0})
    cwd = os.getcwd()
    os.chdir(root)  # results paths are relative to the repository root
    try:
        summary = report.build_report(cfg, root / "reports", track=False)
    finally:
        os.chdir(cwd)
    return root, cfg, summary


# -- Markdown and summary ---------------------------------------------------------------------------

def test_markdown_keeps_its_sections_and_lists_every_missing_cell(built):
    root, cfg, summary = built
    md = (root / "reports/report.md").read_text()
    for heading in ("# QShift report — builtin / qshift-tiny-clip", "## Source model",
                    "## Image-to-text retrieval", "## Text-to-image retrieval", "## Not run / failed"):
        assert heading in md
    assert "| Method | gaussian_noise s3 | gaussian_noise s5 |" in md  # several severities: labelled
    assert "| OCR | CR | Avg | Clean |" in md
    assert "Δ R@1 to `source`, per cell:" in md
    assert f"- `{MISSING}`: results file missing" in md
    assert f"- `{BROKEN}`: results file" in md and "not valid JSON" in md
    assert "Every run of the grid finished." not in md
    assert "No paper reference for `builtin` / `qshift-tiny-clip`" in md
    assert md.count("No paper reference for") == 2  # one line per direction, no table
    assert "![R@1 against severity](figures/i2t_severity.png)" in md
    assert "R@1 against severity: not plotted" in md  # t2i has a single level
    assert "<summary>R@5 and R@10</summary>" in md
    assert "tcr: contrast s3 2" in md  # skipped steps
    assert "MLflow: replay not attempted" in md
    assert {m["run"] for m in summary["missing"]} == {MISSING, BROKEN}
    i2t = summary["directions"]["i2t"]
    assert i2t["tcr"]["avg_r1"] is None and i2t["source"]["avg_r1"] is not None  # a missing cell: no Avg
    for f in ("i2t_r1", "i2t_online", "i2t_heatmap", "i2t_severity", "t2i_r1", "t2i_online", "t2i_heatmap"):
        assert (root / f"reports/figures/{f}.png").stat().st_size > 1000, f
    assert not (root / "reports/figures/t2i_severity.png").exists()
    assert not list((root / "reports/figures").glob("*forgetting*"))  # no sequential streams


def test_tables_have_clean_reference_and_deltas(built):
    _, cfg, _ = built
    from qshift.config import Run

    found = {r: make_doc(r) for r in runs(cfg)}
    t = report.direction_table(cfg, "i2t", found, "R@5")
    assert t["columns"][-2:] == ["Avg", "Clean"]
    src, tcr = t["rows"]["source"], t["rows"]["tcr"]
    clean = Run("builtin", "qshift-tiny-clip", "i2t", "tcr", "clean", 0, 42)
    assert tcr["Clean"] == r1_of(clean) + 20
    d = report.delta_table(report.direction_table(cfg, "i2t", found, "R@1"))
    assert set(d["rows"]) == {"tcr"} and all(abs(v - 4.5) < 1e-9 for v in d["rows"]["tcr"].values())
    assert report.delta_table({"columns": ["a"], "rows": {"tcr": {"a": 1.0}}}) is None


def test_clean_reference_only_for_clean_methods(tmp_path, monkeypatch):
    """`adapt.clean_methods: [source]`: tcr's Clean cell is empty by design, not a missing run."""
    monkeypatch.chdir(tmp_path)
    cfg = grid(directions=("t2i",), text=("ocr",), clean_methods=("source",))
    write_grid(cfg, tmp_path)
    summary = report.build_report(cfg, tmp_path / "reports", track=False)
    md = (tmp_path / "reports/report.md").read_text()
    assert summary["missing"] == [] and "Every run of the grid finished." in md
    assert summary["directions"]["t2i"]["tcr"]["clean_r1"] is None
    assert summary["directions"]["t2i"]["source"]["clean_r1"] is not None
    assert "the reference (run for `source`)" in md


# -- the paper's numbers ---------------------------------------------------------------------------------

def test_paper_numbers_are_data_keyed_by_dataset_backbone_direction_method_corruption():
    assert paper.PAPER[("coco", "blip-vit-b16", "i2t", "tcr", "avg")] == 59.1
    assert paper.PAPER[("coco", "blip-vit-l16", "t2i", "source", "avg")] == 43.3
    assert paper.PAPER[("coco", "blip-vit-b16", "i2t", "source", "zoom_blur")] == 8.4
    assert paper.PAPER[("coco", "blip-vit-b16", "t2i", "tcr", "ocr")] == 34.1
    assert paper.PAPER[("coco", "blip-vit-b16", "t2i", "source", "backtrans")] == 54.2
    assert paper.PAPER[("fashion-gen", "clip-vit-b16", "t2i", "tcr", "clean")] == 14.0
    assert paper.PAPER[("flickr", "blip-vit-b16", "i2t", "eata", "avg")] == 65.1
    assert sum(k[:4] == ("coco", "blip-vit-b16", "i2t", "tcr") for k in paper.PAPER) == 16 + 1
    assert paper.match("builtin", "qshift-tiny-clip") is None
    assert paper.match("COCO", "Salesforce/blip-itr-base-coco") == ("coco", "blip-vit-b16")
    assert paper.lookup("coco", "blip-vit-b16", "i2t", "tcr", "gaussian_noise", 5) == 53.2
    assert paper.lookup("coco", "blip-vit-b16", "i2t", "tcr", "gaussian_noise", 3) is None  # paper: severity 5


def test_a_matching_benchmark_shows_the_papers_numbers_beside_ours():
    cfg = grid(benchmark="coco", model="blip-vit-b16", image=("gaussian_noise", "fog"), severities=(5,),
               text=("ocr",), levels=(7,))  # the paper's text numbers are at level 7
    found = {r: make_doc(r) for r in runs(cfg)}
    cmp = report.paper_comparison(cfg, "i2t", found)
    assert cmp["match"] == ("coco", "blip-vit-b16")
    assert cmp["columns"] == ["gaussian_noise", "fog", "Avg"]
    ours = report.direction_table(cfg, "i2t", found)["rows"]["tcr"]["fog"]
    assert cmp["rows"]["tcr"]["fog"] == (ours, 71.0) and cmp["rows"]["source"]["Avg"][1] == 45.0
    assert "severity 5" in cmp["note"]
    gn = report.direction_table(cfg, "i2t", found)["rows"]["tcr"]["gaussian_noise"]
    assert f"| tcr | {gn:.1f} / 53.2 | {ours:.1f} / 71.0 |" in report.markdown_paper_table(cmp)
    t2i = report.paper_comparison(cfg, "t2i", found)
    assert t2i["rows"]["tcr"]["OCR"][1] == 34.1
    at3 = report.paper_comparison(grid(benchmark="coco", model="blip-vit-b16", image=("fog",), severities=(3,)),
                                  "i2t", found)
    assert set(at3["columns"]) == {"Avg"}  # no per-cell number at severity 3, only the (labelled) average


# -- plots ------------------------------------------------------------------------------------------------

def synthetic_stream() -> dict:
    return {"tcr": [("gaussian_noise-s5", [50.0, 52.0, 54.0]), ("fog-s5", [40.0, 38.0]),
                    ("contrast-s5", [30.0, 29.0, 28.0])],
            "tent": [("gaussian_noise-s5", [49.0, 45.0, 41.0]), ("fog-s5", [30.0, 25.0]),
                     ("contrast-s5", [20.0, 10.0, 5.0])]}


def test_forgetting_table_and_plot_on_a_synthetic_sequential_stream(tmp_path):
    ref = {"tcr": {"gaussian_noise-s5": 52.0, "fog-s5": 45.0, "contrast-s5": 29.0},
           "tent": {"gaussian_noise-s5": 47.0, "fog-s5": 35.0}}
    table = report.forgetting_table(synthetic_stream(), ref)
    tcr = {r["domain"]: r for r in table["tcr"]}
    assert tcr["fog-s5"]["mean_r1"] == 39.0 and tcr["fog-s5"]["gap"] == -6.0 and tcr["fog-s5"]["drift"] == -2.0
    assert [r["position"] for r in table["tent"]] == [0, 1, 2]
    assert table["tent"][2]["reference_r1"] is None and table["tent"][2]["gap"] is None
    out = tmp_path / "forgetting.png"
    report.plot_forgetting(synthetic_stream(), out, "synthetic", ref)
    from PIL import Image

    with Image.open(out) as im:
        assert im.size[0] > 600 and len(im.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50
    report.plot_forgetting(synthetic_stream(), tmp_path / "noref.png")  # without a reference too
    assert (tmp_path / "noref.png").stat().st_size > 1000


def test_sequential_results_are_split_by_domain_and_plotted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = grid(methods=("source", "tcr"), directions=("i2t",), image=("gaussian_noise",), severities=(3,))
    written = write_grid(cfg, tmp_path)
    seq_run = next(r for r in written if r.method == "tcr" and r.corruption == "gaussian_noise")
    doc = make_doc(seq_run, n_batches=4, domains=["clean-s0", "clean-s0", "gaussian_noise-s3", "gaussian_noise-s3"])
    write_json(tmp_path / seq_run.result_path, doc)
    found, _ = report.collect(cfg)
    curves = report.sequential_curves(found, "i2t")
    assert curves == {"tcr": [("clean-s0", doc["online"]["batch_r1"][:2]),
                              ("gaussian_noise-s3", doc["online"]["batch_r1"][2:])]}
    report.build_report(cfg, tmp_path / "reports", track=False)
    assert (tmp_path / "reports/figures/i2t_forgetting.png").stat().st_size > 1000
    md = (tmp_path / "reports/report.md").read_text()
    assert "![Forgetting](figures/i2t_forgetting.png)" in md
    alone = report.direction_table(cfg, "i2t", found)["rows"]["tcr"]["Clean"]
    in_stream = sum(doc["online"]["batch_r1"][:2]) / 2
    assert f"| tcr | 1. clean-s0 | 2 | {in_stream:.1f} | {alone:.1f} | {in_stream - alone:+.1f} |" in md
    assert "Domain (stream order)" in (tmp_path / "reports/report.html").read_text()


# -- replay through the report stage --------------------------------------------------------------------

def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_report_replays_unlogged_results_without_touching_them(tmp_path, monkeypatch, store_template):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = grid(methods=("tcr",), directions=("i2t",), image=("gaussian_noise",), severities=(3,))
    shutil.copy(store_template, tmp_path / "mlflow.db")
    cfg["mlflow"]["tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    written = write_grid(cfg, tmp_path, logged=False)
    files = {r.result_path: ((tmp_path / r.result_path).read_bytes(), (tmp_path / r.result_path).stat().st_mtime_ns)
             for r in written}

    # the store is down: nothing replayed, the report says so and the next run retries
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{closed_port()}")
    summary = report.build_report(cfg, tmp_path / "reports")
    md = (tmp_path / "reports/report.md").read_text()
    assert summary["mlflow"] == {"replayed": 0, "failing": 2}
    assert "still not logged" in md and "tracking server unreachable" in md

    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    summary = report.build_report(cfg, tmp_path / "reports")
    assert summary["mlflow"] == {"replayed": 2, "failing": 0}
    md = (tmp_path / "reports/report.md").read_text()
    assert "replayed now" in md and all(f"`{r.result_path}`" in md.split("replayed now")[1] for r in written)
    html_text = (tmp_path / "reports/report.html").read_text()
    assert "replayed now" in html_text
    for path, (data, mtime) in files.items():  # outputs of other jobs: never modified
        assert (tmp_path / path).read_bytes() == data and (tmp_path / path).stat().st_mtime_ns == mtime

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=cfg["mlflow"]["tracking_uri"])
    exp = client.get_experiment_by_name("qshift-builtin")
    found = client.search_runs([exp.experiment_id])
    keys = {r.data.tags.get("qshift.run_key") for r in found}
    assert {run_key(r.key) for r in written} <= keys and len(found) == len(written) + 1  # + the sweep parent


# -- the HTML report ---------------------------------------------------------------------------------------

def test_html_is_self_contained(built):
    root, _, _ = built
    page = (root / "reports/report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert not re.search(r"<script|<link|<iframe|@import|(src|href)\s*=\s*['\"]?(https?:|//|file:)|url\(", page, re.I)
    imgs = re.findall(r"<img [^>]*src='([^']+)'", page)
    assert len(imgs) == 7 and all(i.startswith("data:image/png;base64,") for i in imgs)
    for i in imgs:
        assert base64.b64decode(i.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert page.count("<table>") == 6  # R@1, R@5, R@10 per direction
    assert "(reference)" in page and "class='d pos'" in page and MISSING in page


def _chromium(args: list[str], tmp: Path, timeout: int = 60) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={tmp / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=tmp)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (Debian: apt-get install chromium; "
                                              "scripts/system-deps.sh installs it)")
def test_html_renders_in_headless_chromium(built, tmp_path):
    root, _, _ = built
    page = root / "reports/report.html"
    # a test-only copy with a probe script appended: the report itself has no script. The probe
    # records, for every image, whether the browser decoded it (naturalWidth > 0) and every table's size.
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images].map(i => i.complete && i.naturalWidth > 0 ? i.naturalWidth + 'x' + i.naturalHeight : 'BROKEN');
  const tables = [...document.querySelectorAll('table')].map(t => t.rows.length + 'x' + t.rows[0].cells.length + ':' + t.getBoundingClientRect().height);
  const out = document.createElement('pre'); out.id = 'probe';
  out.textContent = JSON.stringify({imgs, tables});
  document.body.appendChild(out);
});
</script></body>"""))
    dom = _chromium(["--virtual-time-budget=5000", "--dump-dom", probe.as_uri()], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    m = re.search(r"<pre id=\"probe\">(.*?)</pre>", dom.stdout, re.S)
    assert m, dom.stdout[-2000:]
    result = json.loads(m.group(1).replace("&quot;", '"'))
    assert len(result["imgs"]) == 7 and "BROKEN" not in result["imgs"], result
    assert all(int(s.split("x")[0]) > 300 for s in result["imgs"])
    assert len(result["tables"]) == 6 and all(float(t.split(":")[1]) > 40 for t in result["tables"]), result
    assert re.findall(r"\d+x\d+", " ".join(result["tables"]))[0] == "3x9"  # header + 2 methods; name + 6 cells + Avg + Clean

    # the report itself (no probe): rendered DOM has its tables and inline images, the page is not blank
    shot = tmp_path / "report.png"
    plain = _chromium(["--virtual-time-budget=3000", "--window-size=1200,2200", f"--screenshot={shot}",
                       page.as_uri()], tmp_path)
    assert plain.returncode == 0 and shot.is_file(), plain.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as im:
        rgb = im.convert("RGB")
        assert rgb.size == (1200, 2200)
        colours = rgb.getcolors(maxcolors=1 << 20)
    assert colours and len(colours) > 500  # text, tables and plots, not a blank page
    non_white = sum(n for n, c in colours if c != (255, 255, 255))
    assert non_white > 0.05 * 1200 * 2200
    if os.environ.get("QSHIFT_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["QSHIFT_KEEP_SCREENSHOT"])


def test_report_stage_cli_writes_markdown_and_html_with_the_tracking_server_down(tmp_path):
    """stages/report.py end to end on hand-made results; the tracking server does not answer."""
    import yaml

    cfg = grid(methods=("source",), directions=("t2i",), text=("ocr",), image=("contrast",), severities=(3,))
    cfg["mlflow"]["tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(cfg))
    write_grid(cfg, tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "QSHIFT_PROGRESS": "0"}
    env["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{closed_port()}"
    proc = subprocess.run([sys.executable, str(REPO / "stages/report.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "reports/report.html").stat().st_size > 10_000
    assert "Every run of the grid finished." in (tmp_path / "reports/report.md").read_text()
    md = (tmp_path / "reports/report.md").read_text()
    assert "sweep bookkeeping failed: tracking server unreachable" in md
    assert not (tmp_path / "mlflow.db").exists()


# -- multi-domain streams ------------------------------------------------------------------------------

MIX = {"kind": "mixed", "corruptions": ["gaussian_noise", "contrast"], "severities": [3]}
SEQ = {"kind": "sequential", "corruptions": ["gaussian_noise", "contrast"], "severities": [3]}


def stream_doc(run, kind: str, by_domain: dict[str, tuple[float, int]], batches: list[str]) -> dict:
    """A stream's results file as run_stream writes it: per-domain R@1 and per-batch domains."""
    doc = make_doc(run, n_batches=len(batches), domains=batches)
    n = sum(k for _, k in by_domain.values())
    doc["metrics"]["R@1"] = sum(r * k for r, k in by_domain.values()) / n
    doc["metrics_by_domain"] = {d: {"R@1": r, "R@5": r + 20, "R@10": r + 28, "n_queries": k}
                                for d, (r, k) in by_domain.items()}
    doc["stream"] = {"name": run.corruption, "kind": kind, "domains": list(by_domain)}
    doc["online"]["batch_r1"] = [by_domain[d][0] + i for i, d in enumerate(batches)]
    return doc


def test_stream_section_compares_each_stream_with_the_independent_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = grid(methods=("source", "tcr"), directions=("i2t",), image=("gaussian_noise", "contrast"), severities=(3,),
               streams={"methods": ["source", "tcr"], "image": {"mix": MIX, "seq": SEQ}, "text": {}})
    written = write_grid(cfg, tmp_path, skip={"results/builtin/qshift-tiny-clip/i2t/source/seed42/mix-s0.json"})
    assert {r.corruption for r in written} == {"clean", "gaussian_noise", "contrast", "mix", "seq"}
    by = {(r.method, r.corruption): r for r in written}
    gn, ct = "gaussian_noise-s3", "contrast-s3"
    mix = stream_doc(by["tcr", "mix"], "mixed", {gn: (40.0, 100), ct: (30.0, 300)}, [ct, gn, ct, ct])
    write_json(tmp_path / by["tcr", "mix"].result_path, mix)
    for m in ("source", "tcr"):
        write_json(tmp_path / by[m, "seq"].result_path,
                   stream_doc(by[m, "seq"], "sequential", {gn: (50.0, 128), ct: (20.0, 128)}, [gn, gn, ct, ct]))
    found, missing = report.collect(cfg)
    assert [r.result_path for r, _ in missing] == ["results/builtin/qshift-tiny-clip/i2t/source/seed42/mix-s0.json"]
    # the mixed stream alternates domains batch by batch: never read as a sequential stream
    curves = report.sequential_curves(found, "i2t")
    assert set(curves) == {"source", "tcr"} and [d for d, _ in curves["tcr"]] == [gn, ct]

    summary = report.build_report(cfg, tmp_path / "reports", track=False)
    tcr_gn, tcr_ct = (r1_of(by["tcr", c]) for c in ("gaussian_noise", "contrast"))
    alone = (100 * tcr_gn + 300 * tcr_ct) / 400  # weighted by the stream's queries per domain
    got = summary["streams"]["i2t"]["mix"]["methods"]["tcr"]
    assert got["r1"] == 32.5 and got["alone_r1"] == pytest.approx(alone)
    assert got["by_domain"][gn] == {"r1": 40.0, "alone_r1": tcr_gn}
    assert summary["streams"]["i2t"]["mix"]["methods"]["source"]["r1"] is None  # missing: shown, not dropped
    md = (tmp_path / "reports/report.md").read_text()
    assert "### Streams — i2t" in md
    assert "| Method | mix (mixed, 2 domains) | seq (sequential, 2 domains) |" in md
    seq_alone = (tcr_gn + tcr_ct) / 2
    assert f"| tcr | 32.5 / {alone:.1f} ({32.5 - alone:+.1f}) | 35.0 / {seq_alone:.1f} ({35 - seq_alone:+.1f}) |" in md
    assert "| source | — |" in md
    assert "Mixed stream `mix`, per domain:" in md and "Mixed stream `seq`" not in md
    assert f"| tcr | 40.0 / {tcr_gn:.1f} ({40 - tcr_gn:+.1f}) | 30.0 / {tcr_ct:.1f} ({30 - tcr_ct:+.1f}) |" in md
    assert f"| tcr | 1. {gn} | 2 | 50.5 | {tcr_gn:.1f} |" in md  # the forgetting table, from the seq stream
    assert (tmp_path / "reports/figures/i2t_forgetting.png").stat().st_size > 1000
    page = (tmp_path / "reports/report.html").read_text()
    assert "Streams — i2t" in page and "<b>mixed</b>" in page and "Mixed stream <code>mix</code>" in page


def test_identity_level_results_get_an_map_table_in_both_renderings(tmp_path, monkeypatch):
    """ReID presets (identity-level matching) record mAP: the report shows it beside R@K, with
    the note saying what a hit is; grids without mAP show no such table (test above)."""
    cfg = grid(directions=("t2i",), image=(), severities=(), text=("ocr",), levels=(2,))
    for run in runs(cfg):
        doc = make_doc(run)
        doc["metrics"]["mAP"] = round(doc["metrics"]["R@1"] - 7.5, 2)
        write_json(tmp_path / run.result_path, doc)
    monkeypatch.chdir(tmp_path)
    report.build_report(cfg, tmp_path / "reports", track=False)
    md = (tmp_path / "reports/report.md").read_text()
    html = (tmp_path / "reports/report.html").read_text()
    tcr = next(r for r in runs(cfg) if r.method == "tcr" and r.corruption == "ocr")
    expected = f"{r1_of(tcr) - 7.5:.1f}"
    for text in (md, html):
        assert "Identity-level matching" in text and "mAP (%)" in text and expected in text


def test_a_grid_without_map_has_no_map_table(built):
    root, _, _ = built
    assert "mAP" not in (root / "reports/report.md").read_text()
