"""What a researcher sees in the MLflow UI: a training experiment, readable run names, real job
times, and one parent chart per direction comparing methods (the runs table is checked in a real
headless Chromium against a real ``mlflow server``)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from qshift import tracking
from qshift.config import Run, load_params
from qshift.results import run_key

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
EXPERIMENT = "qshift-ui-test"


def doc(method, direction="i2t", corruption="gaussian_noise", severity=3, r1=50.0, seconds=7.9,
        finished_at=1_700_000_000.0):
    key = {"benchmark": "builtin", "dataset": "builtin", "model": "qshift-tiny-clip", "direction": direction,
           "method": method, "corruption": corruption, "severity": severity, "seed": 42}
    return {"schema": 1, "key": key, "run_key": run_key(key), "metrics": {"R@1": r1, "R@5": r1 + 20, "R@10": r1 + 30},
            "online": {"batch_size": [64, 64], "batch_r1": [r1, r1], "cum_r1": [r1, r1], "stats": {}},
            "counters": {}, "hparams": {}, "timing": {"seconds": seconds}, "run": {"batch_size": 64},
            "env": {}, "finished_at": finished_at, "mlflow": {"logged": True}}


def cfg_for(tmp_path: Path) -> dict:
    cfg = load_params(REPO / "params.yaml")
    cfg["mlflow"].update(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment=EXPERIMENT)
    cfg["adapt"].update(methods=["source", "tcr"], directions=["i2t"])
    return cfg


@pytest.fixture
def logged(tmp_path, store_template, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copy(store_template, tmp_path / "mlflow.db")
    cfg = cfg_for(tmp_path)
    uri, sweep = tracking.tracking_uri(cfg), tracking.sweep_of(cfg)
    found = {}
    for method, corruption, severity, r1 in [("source", "gaussian_noise", 3, 40.0), ("tcr", "gaussian_noise", 3, 50.0),
                                             ("source", "defocus_blur", 3, 30.0), ("tcr", "defocus_blur", 3, 44.0),
                                             ("tcr", "clean", 0, 70.0)]:
        d = doc(method, corruption=corruption, severity=severity, r1=r1)
        assert tracking.log_result(d, uri, EXPERIMENT, sweep=sweep)["logged"]
        found[Run("builtin", "qshift-tiny-clip", "i2t", method, corruption, severity, 42)] = d
    assert tracking.sync_sweep(cfg, found)["error"] is None
    return tmp_path, uri


def test_names_times_kind_and_parent_layout(logged):
    from mlflow.tracking import MlflowClient

    _, uri = logged
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([exp.experiment_id])
    by_key = {r.data.tags.get(tracking.TAG_KEY): r for r in runs}
    r = by_key["builtin/qshift-tiny-clip/i2t/tcr/gaussian_noise-s3/seed42"]
    assert r.info.run_name == "tcr · i2t · gaussian_noise s3 · seed 42"
    assert by_key["builtin/qshift-tiny-clip/i2t/tcr/clean-s0/seed42"].info.run_name == "tcr · i2t · clean · seed 42"
    # the job's real times: it finished at finished_at after 7.9 s
    assert r.info.end_time == 1_700_000_000_000 and r.info.start_time == 1_700_000_000_000 - 7900
    (parent,) = [r for r in runs if r.data.tags.get(tracking.TAG_ROLE) == "sweep"]
    assert parent.info.run_name.startswith("sweep · qshift-tiny-clip · ")
    assert parent.data.tags["qshift.step_methods"] == "0=source 1=tcr"
    hist = {m.step: m.value for m in client.get_metric_history(parent.info.run_id, "avg_R_at_1.i2t")}
    assert hist == {0: 35.0, 1: 47.0}  # one chart: every method of the direction along its steps
    assert not [k for k in parent.data.metrics if k.count(".") > 1]  # no per-(direction, method) metrics
    # a rerun an hour later replaces the run (one metric history per key) with the rerun's times
    again = doc("tcr", r1=50.0, finished_at=1_700_003_600.0)
    new_id = tracking.log_result(again, uri, EXPERIMENT)["run_id"]
    assert new_id != r.info.run_id
    info = client.get_run(new_id).info
    assert info.end_time == 1_700_003_600_000 and info.end_time - info.start_time == 7900


def test_an_old_experiment_gets_the_kind_tag(tmp_path, store_template, monkeypatch):
    from mlflow.tracking import MlflowClient

    shutil.copy(store_template, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(EXPERIMENT)  # as made before the tag existed
    assert tracking.log_result(doc("tcr"), uri, EXPERIMENT)["logged"]
    assert client.get_experiment(exp_id).tags["mlflow.experimentKind"] == "custom_model_development"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (Debian: apt-get install chromium)")
def test_runs_table_shows_the_distinguishing_names_in_chromium(tmp_path, store_template, monkeypatch):
    """Runs logged without a sweep: top-level rows (in a sweep they sit, collapsed, under its parent row)."""
    from mlflow.tracking import MlflowClient

    tmp = tmp_path
    shutil.copy(store_template, tmp / "mlflow.db")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    for method, corruption, severity in [("tcr", "gaussian_noise", 3), ("source", "defocus_blur", 3), ("tcr", "clean", 0)]:
        assert tracking.log_result(doc(method, corruption=corruption, severity=severity), uri, EXPERIMENT)["logged"]
    exp_id = MlflowClient(tracking_uri=uri).get_experiment_by_name(EXPERIMENT).experiment_id
    port = _free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    server = subprocess.Popen([str(mlflow_bin), "server", "--backend-store-uri", uri, "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1"], cwd=tmp, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2).close()
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    pytest.fail("mlflow server did not start")
                time.sleep(1)
        url = tracking.ui_url(base, exp_id)
        dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp / 'chr'}",
                              "--virtual-time-budget=20000", "--window-size=1600,900", "--dump-dom", url],
                             capture_output=True, text=True, timeout=180).stdout
        for name in ("tcr · i2t · gaussian_noise s3", "source · i2t · defocus_blur s3", "tcr · i2t · clean"):
            assert name in dom, name
        assert "builtin/qshift-tiny-clip" not in dom  # the constant prefix no longer leads the names
    finally:
        server.terminate()
        server.wait(timeout=30)
