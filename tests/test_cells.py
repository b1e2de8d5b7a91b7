"""One adapt job per (method, direction, seed): cells run back to back in one process.

* every method's numbers are the same whether its cell runs on a freshly loaded model or on a
  model that has just adapted through other cells (the granularity changes no number);
* the job stage runs every cell of the grid for (method, direction, seed), skips the cells
  whose results file is up to date, reruns one whose query set changed or whose file is gone,
  and keeps the finished cells when a later cell fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from _tiny import make_tiny_clip_dir, make_tiny_dataset, one_torch_thread
from qshift import config

REPO = Path(__file__).resolve().parents[1]
CFG = yaml.safe_load((REPO / "params.yaml").read_text())
BATCH = 8

_one_thread = pytest.fixture(autouse=True, scope="module")(one_torch_thread)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A cwd laid out like the repository: tiny dataset, tiny CLIP, its gallery, two query sets."""
    from qshift.corrupt.build import build_image_queries, build_text_queries
    from qshift.gallery import encode_gallery
    from qshift.models import load_model

    cwd = tmp_path_factory.mktemp("cells")
    ds, model = CFG["benchmark"], CFG["model"]["name"]
    manifest = make_tiny_dataset(cwd / config.DATASET_DIR.format(dataset=ds), n_test=16)
    clip = make_tiny_clip_dir(cwd / config.MODEL_DIR.format(model=model))
    encode_gallery(load_model(f"local-dir:{clip}"), manifest, cwd / config.GALLERY.format(model=model, dataset=ds),
                   batch_size=64)
    build_image_queries(manifest, cwd / config.IMAGE_QUERIES.format(dataset=ds, corruption="gaussian_noise",
                                                                     severity=3),
                        "gaussian_noise", 3, seed=CFG["seed"], progress=False)
    build_text_queries(manifest, cwd / config.TEXT_QUERIES.format(dataset=ds, corruption="ocr", severity=2),
                       "ocr", 2, seed=CFG["seed"])
    return cwd


def _params(cwd: Path, tmp_path: Path, methods: list[str]) -> Path:
    cfg = yaml.safe_load(yaml.safe_dump(CFG))
    cfg["adapt"].update(methods=methods, clean_methods=[m for m in ("source", "tent") if m in methods],
                        batch_size=BATCH)
    cfg["corrupt"]["image"].update(names=["gaussian_noise"], severities=[3])
    cfg["corrupt"]["text"].update(names=["ocr"], levels=[2])
    cfg["streams"] = {"methods": [], "image": {}, "text": {}}
    cfg["tune"] = {**cfg["tune"], "enabled": False}
    cfg["mlflow"] = {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "cells-{benchmark}"}
    cfg["threads"] = 1
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _stage(cwd: Path, params: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(REPO / "src"), "QSHIFT_PROGRESS": "0", "PATH": str(Path(sys.executable).parent),
           "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run([sys.executable, str(REPO / "stages/adapt.py"), "--params", str(params), *args],
                          cwd=cwd, capture_output=True, text=True, env=env, timeout=600)


def _strip(body: dict) -> dict:
    return {k: v for k, v in body.items() if k not in ("timing", "outcomes")}


@pytest.mark.parametrize("direction", ["i2t", "t2i"])
def test_a_cell_after_other_cells_equals_a_cell_alone_for_every_method(world, direction):
    """Back to back on one model (what an adapt job does): each method, run after an adapting
    method has gone through another cell, gives the numbers it gives on a freshly loaded model."""
    from qshift.adapt import run_stream
    from qshift.data.manifest import load_split
    from qshift.gallery import load_gallery
    from qshift.models import load_model
    from qshift.tta import METHODS

    ds, name = CFG["benchmark"], CFG["model"]["name"]
    gallery = load_gallery(world / config.GALLERY.format(model=name, dataset=ds))
    src = f"local-dir:{world / config.MODEL_DIR.format(model=name)}"
    path = (world / config.IMAGE_QUERIES.format(dataset=ds, corruption="gaussian_noise", severity=3) / "manifest.json"
            if direction == "i2t" else world / config.TEXT_QUERIES.format(dataset=ds, corruption="ocr", severity=2))
    queries, clean = load_split(path, "test"), load_split(world / config.MANIFEST.format(dataset=ds), "test")
    kw = dict(batch_size=BATCH, steps=CFG["adapt"]["steps"], progress=False)
    shared = load_model(src)
    for method in METHODS.names():
        alone = run_stream(load_model(src), method, {}, direction, queries, gallery, seed=42, **kw)
        run_stream(shared, "tcr", {}, direction, clean, gallery, seed=7, **kw)  # another cell first
        after = run_stream(shared, method, {}, direction, queries, gallery, seed=42, **kw)
        assert _strip(after) == _strip(alone), method
        assert (after["outcomes"]["rank"] == alone["outcomes"]["rank"]).all(), method


def test_the_job_runs_its_cells_then_only_what_changed(world, tmp_path):
    from qshift.config import load_params
    from qshift.cells import job_cells

    params = _params(world, tmp_path, ["source", "tent"])
    cfg = load_params(params)
    cells = job_cells(cfg, "tent", "i2t", 42)
    assert [(r.corruption, r.severity) for r in cells] == [("clean", 0), ("gaussian_noise", 3)]
    proc = _stage(world, params, "--method", "tent", "--direction", "i2t")
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = [world / r.result_path for r in cells]
    docs = [json.loads(f.read_text()) for f in files]
    assert all(d["status"] == "ok" and d["fingerprint"] and d["mlflow"]["logged"] for d in docs)
    log = world / config.LOGS["adapt_job"].format(dataset=cfg["benchmark"], model=cfg["model"]["name"],
                                                  direction="i2t", method="tent", seed=42)
    assert "2 cells, 0 up to date, 2 to run" in log.read_text()
    # one cell alone (the stage's --corruption form) gives the job's numbers for that cell
    alone = tmp_path / "alone.json"
    os.replace(files[1], alone)
    proc = _stage(world, params, "--method", "tent", "--direction", "i2t", "--corruption", "gaussian_noise",
                  "--severity", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = json.loads(files[1].read_text())
    assert one["metrics"] == docs[1]["metrics"] and one["online"] == docs[1]["online"]
    assert one["fingerprint"] == docs[1]["fingerprint"]
    # nothing changed: the job runs nothing and leaves the files as they are
    mtimes = [f.stat().st_mtime_ns for f in files]
    proc = _stage(world, params, "--method", "tent", "--direction", "i2t")
    assert proc.returncode == 0 and "2 cells, 2 up to date, 0 to run" in log.read_text()
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    # the corrupted query set is rebuilt (a newer file): only its cell runs again
    qset = world / config.IMAGE_QUERIES.format(dataset=cfg["benchmark"], corruption="gaussian_noise", severity=3)
    m = qset / "manifest.json"
    os.utime(m, ns=(m.stat().st_atime_ns, m.stat().st_mtime_ns + 1_000_000_000))
    proc = _stage(world, params, "--method", "tent", "--direction", "i2t")
    assert proc.returncode == 0 and "2 cells, 1 up to date, 1 to run" in log.read_text()
    assert files[0].stat().st_mtime_ns == mtimes[0] and files[1].stat().st_mtime_ns != mtimes[1]
    again = json.loads(files[1].read_text())
    assert again["metrics"] == docs[1]["metrics"] and again["fingerprint"] != docs[1]["fingerprint"]
    # another hyperparameter: every cell of the job runs again
    proc = _stage(world, params, "--method", "tent", "--direction", "i2t", "--set", "methods.tent.lr=1e-2")
    assert proc.returncode == 0 and "2 cells, 0 up to date, 2 to run" in log.read_text()


def test_a_failing_cell_keeps_the_cells_finished_before_it(world, tmp_path):
    from qshift.config import load_params
    from qshift.cells import job_cells

    params = _params(world, tmp_path, ["source"])
    cfg = load_params(params)
    clean, shifted = job_cells(cfg, "source", "t2i", 42)
    for r in (clean, shifted):
        for p in (world / r.result_path, world / r.outcomes_path):
            p.unlink(missing_ok=True)
    qfile = world / config.TEXT_QUERIES.format(dataset=cfg["benchmark"], corruption="ocr", severity=2)
    good = qfile.read_bytes()
    qfile.write_text("{not json")  # the second cell's query set is damaged
    try:
        proc = _stage(world, params, "--method", "source", "--direction", "t2i")
    finally:
        qfile.write_bytes(good)
    assert proc.returncode == 2 and str(qfile.name) in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert json.loads((world / clean.result_path).read_text())["status"] == "ok"  # finished before: kept
    assert not (world / shifted.result_path).exists()
    proc = _stage(world, params, "--method", "source", "--direction", "t2i")  # the rerun does the rest
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = world / config.LOGS["adapt_job"].format(dataset=cfg["benchmark"], model=cfg["model"]["name"],
                                                  direction="t2i", method="source", seed=42)
    assert "2 cells, 1 up to date, 1 to run" in log.read_text()


@pytest.mark.parametrize("args, message", [
    (["--method", "tent", "--direction", "i2t", "--corruption", "gaussian_noise"],
     "--corruption and --severity go together"),
    (["--method", "tcr", "--direction", "i2t"], "method 'tcr' has no cells in direction i2t"),
])
def test_job_arguments_fail_with_one_clear_line(world, tmp_path, args, message):
    proc = _stage(world, _params(world, tmp_path, ["source", "tent"]), *args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("benchmark, direction, valid, what", [
    ("builtin", "i2t", ["gaussian_noise"], "image corruption"),
    ("builtin", "t2i", ["char_insert"], "text corruption"),
    ("builtin-cir", "cir", ["gaussian_noise", "char_insert"], "image or text corruption"),  # reference or modification
    ("builtin-va", "v2a", ["gaussian_noise"], "video corruption"),
    ("builtin-va", "a2v", ["crowd"], "audio corruption"),
])
def test_a_cells_corruption_is_checked_against_its_directions_queries(benchmark, direction, valid, what):
    """One check_cell for every task: the clean run and the streams take severity 0; anything else
    is one of the direction's query corruptions (a task names them: qshift.cir_plan, qshift.va_plan),
    else an error naming the direction and every valid choice."""
    from qshift.cells import check_cell
    from qshift.errors import ConfigError, UnknownNameError

    cfg = config.load_params(config.DEFAULT_PARAMS, [f"benchmark={benchmark}"])
    for name in valid:
        check_cell(cfg, direction, name, 3)
    check_cell(cfg, direction, "clean", 0)
    with pytest.raises(ConfigError, match="the clean reference run takes --severity 0, got 3"):
        check_cell(cfg, direction, "clean", 3)
    for stream in config.streams(cfg, direction):
        check_cell(cfg, direction, stream, 0)
        with pytest.raises(ConfigError, match=f"stream '{stream}' takes --severity 0, got 2"):
            check_cell(cfg, direction, stream, 2)
    with pytest.raises(UnknownNameError, match=f"unknown {what} or stream for {direction} queries 'nope'") as e:
        check_cell(cfg, direction, "nope", 3)
    assert all(f" {n}," in str(e.value) or str(e.value).endswith(n) for n in valid + ["clean"]), str(e.value)
