"""The per-run results file: one JSON per (model, dataset, direction, method, corruption, severity).

Written atomically by the ``adapt`` stage *before* anything is logged to MLflow, so a run's
numbers never depend on the tracking store. Schema (``schema: 1``)::

    {
      "schema": 1,
      "key": {"benchmark": "builtin", "dataset": "builtin", "model": "qshift-tiny-clip",
              "direction": "i2t", "method": "tcr", "corruption": "gaussian_noise",
              "severity": 3},
      "run_key": "builtin/qshift-tiny-clip/i2t/tcr/gaussian_noise-s3",
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
              "slurm_job_id": null, "torch": "2.14.1"},
      "mlflow": {"logged": true, "run_id": "...", "error": null}
    }

A clean-query reference run uses ``corruption: "clean", severity: 0``.

A run on a multi-domain query stream (:mod:`qshift.streams`) uses ``corruption: <stream
name>, severity: 0`` and adds three optional keys (absent from every other run)::

      "stream": {"name": "mixed", "kind": "mixed",             # or "sequential"
                 "domains": ["gaussian_noise-s3", "contrast-s3"]},  # the definition's order
      "metrics_by_domain": {                                    # percent, per query domain
         "gaussian_noise-s3": {"R@1": 58.0, "R@5": 83.1, "R@10": 90.2, "n_queries": 503}, ...},
      "online": {..., "domain": ["contrast-s3", ...]}          # each batch's majority domain

Domain labels are ``"<corruption>-s<severity>"`` (text streams: the level), as in results
paths. The report splits sequential streams' per-batch R@1 by ``online.domain`` (forgetting)
and MLflow gets ``domain.<label>.R_at_1`` etc. from ``metrics_by_domain``.
"""

from __future__ import annotations

from pathlib import Path

from .errors import InputError
from .io import read_json

SCHEMA = 1
CLEAN = "clean"
DIRECTIONS = ("i2t", "t2i")
RECALL_KS = (1, 5, 10)


def run_key(key: dict) -> str:
    return (f"{key['dataset']}/{key['model']}/{key['direction']}/{key['method']}/"
            f"{key['corruption']}-s{key['severity']}")


def load_result(path: str | Path) -> dict:
    doc = read_json(path, "results file")
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise InputError(f"results file {path} has schema {doc.get('schema') if isinstance(doc, dict) else None!r}; "
                         f"expected {SCHEMA}")
    for k in ("key", "metrics", "online"):
        if k not in doc:
            raise InputError(f"results file {path} is missing key {k!r}")
    return doc

