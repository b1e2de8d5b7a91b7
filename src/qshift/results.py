"""The per-run results file: one JSON per (model, dataset, direction, method, corruption, severity, seed),
at ``results/<dataset>/<model>/<direction>/<method>/seed<seed>/<corruption>-s<severity>.json``.

Written atomically by the ``adapt`` stage *before* anything is logged to MLflow, so a run's
numbers never depend on the tracking store. Schema (``schema: 2``)::

    {
      "schema": 2,
      "status": "ok",                   # or "diverged" (below)
      "key": {"benchmark": "builtin", "dataset": "builtin", "model": "qshift-tiny-clip",
              "direction": "i2t", "method": "tcr", "corruption": "gaussian_noise",
              "severity": 3, "seed": 42},       # seed: the run's adaptation seed (params seeds)
      "run_key": "builtin/qshift-tiny-clip/i2t/tcr/gaussian_noise-s3/seed42",
      "metrics": {"R@1": 61.2, "R@5": 85.0, "R@10": 91.3},      # percent
      "n_queries": 1000, "n_gallery": 5000,
      "online": {                                               # one entry per batch
         "batch_size": [64, ...], "batch_r1": [59.4, ...], "cum_r1": [59.4, ...],
         "stats": {"loss": [...], "entropy": [...], "n_selected": [...], ...}
      },
      "counters": {"skipped_steps": 0, "nonfinite_loss": 0, "empty_selection": 0, ...},
      "hparams": {...},                 # the method's effective hyperparameters
      "timing": {"seconds": 3.2, "queries_per_s": 310.0},
      "env": {"git_commit": "...", "params_hash": "...", "host": "...", "device": "cpu",
              "slurm_job_id": null, "torch": "2.14.1", "cpu_kernels": "AVX2"},   # ATen's code path
      "mlflow": {"logged": true, "run_id": "...", "error": null}
    }

A clean-query reference run uses ``corruption: "clean", severity: 0``.

A run whose scores or adapted parameters became non-finite stops at that batch
(:func:`qshift.adapt.run_stream`) and is recorded, not reported: ``"status": "diverged"``,
``"metrics": null`` (no R@K), the online curve of the batches before it, and::

      "diverged": {"batch": 3,              # 0-based index of the batch where it happened
                   "queries_seen": 256,     # queries that reached the model, that batch included
                   "reason": "non-finite parameters"}   # or "non-finite scores"

Schema-1 files (written before ``status`` existed) read as ``status: ok``. Every file is
validated on read (:func:`validate`): types, finite values, R@K in [0, 100], ``n_queries``
> 0, and ``key`` / ``run_key`` consistent with the file's path; a bad file raises
:class:`~qshift.errors.InputError` naming the file and the field (the report lists it as a
failure, never as a number).

A run on a multi-domain query stream (:mod:`qshift.streams`) uses ``corruption: <stream
name>, severity: 0`` and adds three optional keys (absent from every other run)::

      "stream": {"name": "mixed", "kind": "mixed",             # or "sequential"
                 "domains": ["gaussian_noise-s3", "contrast-s3"]},  # the definition's order
      "metrics_by_domain": {                                    # percent, per query domain
         "gaussian_noise-s3": {"R@1": 58.0, "R@5": 83.1, "R@10": 90.2, "n_queries": 503}, ...},
      "online": {..., "domain": ["contrast-s3", ...]}          # each batch's majority domain

A FashionIQ run (composed image retrieval scored per category, :mod:`qshift.data.cir_real`)
adds ``"metrics_by_group": {"dress": {"R@1": ..., "R@50": ..., "n_queries": 2017}, ...}`` and
MLflow gets ``group.<category>.R_at_10`` etc.

Domain labels are ``"<corruption>-s<severity>"`` (text streams: the level), as in results
paths. The report splits sequential streams' per-batch R@1 by ``online.domain`` (forgetting)
and MLflow gets ``domain.<label>.R_at_1`` etc. from ``metrics_by_domain``.
"""

from __future__ import annotations

import math
from pathlib import Path

from .errors import InputError
from .io import read_json

SCHEMA = 2
READABLE_SCHEMAS = (1, 2)  # 1: before "status" (every schema-1 run finished normally)
STATUSES = ("ok", "diverged")
DIVERGED_REASONS = ("non-finite scores", "non-finite parameters")
CLEAN = "clean"
DIRECTIONS = ("i2t", "t2i")  # the image-text task's; every task's: qshift.tasks.all_directions()
RECALL_KS = (1, 5, 10)


def run_key(key: dict) -> str:
    """The run's identity (results path without the extension; MLflow tag ``qshift.key``)."""
    cell = (f"{key['dataset']}/{key['model']}/{key['direction']}/{key['method']}/"
            f"{key['corruption']}-s{key['severity']}")
    return cell if key.get("seed") is None else f"{cell}/seed{key['seed']}"


def load_result(path: str | Path) -> dict:
    """Read and validate one results file (:func:`validate`); a schema-1 file gets ``status: ok``."""
    doc = read_json(path, "results file")
    validate(doc, path)
    doc.setdefault("status", "ok")
    return doc


def _bad(path, field: str, problem: str) -> InputError:
    return InputError(f"results file {path}: field {field!r} {problem}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(path, field: str, v, lo: float | None = None, hi: float | None = None, integer: bool = False,
            low_open: bool = False) -> None:
    if integer and not _is_int(v):
        raise _bad(path, field, f"must be an integer, got {v!r}")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _bad(path, field, f"must be a number, got {type(v).__name__} {v!r}"[:300])
    if not math.isfinite(v):
        raise _bad(path, field, f"must be finite, got {v!r}")
    if lo is not None and (v <= lo if low_open else v < lo):
        raise _bad(path, field, f"must be {'>' if low_open else '>='} {lo:g}, got {v!r}")
    if hi is not None and v > hi:
        raise _bad(path, field, f"must be <= {hi:g}, got {v!r}")


def _dict(path, field: str, v) -> dict:
    if not isinstance(v, dict):
        raise _bad(path, field, f"must be an object, got {type(v).__name__}")
    return v


def _recalls(path, field: str, block: dict) -> None:
    for k in RECALL_KS:
        if f"R@{k}" not in block:
            raise _bad(path, f"{field}.R@{k}", "is missing")
    for name, v in block.items():
        if name.startswith("R@"):
            _number(path, f"{field}.{name}", v, 0.0, 100.0)


def _path_key(path) -> dict | None:
    """The key a results path names
    (``.../<dataset>/<model>/<direction>/<method>/seed<seed>/<corruption>-s<severity>.json``)."""
    parts = Path(path).parts
    if len(parts) < 6 or not parts[-1].endswith(".json") or "-s" not in parts[-1]:
        return None
    corruption, _, severity = parts[-1][:-len(".json")].rpartition("-s")
    seed = parts[-2][len("seed"):] if parts[-2].startswith("seed") else None
    if seed is None or not seed.isdigit():  # a file outside a seed folder: a pre-seeds layout
        return None
    return {"dataset": parts[-6], "model": parts[-5], "direction": parts[-4], "method": parts[-3],
            "corruption": corruption, "severity": severity, "seed": seed}


def validate(doc, path: str | Path) -> None:
    """Raise :class:`InputError` (naming ``path`` and the field) unless ``doc`` is a well-formed
    results document stored where its key says."""
    if not isinstance(doc, dict):
        raise InputError(f"results file {path}: not a JSON object")
    if doc.get("schema") not in READABLE_SCHEMAS:
        raise InputError(f"results file {path} has schema {doc.get('schema')!r}; expected one of "
                         f"{', '.join(map(str, READABLE_SCHEMAS))}")
    for k in ("key", "metrics", "online"):
        if k not in doc:
            raise InputError(f"results file {path} is missing key {k!r}")
    key = _dict(path, "key", doc["key"])
    for f in ("dataset", "model", "direction", "method", "corruption"):
        if not isinstance(key.get(f), str) or not key.get(f):
            raise _bad(path, f"key.{f}", f"must be a non-empty string, got {key.get(f)!r}")
    if not _is_int(key.get("severity")) or key["severity"] < 0:
        raise _bad(path, "key.severity", f"must be an integer >= 0, got {key.get('severity')!r}")
    from .tasks import all_directions  # every task's (image-text: DIRECTIONS; cir)

    if key["direction"] not in all_directions():
        raise _bad(path, "key.direction", f"must be one of {', '.join(all_directions())}, got {key['direction']!r}")
    if "seed" not in key:
        raise _bad(path, "key.seed", "is missing: the file was written before adaptation seeds (params seeds) "
                                     "were part of a run's key; rerun its adapt job")
    if not _is_int(key["seed"]) or key["seed"] < 0:
        raise _bad(path, "key.seed", f"must be an integer >= 0, got {key['seed']!r}")
    named = _path_key(path)
    if named is not None:
        for f, v in named.items():
            if str(key[f]) != v:
                raise _bad(path, f"key.{f}", f"is {key[f]!r} but the file's path names {v!r} (a results file "
                                            f"copied or moved from another run?)")
    if doc.get("run_key") != run_key(key):
        raise _bad(path, "run_key", f"is {doc.get('run_key')!r}, expected {run_key(key)!r} (from its key)")
    status = doc.get("status", "ok" if doc["schema"] == 1 else None)
    if status not in STATUSES:
        raise _bad(path, "status", f"must be one of {', '.join(STATUSES)}, got {status!r}")
    if status == "ok":
        _recalls(path, "metrics", _dict(path, "metrics", doc["metrics"]))
    else:
        if doc["metrics"] is not None:
            raise _bad(path, "metrics", "must be null for a diverged run")
        div = _dict(path, "diverged", doc.get("diverged"))
        _number(path, "diverged.batch", div.get("batch"), 0, integer=True)
        _number(path, "diverged.queries_seen", div.get("queries_seen"), 0, integer=True)
        if div.get("reason") not in DIVERGED_REASONS:
            raise _bad(path, "diverged.reason", f"must be one of {', '.join(DIVERGED_REASONS)}, "
                                                f"got {div.get('reason')!r}")
    _number(path, "n_queries", doc.get("n_queries"), 0, integer=True, low_open=True)
    if "n_gallery" in doc:
        _number(path, "n_gallery", doc["n_gallery"], 0, integer=True, low_open=True)
    online = _dict(path, "online", doc["online"])
    lengths = {}
    for f in ("batch_size", "batch_r1", "cum_r1"):
        vals = online.get(f)
        if not isinstance(vals, list):
            raise _bad(path, f"online.{f}", f"must be a list, got {type(vals).__name__}")
        for i, v in enumerate(vals):
            if f == "batch_size":
                _number(path, f"online.{f}[{i}]", v, 0, integer=True, low_open=True)
            else:
                _number(path, f"online.{f}[{i}]", v, 0.0, 100.0)
        lengths[f] = len(vals)
    if len(set(lengths.values())) > 1:
        raise _bad(path, "online", f"has lists of different lengths {lengths}")
    for name, vals in _dict(path, "online.stats", online.get("stats", {})).items():
        if not isinstance(vals, list) or any(v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)))
                                             for v in vals):
            raise _bad(path, f"online.stats.{name}", "must be a list of numbers or nulls")
    if "domain" in online and (not isinstance(online["domain"], list)
                               or not all(isinstance(d, str) for d in online["domain"])):
        raise _bad(path, "online.domain", "must be a list of domain labels")
    by_domain = doc.get("metrics_by_domain")
    if by_domain is not None:
        for dom, vals in _dict(path, "metrics_by_domain", by_domain).items():
            _recalls(path, f"metrics_by_domain.{dom}", _dict(path, f"metrics_by_domain.{dom}", vals))
            _number(path, f"metrics_by_domain.{dom}.n_queries", vals.get("n_queries"), 0, integer=True,
                    low_open=True)
    for grp, vals in _dict(path, "metrics_by_group", doc.get("metrics_by_group") or {}).items():  # FashionIQ
        _recalls(path, f"metrics_by_group.{grp}", _dict(path, f"metrics_by_group.{grp}", vals))
        _number(path, f"metrics_by_group.{grp}.n_queries", vals.get("n_queries"), 0, integer=True, low_open=True)
    for f in ("counters", "hparams", "timing", "env", "run", "mlflow"):
        if f in doc and doc[f] is not None:
            _dict(path, f, doc[f])
    for name, v in (doc.get("counters") or {}).items():
        _number(path, f"counters.{name}", v, 0)
    if "finished_at" in doc:
        _number(path, "finished_at", doc["finished_at"], 0)
