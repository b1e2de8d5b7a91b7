"""MLflow tracking: one run per (model, dataset, direction, method, corruption, severity).

Identity (:class:`Runs`, the one lookup that logging, replay, the report's bookkeeping and the
observe stage use): a results key's run is the run tagged ``qshift.run_key`` = key; logging a key
again updates it, a *rerun* (another ``finished_at``, tag ``qshift.finished_at``) or other params
replace it, so every metric keeps one history. A diverged run (``status: diverged``) is logged
without R@K and marked FAILED (tag ``qshift.status``). The results file is always written first;
tracking is best-effort on top of it: if the store is unreachable the job still succeeds, the
results file records ``mlflow.logged: false`` and the report stage replays it (:func:`sync_sweep`).

Sweeps: every run is a child (MLflow's own parent tag ``mlflow.parentRunId``, set as
``create_run`` makes it, as ``mlflow.start_run(parent_run_id=...)`` does) of a *sweep* parent
whose identity is its key (tag ``qshift.sweep_key``: benchmark, model, hash of the grid-defining
params). MLflow picks run ids itself and has no create-if-absent, so when several runs carry one
identity the oldest, by (start time, run id), is the one for every writer and the others are
deleted. A sqlite store is only accessed under its lock, so that never happens there; on a
tracking server (no lock) two writers can make a parent at once, and the report stage points
every run of the grid at the one kept (and moves runs of an earlier grid to the current sweep).

Store: ``mlflow.tracking_uri`` in params.yaml (sqlite by default), overridden by the
``MLFLOW_TRACKING_URI`` environment variable. Every access goes through :func:`_session`: for
sqlite under one file lock (``<db>.lock``; concurrent schema creation crashes, concurrent writers
hit "database is locked", also retried). A new sqlite store is created atomically (built in
``.<db>.<pid>.tmp`` and linked into place); a damaged store (interrupted migration, missing or
older schema version, unopenable) is moved aside (``<db>.broken-<time>``, never deleted) and
recreated when it holds no run, otherwise reported with the command that fixes it (:func:`check_store`).

HTTP (a tracking server): unless the user sets them, ``MLFLOW_HTTP_REQUEST_TIMEOUT`` (20 s),
``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` (2) and a small backoff are set before the first request
(:data:`HTTP_DEFAULTS`), so a frozen server costs a job about a minute, not MLflow's 15+.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path

TAG_KEY = "qshift.run_key"
TAG_SWEEP = "qshift.sweep_key"
TAG_ROLE = "qshift.role"
TAG_PARENT = "mlflow.parentRunId"  # mlflow.utils.mlflow_tags.MLFLOW_PARENT_RUN_ID
TAG_FINISHED = "qshift.finished_at"
TAG_STATUS = "qshift.status"
CURVE_ARTIFACT = "online_curve.json"
# per request at most (1 + retries) x timeout + backoff (~65 s); MLflow's own: 120 s x 8 + ...
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "20", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5"}

# MLflow 3's UI: an experiment of kind "custom_model_development" is a classic training
# experiment (runs table, charts), not a GenAI one (Overview / Traces). MLflow 3.17's UI also
# has a GenAI / Model training switch of its own: open ``#/experiments/<id>/runs?workflowType=
# machine_learning`` (``ui_url``) or click "Model training" once (the browser remembers it).
UI_TAGS = {"mlflow.experimentKind": "custom_model_development"}
log = logging.getLogger(__name__)


class StoreError(Exception):
    """The tracking store is damaged; the message names the file and the command that fixes it."""


def http_defaults(environ=os.environ) -> dict:
    """Set :data:`HTTP_DEFAULTS` where the user set nothing; returns what was set."""
    added = {k: v for k, v in HTTP_DEFAULTS.items() if not environ.get(k)}
    environ.update(added)
    return added


def tracking_uri(cfg: dict) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg["mlflow"]["tracking_uri"]


# -- sweeps ------------------------------------------------------------------------------------

def sweep_of(cfg: dict) -> dict:
    """The sweep a run belongs to: (benchmark, model, hash of the grid-defining params)."""
    from .io import stable_hash

    img, txt = cfg["corrupt"]["image"], cfg["corrupt"]["text"]
    grid = {"methods": list(cfg["adapt"]["methods"]), "clean_methods": list(cfg["adapt"].get("clean_methods", [])),
            "directions": list(cfg["adapt"]["directions"]),
            "image_corruptions": list(img["names"]), "image_severities": [int(s) for s in img["severities"]],
            "text_corruptions": list(txt["names"]), "text_levels": [int(s) for s in txt["levels"]]}
    st = cfg.get("streams") or {}
    if st.get("methods") and (st.get("image") or st.get("text")):  # absent otherwise: older sweep keys hold
        grid["streams"] = {"methods": list(st["methods"]), "image": dict(st.get("image") or {}),
                           "text": dict(st.get("text") or {})}
    from .config import run_seeds

    grid["seeds"] = run_seeds(cfg)  # the adaptation seeds are a grid dimension (the project's seed is not)
    h = stable_hash(grid)
    return {"benchmark": cfg["benchmark"], "model": cfg["model"]["name"], "grid": grid, "grid_hash": h,
            "key": f"{cfg['benchmark']}/{cfg['model']['name']}/sweep-{h}"}


# -- the store ---------------------------------------------------------------------------------

def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def _store_lock(uri: str):
    """The one lock: serialises every access to a sqlite store (``<db>.lock``; schema creation and
    concurrent writes are not safe there). Other stores: nothing to lock. Not reentrant."""
    db = _sqlite_path(uri)
    if db is None:
        yield
        return
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
    http_defaults()
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


@contextlib.contextmanager
def _session(uri: str):
    """A client on a usable store (:func:`check_store`), under the store lock for the whole block."""
    import mlflow.tracking  # noqa: F401  (imported before the lock: writers hold it only to write)

    if _sqlite_path(uri) is not None:
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    with _store_lock(uri):
        check_store(uri)
        yield _client(uri)


def _with_retries(fn, attempts: int = 4):
    """Retry a transient sqlite 'database is locked' (another reader, e.g. the MLflow UI)."""
    for i in range(attempts):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001
            if i == attempts - 1 or "locked" not in str(e).lower():
                raise
            time.sleep(0.5 * 2 ** i)


@functools.lru_cache(maxsize=1)
def _schema_head() -> str | None:
    try:
        from mlflow.store.db.utils import _get_latest_schema_revision

        return _get_latest_schema_revision()
    except Exception:  # noqa: BLE001 - a private helper of MLflow: without it only presence is checked
        return None


def _store_problem(db: Path) -> tuple[str | None, int | None]:
    """(what is wrong with the sqlite store at ``db`` or None, how many runs it holds: None if unknown)."""
    import sqlite3

    try:
        con = sqlite3.connect(f"file:{db}?mode=rw", uri=True, timeout=30)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            n_runs = con.execute("SELECT count(*) FROM runs").fetchone()[0] if "runs" in tables else 0
            versions = ([r[0] for r in con.execute("SELECT version_num FROM alembic_version")]
                        if "alembic_version" in tables else None)
        finally:
            con.close()
    except sqlite3.Error as e:
        return f"it cannot be read as an sqlite database ({type(e).__name__}: {e})", None
    left = sorted(t for t in tables if t.startswith("_alembic_tmp_"))
    if left:
        return f"a schema migration was interrupted (table {left[0]} left behind)", n_runs
    if not tables:
        return "it has no tables (its creation was interrupted)", 0
    if not versions:
        return "its schema version (table alembic_version) is missing: its creation was interrupted", n_runs
    head = _schema_head()
    if head is not None and versions != [head]:
        return (f"its schema is at version {', '.join(versions)}, not this MLflow's {head} (an interrupted "
                f"creation, or a store of an older MLflow: `mlflow db upgrade sqlite:///{db}`)"), n_runs
    return None, n_runs


def _create_store(db: Path) -> None:
    """Build a new store's schema in a temp file beside ``db`` and link it into place (call under the lock)."""
    from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    for stale in db.parent.glob(f".{db.name}.*.tmp*"):  # creators killed before us (we hold the lock)
        stale.unlink(missing_ok=True)
    tmp = db.with_name(f".{db.name}.{os.getpid()}.tmp")
    tmp_uri = f"sqlite:///{tmp}"
    try:
        store = SqlAlchemyStore(tmp_uri, DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH)
        store.engine.dispose()
        SqlAlchemyStore._engine_map.pop(tmp_uri, None)
        from . import faults

        faults.point("tracking:store_schema")
        try:
            os.link(tmp, db)  # never replaces a store someone else made meanwhile
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links: we hold the lock
            if not db.exists():
                os.replace(tmp, db)
    finally:
        for leftover in (tmp, Path(f"{tmp}-journal")):
            leftover.unlink(missing_ok=True)


def check_store(uri: str) -> None:
    """Make a sqlite store usable before writing to it (call under the store lock).

    Missing: created atomically. Damaged and holding no run: moved aside to
    ``<db>.broken-<time>`` (never deleted) and created again. Damaged with runs: raises
    :class:`StoreError` naming the file, the problem and the command that fixes it. Other
    stores (a tracking server, a database server) are left to MLflow.
    """
    db = _sqlite_path(uri)
    if db is None:
        return
    if not db.exists():
        _create_store(db)
        return
    problem, n_runs = _store_problem(db)
    if problem is None:
        return
    if n_runs == 0:
        aside = db.with_name(f"{db.name}.broken-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        for suffix in ("-journal", "-wal", "-shm"):
            if Path(f"{db}{suffix}").exists():
                os.replace(f"{db}{suffix}", f"{aside}{suffix}")
        os.replace(db, aside)
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        engine = getattr(SqlAlchemyStore, "_engine_map", {}).get(uri)  # this process's pooled connections
        if engine is not None:                                          # still point at the old file
            engine.dispose()
        log.warning("MLflow store %s was damaged (%s) and held no run: moved aside to %s, created again",
                    db, problem, aside)
        _create_store(db)
        return
    held = "an unknown number of" if n_runs is None else str(n_runs)
    raise StoreError(f"MLflow store {db} is damaged: {problem}; it holds {held} run(s), so it is not replaced "
                     f"automatically. Fix: move it aside (mv {db} {db}.broken) and run `python stages/report.py`, "
                     f"which logs every finished run from the results files into a new store")


# -- run identity --------------------------------------------------------------------------------

def _experiment_id(client, name: str, create: bool = True) -> str | None:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        if not create:
            return None
        try:
            return client.create_experiment(name, tags=dict(UI_TAGS))
        except Exception:  # noqa: BLE001 - created concurrently by another writer
            return client.get_experiment_by_name(name).experiment_id
    for k, v in UI_TAGS.items():  # experiments made before UI_TAGS existed (MLflow 3 would open them as GenAI)
        if exp.tags.get(k) != v:
            client.set_experiment_tag(exp.experiment_id, k, v)
    return exp.experiment_id


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


class Runs:
    """The one place that decides run identity in an experiment (none yet and not ``create``: nothing
    is found): a results key's run is tagged ``qshift.run_key`` = key, a sweep's parent ``qshift.role``
    = sweep and ``qshift.sweep_key`` = its key. Several runs with one identity (a creation race on a
    tracking server): the oldest, by (start time, run id), is the one; the others are deleted."""

    def __init__(self, client, experiment: str, create: bool = True):
        self.client, self.exp_id = client, _experiment_id(client, experiment, create)

    def find(self, role: str, value: str):
        """The run (None if none) of a results key (``role`` "run") or of a sweep key ("sweep")."""
        where = (f"tags.`{TAG_SWEEP}` = '{_quote(value)}' AND tags.`{TAG_ROLE}` = 'sweep'" if role == "sweep"
                 else f"tags.`{TAG_KEY}` = '{_quote(value)}'")  # (a sweep's children carry its key too)
        return self._one(self._search(where))

    def find_or_create(self, role: str, value: str, make):
        """The run of (role, value); if none, ``make()`` one and return the one there is then (an older
        one, should a concurrent writer have made one too)."""
        run = self.find(role, value)
        if run is None:
            make()
            run = self.find(role, value)
        return run

    def by_key(self) -> dict:
        """{results key: its run} for every run of the experiment (one paged search)."""
        groups: dict[str, list] = {}
        for r in self._search(""):
            if TAG_KEY in r.data.tags:
                groups.setdefault(r.data.tags[TAG_KEY], []).append(r)
        return {k: self._one(v) for k, v in groups.items()}

    def parent(self, sweep: dict) -> str:
        return self.find_or_create("sweep", sweep["key"],
                                   lambda: _new_parent(self.client, self.exp_id, sweep)).info.run_id

    def _search(self, filter_string: str) -> list:
        runs, token = [], None
        while self.exp_id is not None:
            page = self.client.search_runs([self.exp_id], filter_string, max_results=1000, page_token=token)
            runs, token = runs + list(page), page.token
            if not token:
                break
        return runs

    def _one(self, found: list):
        keep = min(found, key=lambda r: (r.info.start_time or 0, r.info.run_id), default=None)
        for dup in found:
            if dup is not keep:
                self.client.delete_run(dup.info.run_id)
        return keep


def _new_parent(client, exp_id: str, sweep: dict) -> None:
    from mlflow.entities import Param

    run_id = client.create_run(exp_id, run_name=sweep_run_name(sweep),
                               tags={TAG_SWEEP: sweep["key"], TAG_ROLE: "sweep", "qshift.step_methods": " ".join(
                                   f"{i}={m}" for i, m in enumerate(sweep["grid"]["methods"]))}).info.run_id
    params = {"sweep.benchmark": sweep["benchmark"], "sweep.model": sweep["model"],
              "sweep.grid_hash": sweep["grid_hash"],
              **{f"sweep.{k}": ",".join(map(str, v)) for k, v in sweep["grid"].items()}}
    _log_batch(client, run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    client.set_terminated(run_id)


def _log_batch(client, run_id: str, params: list = (), tags: list = (), metrics: list = ()) -> None:
    """MLflow takes at most 100 params and 1000 metrics per batch."""
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i:i + 100])
    if tags:
        client.log_batch(run_id, tags=tags)
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i:i + 1000])


# -- what a run shows ----------------------------------------------------------------------------

def ui_url(uri: str, experiment_id: str) -> str:
    """The runs table of an experiment in the MLflow UI served at ``uri`` (the Model training view)."""
    return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def run_name(key: dict) -> str:
    """A run's display name, what differs first: ``tcr · i2t · gaussian_noise s3 · seed 42``,
    ``source · t2i · clean · seed 42``, ``tcr · i2t · mix · seed 7`` (a stream). The identity stays
    the full key in tag ``qshift.run_key``."""
    cell = key["corruption"] if int(key.get("severity", 0)) == 0 else f"{key['corruption']} s{key['severity']}"
    seed = "" if key.get("seed") is None else f" · seed {key['seed']}"
    return f"{key['method']} · {key['direction']} · {cell}{seed}"


def sweep_run_name(sweep: dict) -> str:
    return f"sweep · {sweep['model']} · {sweep['grid_hash'][:8]}"


def job_times(result: dict) -> tuple[int | None, int | None]:
    """(start, end) of the job in ms since the epoch: end = ``finished_at``, start = end - ``timing.seconds``
    (runs are logged after the job, so MLflow's own clock would show a duration of milliseconds)."""
    end = result.get("finished_at")
    if not end:
        return None, None
    seconds = (result.get("timing") or {}).get("seconds") or 0.0
    return int((end - seconds) * 1000), int(end * 1000)


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


def _is_number(v) -> bool:
    return isinstance(v, (int, float))  # bools count; None and strings do not


def _finished_tag(result: dict) -> str:
    return repr(float(result.get("finished_at") or 0))


def _params(result: dict) -> dict[str, str]:
    params = {**{f"key.{k}": v for k, v in result["key"].items()}, **_flatten("hp.", result.get("hparams", {})),
              **_flatten("run.", result.get("run", {}))}
    return {k: str(v)[:6000] for k, v in params.items()}


def _tags(result: dict, sweep: dict | None, parent: str | None) -> dict:
    diverged = result.get("status") == "diverged"
    tags = {TAG_KEY: result["run_key"], TAG_ROLE: "run", TAG_FINISHED: _finished_tag(result),
            TAG_STATUS: result.get("status", "ok"), "mlflow.runName": run_name(result["key"]),
            **({"qshift.diverged_batch": result["diverged"]["batch"],
                "qshift.diverged_reason": result["diverged"]["reason"]} if diverged else {}),
            **{f"qshift.{k}": v for k, v in result.get("env", {}).items() if v is not None}}
    if sweep:
        tags.update({TAG_SWEEP: sweep["key"], TAG_PARENT: parent})
    return {k: str(v) for k, v in tags.items()}


def _metrics(result: dict) -> list:
    """Scalars at step 0 (none of R@K if diverged), the online curves one step per batch."""
    from mlflow.entities import Metric

    scalars = {mlflow_metric_name(k): v for k, v in (result["metrics"] or {}).items()}
    scalars.update({mlflow_metric_name(k): v for k, v in (result.get("metrics_ci") or {}).items()})  # R_at_1_lo/_hi
    scalars.update({f"counter.{k}": v for k, v in result.get("counters", {}).items()})
    scalars.update({k: v for k, v in result.get("timing", {}).items() if v is not None})
    for dom, vals in (result.get("metrics_by_domain") or {}).items():  # multi-domain streams
        scalars.update({f"domain.{dom}.{mlflow_metric_name(k)}": v for k, v in vals.items()})
    for grp, vals in (result.get("metrics_by_group") or {}).items():  # FashionIQ's categories (qshift.cir)
        scalars.update({f"group.{grp}.{mlflow_metric_name(k)}": v for k, v in vals.items()})
    ts = int(result.get("finished_at", 0) * 1000)
    entries = [Metric(k, float(v), ts, 0) for k, v in scalars.items() if _is_number(v)]
    online = result["online"]
    series = {"online.batch_r1": online["batch_r1"], "online.cum_r1": online["cum_r1"],
              **{f"online.{k}": v for k, v in online.get("stats", {}).items()}}
    for name, values in series.items():
        entries += [Metric(name, float(v), ts, i) for i, v in enumerate(values)
                    if _is_number(v) and math.isfinite(float(v))]
    return entries


# -- logging one run ---------------------------------------------------------------------------

def log_result(result: dict, uri: str, experiment: str, artifact: str | Path | None = None,
               sweep: dict | None = None) -> dict:
    """Log one results document; returns the ``mlflow`` status block for the results file.

    Idempotent by ``result["run_key"]``: logging a key again updates its run (a run whose
    params or finish time changed is replaced). ``sweep`` (:func:`sweep_of`) names the parent
    run (none when omitted). Never raises; never touches ``artifact``.
    """
    try:
        replaced: dict = {}
        with _session(uri) as client:
            run_id = _with_retries(lambda: _log(client, result, experiment, artifact, sweep, replaced))
        status = {"logged": True, "run_id": run_id, "experiment": experiment, "uri": uri, "error": None}
        return {**status, "replaced": replaced} if replaced else status
    except Exception as e:  # noqa: BLE001 - tracking must never lose a finished result
        log.warning("MLflow logging failed for %s (%s); the results file keeps the numbers and can be "
                    "replayed later", result.get("run_key"), e)
        return {"logged": False, "run_id": None, "experiment": experiment, "uri": uri,
                "error": f"{type(e).__name__}: {e}"}


def _log(client, result: dict, experiment: str, artifact, sweep: dict | None, replaced: dict) -> str:
    from mlflow.entities import Param, RunTag

    runs = Runs(client, experiment)
    key, params = result["run_key"], _params(result)
    tags = _tags(result, sweep, runs.parent(sweep) if sweep else None)
    run = runs.find("run", key)
    if run is not None and (run.data.params != params or run.data.tags.get(TAG_FINISHED) != tags[TAG_FINISHED]):
        # MLflow params are immutable and metric histories append: a rerun replaces the run
        replaced.update(_changes(run, params))
        client.delete_run(run.info.run_id)
        run = None
    start_ms, end_ms = job_times(result)
    if run is None:  # created with its key (and parent) tags: an interrupted attempt is found by the next
        run = runs.find_or_create("run", key, lambda: client.create_run(
            runs.exp_id, start_time=start_ms, run_name=tags["mlflow.runName"], tags=tags))
    if start_ms is not None and run.info.start_time:  # MLflow cannot move a run's start:
        end_ms = run.info.start_time + (end_ms - start_ms)  # keep the job's duration
    run_id = run.info.run_id
    _log_batch(client, run_id, params=[Param(k, v) for k, v in params.items() if run.data.params.get(k) != v],
               tags=[RunTag(k, v) for k, v in tags.items()], metrics=_metrics(result))
    if artifact is not None:
        client.log_artifact(run_id, str(artifact))
    with tempfile.TemporaryDirectory() as tmp:  # the curves, small and readable without MLflow
        curve = Path(tmp) / CURVE_ARTIFACT
        curve.write_text(json.dumps({"run_key": key, **result["online"]}, allow_nan=True))
        client.log_artifact(run_id, str(curve))
    client.set_terminated(run_id, status="FAILED" if result.get("status") == "diverged" else "FINISHED",
                          end_time=end_ms)
    return run_id


def _changes(run, params: dict) -> dict:
    """The ``replaced`` note of a run replaced for other params ({} for another finish time only)."""
    old = run.data.params
    changed = [f"{k}: {old.get(k)} -> {params.get(k)}" for k in sorted(set(old) | set(params))
               if old.get(k) != params.get(k)]
    return {"run_id": run.info.run_id, "changed": ", ".join(changed)} if changed else {}


# -- the report stage: replay and sweep bookkeeping ---------------------------------------------

def sync_sweep(cfg: dict, found: dict) -> dict:
    """Replay the results missing from the store and point every run of the grid at the sweep's parent.

    ``found`` maps :class:`qshift.config.Run` to its results document. A run missing from *this*
    store (by key, never by the file's ``mlflow.logged``: the store may have moved), or there from
    another finish time, is logged again; the results files are never modified. After the first
    failed replay the others are not attempted (each could wait for the HTTP timeout). Returns
    ``{"uri", "experiment", "sweep", "replayed": [(run, run_id)], "failing": [(run, error)], "error"}``;
    never raises.
    """
    from .config import experiment_name

    uri, experiment, sweep = tracking_uri(cfg), experiment_name(cfg), sweep_of(cfg)
    out: dict = {"uri": uri, "experiment": experiment, "sweep": sweep["key"], "replayed": [], "failing": [],
                 "error": None}
    down = _unreachable(uri)
    stored: dict = {}
    if not down and found:
        try:
            stored = _stored_runs(uri, experiment)
        except Exception as e:  # noqa: BLE001
            down = f"{type(e).__name__}: {e}"
    for run, doc in sorted(found.items(), key=lambda kv: kv[0].result_path):
        if down:
            if not doc.get("mlflow", {}).get("logged"):
                out["failing"].append((run, down))
        elif not _from_this_file(stored.get(doc["run_key"]), doc):
            status = log_result(doc, uri, experiment, artifact=run.result_path, sweep=sweep)
            stored.pop(doc["run_key"], None)  # logged under the parent now (or failing)
            if status["logged"]:
                out["replayed"].append((run, status["run_id"]))
            else:
                out["failing"].append((run, status["error"]))
                down = f"not attempted after an earlier failure ({status['error']})"
    if down:
        out["error"] = down if not out["failing"] else None
        return out
    wanted = {doc["run_key"] for doc in found.values()}
    settled = [r for k, r in stored.items() if k in wanted or r.data.tags.get(TAG_SWEEP) == sweep["key"]]
    try:
        with _session(uri) as client:
            _with_retries(lambda: _bookkeeping(client, experiment, sweep, settled, found))
    except Exception as e:  # noqa: BLE001
        out["error"] = f"{type(e).__name__}: {e}"
        log.warning("MLflow sweep bookkeeping failed (%s)", e)
    return out


def _stored_runs(uri: str, experiment: str) -> dict:
    """{run key: its run} in the store; a sqlite store that does not exist yet holds nothing (not created here)."""
    db = _sqlite_path(uri)
    if db is not None and not db.exists():
        return {}
    with _session(uri) as client:
        return _with_retries(lambda: Runs(client, experiment, create=False).by_key())


def _from_this_file(run, doc: dict) -> bool:
    """Whether the store's run of the doc's key (None: none) was logged from this results file."""
    if run is None:
        return False
    tag = run.data.tags.get(TAG_FINISHED)  # runs logged before the tag existed: trust the file
    return tag == _finished_tag(doc) or (tag is None and bool(doc.get("mlflow", {}).get("logged")))


def _bookkeeping(client, experiment: str, sweep: dict, settled: list, found: dict) -> None:
    """Runs not replayed now that are not under the sweep's parent (logged under an earlier grid, or
    under a parent a creation race deleted) get it (tag ``mlflow.parentRunId``); the parent, the averages."""
    from mlflow.entities import RunTag

    runs = Runs(client, experiment, create=False)
    if runs.exp_id is None:
        return
    parent = runs.parent(sweep)
    for r in settled:
        if (r.data.tags.get(TAG_PARENT), r.data.tags.get(TAG_SWEEP)) != (parent, sweep["key"]):
            _log_batch(client, r.info.run_id, tags=[RunTag(TAG_PARENT, parent), RunTag(TAG_SWEEP, sweep["key"])])
    _log_batch(client, parent, metrics=parent_metrics(found, sweep["grid"]["methods"]))


def _unreachable(uri: str, timeout: float = 5.0) -> str | None:
    """Why an HTTP tracking server cannot be reached (None when it answers, or not HTTP)."""
    if not uri.startswith(("http://", "https://")) or "@" in uri.split("://", 1)[1].split("/", 1)[0]:
        return None
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return None  # it answers (an auth proxy may refuse /health): let MLflow decide
    except (OSError, ValueError) as e:
        return f"tracking server unreachable: {type(e).__name__}: {getattr(e, 'reason', e)}"
    return None


def parent_metrics(found: dict, methods: list[str]) -> list:
    """The sweep parent's metrics: R@1 averaged over each (direction, method)'s corruption cells (not
    clean, streams or diverged runs), one metric per direction, ``avg_R_at_1.<direction>``, whose
    step is the method's index in ``adapt.methods`` (the parent's param ``sweep.methods`` and tag
    ``qshift.step_methods`` name them): the chart view draws one chart per direction with every
    method along it, instead of one single-bar chart per (direction, method)."""
    from mlflow.entities import Metric

    cells: dict[tuple[str, str], list[float]] = {}
    for run, doc in found.items():
        if run.corruption != "clean" and not doc.get("stream") and doc.get("metrics"):
            cells.setdefault((run.direction, run.method), []).append(float(doc["metrics"]["R@1"]))
    ts = int(max((doc.get("finished_at", 0) for doc in found.values()), default=0) * 1000)
    order = {m: i for i, m in enumerate(methods)}
    return [Metric(f"avg_R_at_1.{d}", sum(v) / len(v), ts, order[m])
            for (d, m), v in sorted(cells.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], len(order))))
            if m in order]


# -- the observe stage: obs.* metrics on existing runs -----------------------------------------

def log_observations(uri: str, experiment: str, metrics: dict[str, dict[str, float]]) -> dict:
    """Add metrics to the runs keyed ``run_key`` (``{run_key: {name: value}}``); a run not in the
    store is skipped (the report stage's replay logs it, the next observe adds its metrics).
    Never raises; returns ``{"logged": n, "skipped": [...], "error": ...}``."""
    out: dict = {"logged": 0, "skipped": [], "error": None}
    try:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        with _session(uri) as client:
            runs = Runs(client, experiment, create=False)
            for key, values in sorted(metrics.items()):
                run = _with_retries(lambda: runs.find("run", key))
                if run is None:
                    out["skipped"].append(key)
                    continue
                entries = [Metric(k, float(v), ts, 0) for k, v in values.items()
                           if _is_number(v) and math.isfinite(float(v))]
                _with_retries(lambda: _log_batch(client, run.info.run_id, metrics=entries))
                out["logged"] += 1
    except Exception as e:  # noqa: BLE001 - observations never fail on the store
        log.warning("MLflow: observation metrics not logged (%s)", e)
        out["error"] = f"{type(e).__name__}: {e}"
    return out
