"""Fault injection on the results/tracking/report path: nothing lost, nothing silently wrong.

- a diverged run (weights go NaN) is recorded as ``status: diverged``: no R@K, MLflow FAILED,
  listed by the report as a failure, never a number;
- a half-created sqlite store (what a kill -9 during MLflow's schema creation leaves) is
  detected before logging and recreated or reported; a kill during our own (atomic) creation
  leaves no store or a complete one;
- replay checks by key that runs exist in the *current* store;
- a bad results file is a listed failure: never a crash, a number, a replay or a summary entry;
- a kill while the report is built leaves the previous report set as it was;
- a rerun replaces a run's metric histories; a frozen tracking server costs bounded time.

Kills are real (SIGKILL, through ``QSHIFT_FAULT`` points the code honours only when set, or at
measured times). Results documents are hand-made except the diverged run's, which comes from
the real stream on a tiny open_clip CLIP.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from _tiny import make_tiny_clip_dir, one_torch_thread
from qshift import report, tracking
from qshift.adapt import run_stream
from qshift.config import Run, load_params, runs
from qshift.data.manifest import Split
from qshift.errors import InputError
from qshift.io import write_json
from qshift.models import load_model
from qshift.results import SCHEMA, load_result, run_key

pytestmark = pytest.mark.faults

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "qshift-test"
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src"), "QSHIFT_PROGRESS": "0"}
ENV.pop("MLFLOW_TRACKING_URI", None)
ENV.pop("QSHIFT_FAULT", None)


def grid(methods=("source", "tent"), image=("gaussian_noise", "contrast")) -> dict:
    cfg = load_params(REPO / "params.yaml")
    cfg["streams"] = {"methods": [], "image": {}, "text": {}}
    cfg["adapt"].update(methods=list(methods), directions=["i2t"], clean_methods=["source"])
    cfg["corrupt"]["image"].update(names=list(image), severities=[3])
    cfg["mlflow"]["experiment"] = EXPERIMENT
    return cfg


def make_doc(run: Run, r1: float = 40.0, n_batches: int = 3, finished_at: float = 1700000000.0) -> dict:
    return {"schema": SCHEMA, "status": "ok", "key": run.key, "run_key": run_key(run.key),
            "metrics": {"R@1": r1, "R@5": r1 + 20, "R@10": r1 + 30}, "n_queries": 8 * n_batches, "n_gallery": 24,
            "online": {"batch_size": [8] * n_batches, "batch_r1": [r1 + i for i in range(n_batches)],
                       "cum_r1": [r1] * n_batches, "stats": {"loss": [1.0] * n_batches}},
            "counters": {"skipped_steps": 0}, "hparams": {"lr": 1e-3}, "timing": {"seconds": 1.0},
            "run": {"batch_size": 8, "steps": 1, "seed": 42},
            "env": {"git_commit": "abc", "params_hash": "h", "host": "x", "device": "cpu"},
            "finished_at": finished_at, "mlflow": {"logged": False, "run_id": None, "error": "not attempted yet"}}


def write_grid(cfg: dict, root: Path) -> dict[Run, dict]:
    docs = {}
    for i, run in enumerate(runs(cfg)):
        docs[run] = make_doc(run, r1=30.0 + i)
        write_json(root / run.result_path, docs[run])
    return docs


def sqlite_uri(path: Path) -> str:
    return f"sqlite:///{path}"


def client_for(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def active_runs(uri: str) -> list:
    client = client_for(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=1000)


@pytest.fixture
def here(tmp_path, monkeypatch):
    """cwd = tmp_path (results paths are relative to the repository root), no tracking URI from outside."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("QSHIFT_FAULT", raising=False)
    return tmp_path


# -- 1. a diverged run ------------------------------------------------------------------------------

N_IMAGES, BATCH = 24, 8


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    gen = one_torch_thread()
    next(gen)
    root = tmp_path_factory.mktemp("world")
    model = load_model(f"local-dir:{make_tiny_clip_dir(root / 'm')}")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(N_IMAGES):
        paths.append(root / f"{i:03d}.png")
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(paths[-1])
    captions = [f"caption {i}" for i in range(N_IMAGES)]
    queries = Split(dataset="toy", manifest=root / "manifest.json", image_ids=np.arange(N_IMAGES), image_paths=paths,
                    sentids=np.arange(N_IMAGES), captions=captions, txt2img=np.arange(N_IMAGES))
    g = torch.Generator().manual_seed(1)
    gallery = {"image": F.normalize(torch.randn(N_IMAGES, 32, generator=g), dim=1),
               "text": F.normalize(torch.randn(N_IMAGES, 32, generator=g), dim=1),
               "image_owner": torch.arange(N_IMAGES), "text_owner": torch.arange(N_IMAGES)}
    yield model, queries, gallery
    gen.close()


def test_a_diverged_run_reports_no_numbers_is_failed_in_mlflow_and_listed_by_the_report(here, tiny_world,
                                                                                       store_template):
    model, queries, gallery = tiny_world
    body = run_stream(model, "tent", {"lr": 1e6}, "i2t", queries, gallery, batch_size=BATCH, steps=3,
                      progress=False)
    assert body["status"] == "diverged" and body["metrics"] is None
    d = body["diverged"]
    assert d["reason"] in ("non-finite parameters", "non-finite scores")
    assert 0 <= d["batch"] < N_IMAGES // BATCH and d["queries_seen"] == BATCH * (d["batch"] + 1)
    assert len(body["online"]["batch_r1"]) == d["batch"]  # the curve up to that batch
    assert all(math.isfinite(v) for v in body["online"]["batch_r1"])
    first = run_stream(model, "tent", {"lr": 1e30}, "i2t", queries, gallery, batch_size=BATCH, steps=3,
                       progress=False)  # diverges in the very first batch: an empty curve
    assert first["status"] == "diverged" and first["diverged"]["batch"] == 0
    assert first["online"]["batch_r1"] == [] and first["diverged"]["queries_seen"] == BATCH
    ok = run_stream(model, "tent", {"lr": 1e-4}, "i2t", queries, gallery, batch_size=BATCH, steps=1, progress=False)
    assert ok["status"] == "ok" and "diverged" not in ok and len(ok["online"]["batch_r1"]) == N_IMAGES // BATCH

    cfg = grid()
    shutil.copy(store_template, here / "mlflow.db")
    cfg["mlflow"]["tracking_uri"] = uri = sqlite_uri(here / "mlflow.db")
    docs = write_grid(cfg, here)
    bad = Run("builtin", cfg["model"]["name"], "i2t", "tent", "gaussian_noise", 3, 42)
    doc = {**docs[bad], **{k: v for k, v in body.items() if k not in ("hparams", "steps")}}
    write_json(here / bad.result_path, doc)
    assert load_result(here / bad.result_path)["status"] == "diverged"  # a valid results file
    write_json(here / "first.json", {**doc, **{k: v for k, v in first.items() if k not in ("hparams", "steps")}})
    first_doc = json.loads((here / "first.json").read_text())
    from qshift.results import validate

    validate(first_doc, here / bad.result_path)
    status = tracking.log_result(doc, uri, EXPERIMENT, sweep=tracking.sweep_of(cfg))
    assert status["logged"], status
    run = client_for(uri).get_run(status["run_id"])
    assert run.info.status == "FAILED" and run.data.tags["qshift.status"] == "diverged"
    assert run.data.tags["qshift.diverged_batch"] == str(d["batch"])
    assert not any(k.startswith("R_at_") for k in run.data.metrics)
    doc["mlflow"] = status
    write_json(here / bad.result_path, doc)

    summary = report.build_report(cfg, here / "reports")
    md = (here / "reports/report.md").read_text()
    failed = md.split("## Not run / failed")[1]
    assert f"`{bad.result_path}`: diverged at batch {d['batch']} ({d['reason']}" in failed
    row = next(line for line in md.splitlines() if line.startswith("| tent |"))
    assert "| diverged |" in row and "†" in row  # the cell says so; the Avg is over the other cell
    contrast = summary["directions"]["i2t"]["tent"]["cells_r1"]["contrast"]
    assert summary["directions"]["i2t"]["tent"]["cells_r1"]["gaussian_noise"] is None
    assert summary["directions"]["i2t"]["tent"]["avg_r1"] == contrast
    assert summary["directions"]["i2t"]["tent"]["avg_excludes"] == ["gaussian_noise"]
    assert summary["diverged"] == [{"run": bad.result_path, **d}]
    assert "Avg over the cells that did not diverge" in md and "diverged" in (here / "reports/report.html").read_text()
    assert summary["mlflow"]["failing"] == 0  # the FAILED run is in the store: nothing to replay


# -- 2. the sqlite store ------------------------------------------------------------------------------

def _with_runs(store_template: Path, db: Path, n: int) -> None:
    shutil.copy(store_template, db)
    cfg = grid()
    for i, run in enumerate(list(runs(cfg))[:n]):
        assert tracking.log_result(make_doc(run), sqlite_uri(db), EXPERIMENT)["logged"]


def _half_created(db: Path, how: str) -> None:
    con = sqlite3.connect(db)
    if how == "alembic_tmp":  # what a kill inside a batch migration leaves ("table _alembic_tmp_params already exists")
        con.execute("CREATE TABLE _alembic_tmp_params (key VARCHAR(250), value VARCHAR(8000), run_uuid VARCHAR(32))")
    elif how == "no_version":  # tables made, migrations not recorded
        con.execute("DROP TABLE alembic_version")
    elif how == "behind":
        con.execute("UPDATE alembic_version SET version_num = '0a8213491aaa'")
    con.commit()
    con.close()


@pytest.mark.parametrize("how", ["alembic_tmp", "no_version", "behind", "empty_file"])
def test_a_half_created_store_without_runs_is_moved_aside_and_recreated(here, store_template, how):
    db = here / "mlflow.db"
    if how == "empty_file":
        db.write_bytes(b"")  # sqlite created the file, the kill came before the first table
    else:
        shutil.copy(store_template, db)
        _half_created(db, how)
    problem, n = tracking._store_problem(db)
    assert problem and n == 0
    run = list(runs(grid()))[0]
    status = tracking.log_result(make_doc(run), sqlite_uri(db), EXPERIMENT)
    assert status["logged"], status
    aside = list(here.glob("mlflow.db.broken-*"))
    assert len(aside) == 1  # kept, never deleted
    assert tracking._store_problem(db) == (None, 1)
    assert [r.data.tags[tracking.TAG_KEY] for r in active_runs(sqlite_uri(db))] == [run_key(run.key)]


def test_a_damaged_store_with_runs_is_reported_with_the_file_and_the_fix(here, store_template):
    db = here / "mlflow.db"
    _with_runs(store_template, db, 2)
    _half_created(db, "alembic_tmp")
    before = db.read_bytes()
    status = tracking.log_result(make_doc(list(runs(grid()))[3]), sqlite_uri(db), EXPERIMENT)
    assert not status["logged"]
    err = status["error"]
    assert err.startswith("StoreError:") and str(db) in err and "_alembic_tmp_params" in err
    assert "holds 2 run(s)" in err and f"mv {db}" in err and "python stages/report.py" in err
    assert db.read_bytes() == before and not list(here.glob("mlflow.db.broken-*"))  # nothing touched


CREATE = """
import sys, time
from pathlib import Path
from qshift import tracking
import mlflow.store.tracking.sqlalchemy_store  # noqa: F401  (imports before the signal: the creation is timed)
Path(sys.argv[2]).touch()
with tracking._store_lock(sys.argv[1]):
    tracking.check_store(sys.argv[1])
Path(sys.argv[3]).touch()
"""


def _creator(root: Path, fault: str | None = None) -> tuple[subprocess.Popen, Path, Path]:
    root.mkdir(parents=True, exist_ok=True)
    db, ready, done = root / "mlflow.db", root / "ready", root / "done"
    env = {**ENV, **({"QSHIFT_FAULT": fault} if fault else {})}
    proc = subprocess.Popen([sys.executable, "-c", CREATE, sqlite_uri(db), str(ready), str(done)], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, ready, done


def test_a_kill_during_store_creation_leaves_no_store_or_a_complete_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # at the fault point (schema complete in the temp file, not yet in place), and at measured times
    fault, _, _ = _creator(tmp_path / "fault", "tracking:store_schema")
    _, err = fault.communicate(timeout=120)
    assert fault.returncode == -signal.SIGKILL, err[-2000:]
    assert not (tmp_path / "fault/mlflow.db").exists() and list((tmp_path / "fault").glob(".mlflow.db.*.tmp"))

    delays = [0.1, 0.6, 1.5]
    procs = [(_creator(tmp_path / f"t{i}"), d) for i, d in enumerate(delays)]
    for (proc, ready, done), delay in procs:
        deadline = time.time() + 120
        while not ready.exists():
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-2000:]
            time.sleep(0.01)
    t0 = time.time()
    for (proc, ready, done), delay in sorted(procs, key=lambda p: p[1]):
        time.sleep(max(0.0, t0 + delay - time.time()))
        proc.kill()
        proc.wait(timeout=30)
    for i in range(len(delays)):
        db = tmp_path / f"t{i}/mlflow.db"
        if db.exists():  # never a half-made store under the final name
            assert tracking._store_problem(db) == (None, 0)
    for root in (tmp_path / "fault", tmp_path / "t1"):  # the next job creates it (and sweeps the temp files)
        status = tracking.log_result(make_doc(list(runs(grid()))[0]), sqlite_uri(root / "mlflow.db"), EXPERIMENT)
        assert status["logged"], status
        assert not list(root.glob(".mlflow.db.*.tmp*")) and not list(root.glob("mlflow.db.broken-*"))


# -- 3. replay checks the current store ------------------------------------------------------------------

def test_replay_logs_into_a_new_store_the_runs_it_does_not_have(here, store_template):
    cfg = grid(methods=("source",), image=("contrast",))
    shutil.copy(store_template, here / "a.db")
    cfg["mlflow"]["tracking_uri"] = sqlite_uri(here / "a.db")
    docs = write_grid(cfg, here)
    for run, doc in docs.items():  # logged to store A when they ran
        doc["mlflow"] = tracking.log_result(doc, sqlite_uri(here / "a.db"), EXPERIMENT, sweep=tracking.sweep_of(cfg))
        assert doc["mlflow"]["logged"]
        write_json(here / run.result_path, doc)
    shutil.copy(store_template, here / "b.db")  # the project moves to store B
    cfg["mlflow"]["tracking_uri"] = sqlite_uri(here / "b.db")
    summary = report.build_report(cfg, here / "reports")
    assert summary["mlflow"] == {"replayed": len(docs), "failing": 0}
    keys = {r.data.tags.get(tracking.TAG_KEY) for r in active_runs(sqlite_uri(here / "b.db"))}
    assert {d["run_key"] for d in docs.values()} <= keys
    assert report.build_report(cfg, here / "reports")["mlflow"] == {"replayed": 0, "failing": 0}  # now there


# -- 4. results files validated on read -------------------------------------------------------------------

SOURCE_CELL = Run("builtin", "qshift-tiny-clip", "i2t", "source", "gaussian_noise", 3, 42)
TENT_CELL = Run("builtin", "qshift-tiny-clip", "i2t", "tent", "gaussian_noise", 3, 42)


def _string(doc):
    doc["metrics"]["R@1"] = "40.0"


def _list(doc):
    doc["metrics"]["R@5"] = [60.0]


def _missing(doc):
    del doc["metrics"]["R@10"]


def _huge(doc):
    doc["metrics"]["R@1"] = 1e9


def _negative(doc):
    doc["metrics"]["R@1"] = -5


def _nan(doc):
    doc["metrics"]["R@1"] = float("nan")


def _nan_curve(doc):
    doc["online"]["batch_r1"][1] = float("nan")


def _zero_queries(doc):
    doc["n_queries"] = 0


@pytest.mark.parametrize("edit, field", [(_string, "metrics.R@1"), (_list, "metrics.R@5"), (_missing, "metrics.R@10"),
                                         (_huge, "metrics.R@1"), (_negative, "metrics.R@1"), (_nan, "metrics.R@1"),
                                         (_nan_curve, "online.batch_r1[1]"), (_zero_queries, "n_queries"),
                                         ("tent", "key.method")])
def test_a_bad_results_file_is_a_listed_failure_never_a_number(here, store_template, edit, field):
    cfg = grid()
    shutil.copy(store_template, here / "mlflow.db")
    cfg["mlflow"]["tracking_uri"] = uri = sqlite_uri(here / "mlflow.db")
    docs = write_grid(cfg, here)
    path = here / SOURCE_CELL.result_path
    if edit == "tent":  # source's file replaced by tent's (tent ran, its file was copied over source's)
        shutil.copy(here / TENT_CELL.result_path, path)
    else:
        doc = json.loads(path.read_text())
        edit(doc)
        write_json(path, doc)
    with pytest.raises(InputError) as e:
        load_result(SOURCE_CELL.result_path)
    assert SOURCE_CELL.result_path in str(e.value) and repr(field) in str(e.value)

    summary = report.build_report(cfg, here / "reports")  # never a crash
    md = (here / "reports/report.md").read_text()
    assert f"`{SOURCE_CELL.result_path}`: results file {SOURCE_CELL.result_path}: field {field!r}" in md
    assert summary["directions"]["i2t"]["source"]["cells_r1"]["gaussian_noise"] is None
    assert summary["directions"]["i2t"]["source"]["avg_r1"] is None
    assert next(line for line in md.splitlines() if line.startswith("| source |")).split("|")[2].strip() == "—"
    assert [m["run"] for m in summary["missing"]] == [SOURCE_CELL.result_path]
    keys = [r.data.tags.get(tracking.TAG_KEY) for r in active_runs(uri) if r.data.tags.get(tracking.TAG_ROLE) == "run"]
    assert sorted(keys) == sorted(d["run_key"] for r, d in docs.items() if r != SOURCE_CELL)  # not replayed
    assert keys.count(run_key(TENT_CELL.key)) == 1


def test_schema_1_files_read_as_finished_runs(tmp_path):
    doc = make_doc(SOURCE_CELL)
    doc["schema"] = 1
    del doc["status"]
    write_json(tmp_path / SOURCE_CELL.result_path, doc)
    assert load_result(tmp_path / SOURCE_CELL.result_path)["status"] == "ok"


# -- 5. the report is written as a set -------------------------------------------------------------------

BUILD = """
import json, sys
from qshift import report
report.build_report(json.loads(open(sys.argv[1]).read()), sys.argv[2], track=False)
"""


def _report_set(out: Path) -> dict[str, bytes]:
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for page in ("report.md", "report.html", "summary.json"):
        assert page in files
    linked = set(re.findall(r"\]\((figures/[^)]+)\)", files["report.md"].decode()))
    assert linked and linked <= set(files), linked - set(files)  # every linked figure exists
    return files


def test_a_kill_while_the_report_is_built_leaves_the_previous_report_set(here):
    cfg = grid(image=("gaussian_noise", "contrast"))
    write_grid(cfg, here)
    out = here / "reports"
    report.build_report(cfg, out, track=False)
    before = _report_set(out)
    (out / "figures/old_grid_plot.png").write_bytes(b"stale")  # a figure no page links any more

    wider = grid(image=("gaussian_noise", "contrast", "defocus_blur"))
    write_grid(wider, here)
    (here / "cfg.json").write_text(json.dumps(wider))
    killed = subprocess.run([sys.executable, "-c", BUILD, "cfg.json", str(out)], cwd=here, capture_output=True,
                            text=True, timeout=300, env={**ENV, "QSHIFT_FAULT": "report:after_figures"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    after = _report_set(out)
    assert {k: v for k, v in after.items() if not k.startswith(".") and k != "figures/old_grid_plot.png"} == before
    assert list(out.glob(".report.*.tmp"))  # the killed run's staging folder, swept next time

    done = subprocess.run([sys.executable, "-c", BUILD, "cfg.json", str(out)], cwd=here, capture_output=True,
                          text=True, timeout=300, env=ENV)
    assert done.returncode == 0, done.stderr[-2000:]
    new = _report_set(out)
    assert "defocus_blur" in new["report.md"].decode() and new["report.md"] != before["report.md"]
    assert not any(k.startswith(".") for k in new) and "figures/old_grid_plot.png" not in new


# -- 6. reruns replace metric histories --------------------------------------------------------------------

def test_a_rerun_leaves_one_history_per_metric(here, store_template):
    shutil.copy(store_template, here / "mlflow.db")
    uri = sqlite_uri(here / "mlflow.db")
    first = make_doc(SOURCE_CELL)
    assert tracking.log_result(first, uri, EXPERIMENT)["logged"]
    rerun = make_doc(SOURCE_CELL, r1=45.0, finished_at=first["finished_at"] + 60)
    status = tracking.log_result(rerun, uri, EXPERIMENT)
    assert status["logged"]
    found = [r for r in active_runs(uri) if r.data.tags.get(tracking.TAG_KEY) == first["run_key"]]
    assert [r.info.run_id for r in found] == [status["run_id"]]  # one run per key
    history = client_for(uri).get_metric_history(status["run_id"], "online.batch_r1")
    assert sorted((m.step, m.value) for m in history) == list(enumerate(rerun["online"]["batch_r1"]))
    assert client_for(uri).get_run(status["run_id"]).data.metrics["R_at_1"] == 45.0


# -- 7. HTTP timeouts ---------------------------------------------------------------------------------------

def test_http_defaults_are_set_unless_the_user_set_them(monkeypatch):
    for k in tracking.HTTP_DEFAULTS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "5")  # the user's value wins
    tracking._client("http://127.0.0.1:9")  # every MLflow call goes through here (nothing is contacted yet)
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "20" and os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "5"
    assert os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "1"
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT

    assert (MLFLOW_HTTP_REQUEST_TIMEOUT.get(), MLFLOW_HTTP_REQUEST_MAX_RETRIES.get()) == (20, 5)
    worst = int(tracking.HTTP_DEFAULTS["MLFLOW_HTTP_REQUEST_TIMEOUT"]) * (
        1 + int(tracking.HTTP_DEFAULTS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])) + 2 ** 2 * 2
    assert worst <= 120  # a frozen server: at most ~2 minutes per job


def test_a_frozen_tracking_server_costs_bounded_time(here, monkeypatch):
    """A server that accepts connections and never answers: the timeout tracking applies ends the wait."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held = []
    stop = threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])  # accepted, never answered
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    for k in tracking.HTTP_DEFAULTS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(tracking, "HTTP_DEFAULTS", {**tracking.HTTP_DEFAULTS, "MLFLOW_HTTP_REQUEST_TIMEOUT": "1",
                                                    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"})
    try:
        t0 = time.perf_counter()
        status = tracking.log_result(make_doc(SOURCE_CELL), f"http://127.0.0.1:{srv.getsockname()[1]}", EXPERIMENT)
        took = time.perf_counter() - t0
    finally:
        stop.set()
        t.join(timeout=5)
        for c in held:
            c.close()
        srv.close()
    assert not status["logged"] and held and took < 20, (status, took)
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "1"
