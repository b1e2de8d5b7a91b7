"""MLflow tracking: deterministic run keys, sweep parents, parallel writers, server mode, replay.

Results documents are built by hand (no pipeline run); every store lives in a temporary
directory. The tracking-server test starts a real ``mlflow server`` on a free port.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from qshift import tracking
from qshift.config import Run, load_params
from qshift.io import write_json
from qshift.results import run_key

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
EXPERIMENT = "qshift-test"


def make_doc(method: str = "tcr", direction: str = "i2t", corruption: str = "gaussian_noise", severity: int = 3,
             r1: float = 50.0, n_batches: int = 3, lr: float = 3e-4) -> dict:
    key = {"benchmark": "builtin", "dataset": "builtin", "model": "qshift-tiny-clip", "direction": direction,
           "method": method, "corruption": corruption, "severity": severity}
    return {"schema": 1, "key": key, "run_key": run_key(key),
            "metrics": {"R@1": r1, "R@5": r1 + 20, "R@10": r1 + 30},
            "n_queries": 64 * n_batches, "n_gallery": 320,
            "online": {"batch_size": [64] * n_batches, "batch_r1": [r1 + i for i in range(n_batches)],
                       "cum_r1": [r1] * n_batches,
                       "stats": {"entropy": [1.0] * n_batches, "n_selected": [10] * n_batches}},
            "counters": {"skipped_steps": 0}, "hparams": {"lr": lr, "tau": 0.02},
            "timing": {"seconds": 1.0, "queries_per_s": 100.0},
            "run": {"batch_size": 64, "steps": 3, "seed": 42},
            "env": {"git_commit": "abc123", "params_hash": "feedbeef", "host": "node1", "device": "cpu",
                    "slurm_job_id": "4242", "torch": "2"},
            "finished_at": 1700000000.0,
            "mlflow": {"logged": False, "run_id": None, "error": "not attempted yet"}}


@pytest.fixture
def store(tmp_path, store_template) -> Path:
    """A copy of the empty store at ``tmp_path/mlflow.db`` (what ``params(tmp_path)`` points at)."""
    shutil.copy(store_template, tmp_path / "mlflow.db")
    return tmp_path / "mlflow.db"


def params(tmp_path: Path, **grid) -> dict:
    cfg = load_params(REPO / "params.yaml")
    cfg["mlflow"]["tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg["mlflow"]["experiment"] = EXPERIMENT
    for k, v in grid.items():
        cfg["adapt"][k] = v
    return cfg


def runs_of(uri: str, experiment: str = EXPERIMENT) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=1000)


def children_and_parents(uri: str) -> tuple[dict, list]:
    all_runs = runs_of(uri)
    kids = {r.data.tags[tracking.TAG_KEY]: r for r in all_runs if tracking.TAG_KEY in r.data.tags}
    parents = [r for r in all_runs if r.data.tags.get(tracking.TAG_ROLE) == "sweep"]
    return kids, parents


@pytest.fixture
def no_env_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- keys, parents, artifacts --------------------------------------------------------------------

def test_rerun_updates_and_every_run_is_a_child_of_one_sweep_parent(tmp_path, monkeypatch, no_env_uri, store):
    monkeypatch.chdir(tmp_path)  # artifacts of a sqlite store go to ./mlruns
    cfg = params(tmp_path)
    uri, sweep = tracking.tracking_uri(cfg), tracking.sweep_of(cfg)
    doc = make_doc()
    results = tmp_path / "r.json"
    write_json(results, doc)
    first = tracking.log_result(doc, uri, EXPERIMENT, artifact=results, sweep=sweep)
    assert first["logged"], first
    again = tracking.log_result(doc, uri, EXPERIMENT, artifact=results, sweep=sweep)
    assert again["run_id"] == first["run_id"]
    other = tracking.log_result(make_doc(method="source"), uri, EXPERIMENT, sweep=sweep)
    assert other["logged"] and other["run_id"] != first["run_id"]

    kids, parents = children_and_parents(uri)
    assert len(parents) == 1 and set(kids) == {doc["run_key"], make_doc(method="source")["run_key"]}
    parent = parents[0]
    assert parent.data.tags[tracking.TAG_SWEEP] == sweep["key"] == f"builtin/qshift-tiny-clip/sweep-{sweep['grid_hash']}"
    assert parent.data.params["sweep.methods"] == ",".join(cfg["adapt"]["methods"])
    run = kids[doc["run_key"]]
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert {"R_at_1", "R_at_5", "R_at_10"} <= set(run.data.metrics)
    assert run.data.params["hp.lr"] == "0.0003" and run.data.params["key.method"] == "tcr"
    tags = run.data.tags
    assert (tags["qshift.git_commit"], tags["qshift.params_hash"], tags["qshift.slurm_job_id"],
            tags["qshift.host"], tags["qshift.device"]) == ("abc123", "feedbeef", "4242", "node1", "cpu")

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    assert [m.value for m in client.get_metric_history(first["run_id"], "online.batch_r1")] == [50.0, 51.0, 52.0]
    assert len(client.get_metric_history(first["run_id"], "online.entropy")) == 3  # rerun added no points
    assert {a.path for a in client.list_artifacts(first["run_id"])} == {"r.json", tracking.CURVE_ARTIFACT}
    curve = json.loads(Path(client.download_artifacts(first["run_id"], tracking.CURVE_ARTIFACT,
                                                      str(tmp_path))).read_text())
    assert curve["batch_r1"] == doc["online"]["batch_r1"]

    # other hyperparameters: the run is replaced (params are immutable), never duplicated
    changed = tracking.log_result(make_doc(lr=1e-3), uri, EXPERIMENT, sweep=sweep)
    kids, parents = children_and_parents(uri)
    assert changed["run_id"] != first["run_id"] and len(kids) == 2 and len(parents) == 1
    assert kids[doc["run_key"]].data.params["hp.lr"] == "0.001"


def test_sweep_key_follows_the_grid_not_the_hyperparameters(tmp_path):
    base = tracking.sweep_of(params(tmp_path))
    cfg = params(tmp_path)
    cfg["methods"]["tcr"]["lr"] = 1.0
    cfg["seed"] = 7
    assert tracking.sweep_of(cfg) == base
    cfg["corrupt"]["image"]["severities"] = [3, 5]
    assert tracking.sweep_of(cfg)["grid_hash"] != base["grid_hash"]
    assert tracking.sweep_of(params(tmp_path, methods=["source"]))["key"] != base["key"]
    assert tracking.sweep_of(params(tmp_path, clean_methods=["source", "tcr"]))["key"] != base["key"]


def test_report_bookkeeping_moves_runs_to_the_current_sweep_and_merges_duplicate_parents(tmp_path, monkeypatch,
                                                                                        no_env_uri, store):
    monkeypatch.chdir(tmp_path)
    old = params(tmp_path, methods=["source"])
    cfg = params(tmp_path)
    uri = tracking.tracking_uri(cfg)
    doc = make_doc(method="source")
    assert tracking.log_result({**doc}, uri, EXPERIMENT, sweep=tracking.sweep_of(old))["logged"]
    # a second parent for the new sweep, as a creation race on a tracking server could leave
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    sweep = tracking.sweep_of(cfg)
    first = tracking.Runs(client, EXPERIMENT).parent(sweep)
    time.sleep(0.01)
    extra = client.create_run(exp_id, run_name=sweep["key"], tags={tracking.TAG_SWEEP: sweep["key"],
                                                                   tracking.TAG_ROLE: "sweep"}).info.run_id
    assert tracking.Runs(client, EXPERIMENT).parent(sweep) == first != extra  # every writer agrees on the oldest

    run = Run("builtin", "qshift-tiny-clip", "i2t", "source", "gaussian_noise", 3, 42)
    doc["mlflow"] = {"logged": True}
    out = tracking.sync_sweep(cfg, {run: doc})
    assert out["replayed"] == [] and out["failing"] == [] and out["error"] is None
    kids, parents = children_and_parents(uri)
    assert kids[doc["run_key"]].data.tags["mlflow.parentRunId"] == first
    assert {p.info.run_id for p in parents} == {first, tracking.Runs(client, EXPERIMENT).parent(tracking.sweep_of(old))}
    assert client.get_run(extra).info.lifecycle_stage == "deleted"  # the duplicate parent is gone
    assert client.get_run(first).data.metrics["avg_R_at_1.i2t"] == 50.0  # step = index of source


def test_a_sweep_with_more_than_a_hundred_runs_keeps_its_one_parent(tmp_path, monkeypatch, no_env_uri, store):
    """The parent is looked up by its own tags, not among the first (newest) runs that carry its sweep key."""
    monkeypatch.chdir(tmp_path)
    cfg = params(tmp_path)
    uri, sweep = tracking.tracking_uri(cfg), tracking.sweep_of(cfg)
    assert tracking.log_result(make_doc(corruption="c0"), uri, EXPERIMENT, sweep=sweep)["logged"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    for i in range(120):  # children newer than the parent: searches list the newest first
        client.create_run(exp_id, tags={tracking.TAG_KEY: f"k{i}", tracking.TAG_ROLE: "run",
                                        tracking.TAG_SWEEP: sweep["key"]})
    assert tracking.log_result(make_doc(corruption="c1"), uri, EXPERIMENT, sweep=sweep)["logged"]
    kids, parents = children_and_parents(uri)
    assert len(parents) == 1 and kids[make_doc(corruption="c1")["run_key"]].data.tags["mlflow.parentRunId"] == \
        parents[0].info.run_id


def test_observations_go_to_the_run_of_their_key_and_skip_keys_not_in_the_store(tmp_path, monkeypatch, no_env_uri,
                                                                                 store):
    monkeypatch.chdir(tmp_path)
    cfg = params(tmp_path)
    uri, doc = tracking.tracking_uri(cfg), make_doc()
    run_id = tracking.log_result(doc, uri, EXPERIMENT, sweep=tracking.sweep_of(cfg))["run_id"]
    out = tracking.log_observations(uri, EXPERIMENT, {doc["run_key"]: {"obs.gap": 0.5, "obs.none": None},
                                                      "builtin/not/logged": {"obs.gap": 1.0}})
    assert out == {"logged": 1, "skipped": ["builtin/not/logged"], "error": None}
    from mlflow.tracking import MlflowClient

    metrics = MlflowClient(tracking_uri=uri).get_run(run_id).data.metrics
    assert metrics["obs.gap"] == 0.5 and "obs.none" not in metrics
    assert tracking.log_observations(uri, "no-such-experiment", {doc["run_key"]: {"obs.gap": 1.0}})["skipped"] == [
        doc["run_key"]]


# -- many writers at once on a brand-new store ----------------------------------------------------

WORKER = """
import json, sys, time
from pathlib import Path
from qshift import tracking
# import before the start signal: the writes, not the imports, race
import mlflow.tracking, mlflow.store.tracking.sqlalchemy_store  # noqa: E401
doc, uri, sweep, root = json.loads(Path(sys.argv[1]).read_text()), sys.argv[2], json.loads(sys.argv[3]), Path(sys.argv[4])
(root / f"ready-{doc['key']['corruption']}").touch()
while not (root / "go").exists():
    time.sleep(0.005)
status = tracking.log_result(doc, uri, "qshift-test", sweep=sweep)
print(json.dumps(status))
"""


def test_parallel_writer_processes_on_a_brand_new_sqlite_store_lose_nothing(tmp_path, no_env_uri):
    n = 8
    db = tmp_path / "store" / "mlflow.db"
    uri = f"sqlite:///{db}"
    assert not db.exists() and not db.parent.exists()
    sweep = tracking.sweep_of(params(tmp_path))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    env.pop("MLFLOW_TRACKING_URI", None)
    procs, docs = [], []
    for i in range(n):
        doc = make_doc(corruption=f"c{i}", r1=10.0 + i)
        docs.append(doc)
        f = tmp_path / f"doc{i}.json"
        f.write_text(json.dumps(doc))
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, str(f), uri, json.dumps(sweep), str(tmp_path)],
                                      cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    deadline = time.time() + 300  # 8 interpreters importing MLflow on a busy machine
    while len(list(tmp_path.glob("ready-*"))) < n:
        if time.time() > deadline or any(p.poll() is not None for p in procs):
            for p in procs:  # never wait on a writer that waits for "go"
                p.kill()
            pytest.fail(f"writers not ready: {[p.communicate()[1][-2000:] for p in procs]}")
        time.sleep(0.02)
    (tmp_path / "go").touch()
    statuses = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
        statuses.append(json.loads(out.strip().splitlines()[-1]))
    assert all(s["logged"] for s in statuses), [s["error"] for s in statuses if not s["logged"]]

    kids, parents = children_and_parents(uri)
    assert len(parents) == 1, "parallel writers created more than one sweep parent"
    assert set(kids) == {d["run_key"] for d in docs}
    assert len(runs_of(uri)) == n + 1  # no duplicates
    for d in docs:
        run = kids[d["run_key"]]
        assert run.data.metrics["R_at_1"] == d["metrics"]["R@1"]
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id


# -- the store is unreachable, then replayed ---------------------------------------------------------

def test_unreachable_store_keeps_the_results_file_and_a_replay_logs_it_untouched(tmp_path, monkeypatch,
                                                                              no_env_uri, store):
    monkeypatch.chdir(tmp_path)  # result paths are relative to the repository root
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    cfg = params(tmp_path)
    run = Run("builtin", "qshift-tiny-clip", "i2t", "tcr", "gaussian_noise", 3, 42)
    doc = make_doc()
    path = tmp_path / run.result_path
    write_json(path, doc)  # as the adapt stage does: the numbers first, then tracking
    t0 = time.perf_counter()
    doc["mlflow"] = tracking.log_result(doc, f"http://127.0.0.1:{closed_port()}", EXPERIMENT, artifact=path,
                                        sweep=tracking.sweep_of(cfg))
    assert time.perf_counter() - t0 < 30
    write_json(path, doc)
    saved = json.loads(path.read_text())
    assert saved["mlflow"]["logged"] is False and saved["mlflow"]["error"]
    assert saved["metrics"] == doc["metrics"] and saved["online"] == doc["online"]

    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    out = tracking.sync_sweep(cfg, {run: saved})
    assert [(r, bool(rid)) for r, rid in out["replayed"]] == [(run, True)] and out["failing"] == []
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime  # never modified
    kids, parents = children_and_parents(tracking.tracking_uri(cfg))
    assert doc["run_key"] in kids and len(parents) == 1
    assert kids[doc["run_key"]].data.metrics["R_at_1"] == 50.0
    # replaying again (the results file still says logged: false) does not duplicate
    tracking.sync_sweep(cfg, {run: saved})
    assert len(runs_of(tracking.tracking_uri(cfg))) == 2


# -- a tracking server -------------------------------------------------------------------------------

@pytest.fixture
def mlflow_server(tmp_path_factory, store_template):
    """``mlflow server`` on a free port with an empty sqlite store; always stopped afterwards."""
    root = tmp_path_factory.mktemp("mlflow-server")
    shutil.copy(store_template, root / "server.db")
    port = closed_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no background job runners
    log = open(root / "server.log", "w")
    proc = subprocess.Popen([str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
                             "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        import urllib.request

        deadline = time.time() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {proc.returncode}:\n{(root / 'server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"mlflow server did not answer in 60 s:\n{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        import signal

        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
        log.close()


def test_log_result_against_a_tracking_server(mlflow_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.chdir(tmp_path)
    cfg = params(tmp_path)
    uri = tracking.tracking_uri(cfg)
    assert uri == mlflow_server
    sweep = tracking.sweep_of(cfg)
    results = tmp_path / "r.json"
    doc = make_doc()
    write_json(results, doc)
    first = tracking.log_result(doc, uri, EXPERIMENT, artifact=results, sweep=sweep)
    assert first["logged"], first
    assert tracking.log_result(doc, uri, EXPERIMENT, artifact=results, sweep=sweep)["run_id"] == first["run_id"]
    assert tracking.log_result(make_doc(method="source"), uri, EXPERIMENT, sweep=sweep)["logged"]
    kids, parents = children_and_parents(uri)
    assert len(kids) == 2 and len(parents) == 1
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in kids.values())
    from mlflow.tracking import MlflowClient

    arts = {a.path for a in MlflowClient(tracking_uri=uri).list_artifacts(first["run_id"])}
    assert arts == {"r.json", tracking.CURVE_ARTIFACT}
