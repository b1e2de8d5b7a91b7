"""MLflow tracking: one run per (model, dataset, direction, method, corruption, severity).

Runs are keyed deterministically (tag ``qshift.run_key``): logging the same key again
updates that run instead of creating a duplicate. The results file is always written
first; tracking is best-effort on top of it — if the store is unreachable the job still
succeeds, the results file records ``mlflow.logged: false`` with the error, and
``log_result`` can replay it later (the report stage does).

Store: ``mlflow.tracking_uri`` in params.yaml (sqlite by default), overridden by the
``MLFLOW_TRACKING_URI`` environment variable (e.g. a tracking server on a cluster). A
brand-new sqlite store is created under a file lock, because several processes creating
its schema at once crash.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
from pathlib import Path

TAG_KEY = "qshift.run_key"
log = logging.getLogger(__name__)


def tracking_uri(cfg: dict) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg["mlflow"]["tracking_uri"]


@contextlib.contextmanager
def _store_lock(uri: str):
    """Serialise first contact with a sqlite store (schema creation is not concurrency-safe)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{db}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _client(uri: str):
    for name in ("mlflow", "alembic", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _experiment_id(client, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # noqa: BLE001 - created concurrently by another writer
        return client.get_experiment_by_name(name).experiment_id


def mlflow_metric_name(name: str) -> str:
    """MLflow metric names take no '@': R@1 is logged as R_at_1."""
    return name.replace("@", "_at_")


def _flatten(prefix: str, d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(f"{prefix}{k}.", v))
        else:
            out[f"{prefix}{k}"] = v
    return out


def log_result(result: dict, uri: str, experiment: str, artifact: str | Path | None = None) -> dict:
    """Log one results document; returns the ``mlflow`` status block for the results file."""
    try:
        from mlflow.entities import Metric, Param, RunTag

        with _store_lock(uri):
            client = _client(uri)
            exp_id = _experiment_id(client, experiment)
        key = result["run_key"]
        params = {**{f"key.{k}": v for k, v in result["key"].items()},
                  **_flatten("hp.", result.get("hparams", {})),
                  **_flatten("run.", result.get("run", {}))}
        params = {k: str(v)[:6000] for k, v in params.items()}
        found = client.search_runs([exp_id], filter_string=f"tags.`{TAG_KEY}` = '{key}'", max_results=1)
        if found and found[0].data.params != params:
            # MLflow params are immutable: a rerun with other hyperparameters replaces the run
            client.delete_run(found[0].info.run_id)
            found = []
        run_id = found[0].info.run_id if found else client.create_run(exp_id, run_name=key).info.run_id
        tags = {TAG_KEY: key, **{f"qshift.{k}": v for k, v in result.get("env", {}).items() if v is not None}}
        metrics = {mlflow_metric_name(k): v for k, v in result["metrics"].items()}
        metrics.update({f"counter.{k}": v for k, v in result.get("counters", {}).items()})
        metrics.update({k: v for k, v in result.get("timing", {}).items() if v is not None})
        ts = int(result.get("finished_at", 0) * 1000)
        entries = [Metric(k, float(v), ts, 0) for k, v in metrics.items()]
        online = result["online"]
        series = {"online.batch_r1": online["batch_r1"], "online.cum_r1": online["cum_r1"],
                  **{f"online.{k}": v for k, v in online.get("stats", {}).items()}}
        for name, values in series.items():
            entries += [Metric(name, float(v), ts, i) for i, v in enumerate(values)
                        if v is not None and math.isfinite(float(v))]
        # MLflow limits a batch to 1000 metrics and 100 params
        plist = [Param(k, v) for k, v in params.items()]
        if not found:
            for i in range(0, len(plist), 100):
                client.log_batch(run_id, params=plist[i:i + 100])
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        for i in range(0, len(entries), 1000):
            client.log_batch(run_id, metrics=entries[i:i + 1000])
        if artifact is not None:
            client.log_artifact(run_id, str(artifact))
        client.set_terminated(run_id)
        return {"logged": True, "run_id": run_id, "experiment": experiment, "uri": uri, "error": None}
    except Exception as e:  # noqa: BLE001 - tracking must never lose a finished result
        log.warning("MLflow logging failed for %s (%s); the results file keeps the numbers and can be "
                    "replayed later", result.get("run_key"), e)
        return {"logged": False, "run_id": None, "experiment": experiment, "uri": uri,
                "error": f"{type(e).__name__}: {e}"}
