"""Per-query outcomes: the rank of each query's first correct gallery item, in arrival order.

Every adapt run writes, beside its results JSON (``config.OUTCOMES``: the same path with
``.npz``), one compressed NumPy archive (no pickles) with, per query in arrival order:

- ``query_id`` (int64): the image id (i2t) or the caption's sentid (t2i);
- ``index`` (int32): the query's position in its query set (the manifest's test split);
- ``rank`` (int32): the **0-based** rank of the first correct gallery item (0 = top-1 hit;
  hit@K <=> rank < K; the gallery size when no correct item exists);
- multi-domain streams only: ``domain`` (int16, into ``domains``) and ``domains`` (labels
  ``"<corruption>-s<severity>"``).

A 25,000-query COCO t2i run is ~25,000 x 16 bytes before compression (< 0.4 MB). R@K is
recomputed from the ranks exactly (:func:`recall_from_ranks`); the bootstrap intervals, the
paired differences and the matched stream comparisons (:mod:`qshift.stats`) read these files.
The archive is written before the JSON (atomically), so a results JSON always has its outcomes.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from .data.manifest import Split
from .errors import InputError
from .io import atomic_path
from .results import RECALL_KS

KEYS = ("query_id", "index", "rank")


def query_outcomes(queries: Split, direction: str, order, ranks, arrival_domains=None) -> dict[str, np.ndarray]:
    """The outcome arrays of a run (``order``: query indices in arrival order)."""
    order = np.asarray(order, dtype=np.int64)
    ids = getattr(queries, "query_ids", None)  # a task's query set may name its own (video-audio: clip ids)
    if ids is None:
        ids = queries.image_ids if direction == "i2t" else queries.sentids
    out = {"query_id": np.asarray(ids, dtype=np.int64)[order], "index": order.astype(np.int32),
           "rank": np.asarray(ranks, dtype=np.int32).reshape(-1)}
    if len(out["rank"]) != len(order):
        raise InputError(f"{len(out['rank'])} ranks for {len(order)} queries")
    if arrival_domains is not None:
        labels = list(dict.fromkeys(arrival_domains))
        pos = {lab: i for i, lab in enumerate(labels)}
        out["domain"] = np.asarray([pos[d] for d in arrival_domains], dtype=np.int16)
        out["domains"] = np.asarray(labels, dtype=str)
    return out


def empty_outcomes() -> dict[str, np.ndarray]:
    """The outcomes of a run that reports no R@K (diverged): the declared output exists, empty."""
    return {"query_id": np.zeros(0, np.int64), "index": np.zeros(0, np.int32), "rank": np.zeros(0, np.int32)}


def outcomes_path(result_path: str | Path) -> Path:
    return Path(result_path).with_suffix(".npz")


def write_outcomes(path: str | Path, outcomes: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **outcomes)
    with atomic_path(path, ".npz") as tmp:
        tmp.write_bytes(buf.getvalue())


def read_outcomes(path: str | Path) -> dict[str, np.ndarray] | None:
    """The outcome arrays, or None when the file does not exist (results from before outcomes)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            doc = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise InputError(f"per-query outcomes {path} are unreadable: {e}") from None
    missing = [k for k in KEYS if k not in doc]
    if missing or len({len(doc[k]) for k in KEYS}) != 1:
        raise InputError(f"per-query outcomes {path}: missing or unequal arrays ({', '.join(missing) or 'lengths'})")
    return doc


def recall_from_ranks(rank: np.ndarray, ks=RECALL_KS) -> dict[str, float]:
    rank = np.asarray(rank)
    return {f"R@{k}": 100.0 * int((rank < k).sum()) / len(rank) for k in ks}


def arrival_labels(doc: dict[str, np.ndarray]) -> np.ndarray | None:
    """Each query's domain label (streams), in arrival order; None for a one-domain run."""
    if "domain" not in doc:
        return None
    return doc["domains"][doc["domain"]]
