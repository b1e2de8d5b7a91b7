"""The report's inputs: the grid's results files and what is read from them.

:func:`collect` reads exactly the results files the experiment grid declares
(``config.runs``); a missing or unreadable file becomes a "not run / failed" entry with its
reason, never a silent gap. A results file whose ``online`` block carries ``domain`` (one
domain label per batch, e.g. ``gaussian_noise-s5``) and that is not a mixed stream is a
sequential stream; :func:`sequential_curves` splits its per-batch R@1 by domain.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

from ..config import Run, primary_seed, query_cells, runs
from ..corrupt.text import TEXT_LABELS
from ..errors import QShiftError
from ..results import CLEAN, load_result

BASELINE = "source"


def cell_label(corruption: str, severity: int, multi: bool) -> str:
    name = TEXT_LABELS.get(corruption, corruption)
    return f"{name} s{severity}" if multi else name


def collect(cfg: dict, diverged: dict[Run, dict] | None = None,
            seeds: list[int] | None = None) -> tuple[dict[Run, dict], list[tuple[Run, str]]]:
    """(finished runs, [(run, why it is not reported)]) of the given adaptation seeds (default:
    the first of params ``seeds``, the one the report's tables show): a missing or invalid
    results file and a diverged run (``status: diverged``; also put into ``diverged`` when
    given) are not reported."""
    found, missing = {}, []
    for run in runs(cfg, [primary_seed(cfg)] if seeds is None else seeds):
        path = Path(run.result_path)
        if not path.is_file():
            missing.append((run, f"results file missing: {path}"))
            continue
        try:
            doc = load_result(path)
        except QShiftError as e:
            missing.append((run, str(e)))
            continue
        if doc["status"] == "diverged":
            d = doc["diverged"]
            missing.append((run, f"diverged at batch {d['batch']} ({d['reason']}, after {d['queries_seen']} of "
                                 f"{doc['n_queries']} queries): no R@K reported"))
            if diverged is not None:
                diverged[run] = doc
            continue
        found[run] = doc
    return found, missing


def _clean_methods(cfg: dict) -> str:
    """The methods the grid runs on clean queries (``adapt.clean_methods``), for the report's text."""
    names = [m for m in cfg["adapt"]["methods"] if m in set(cfg["adapt"].get("clean_methods", []))]
    return ", ".join(f"`{m}`" for m in names) if names else "no method"


def _fmt(v: float | None) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1f}"


def _by_key(found: dict[Run, dict]) -> dict[tuple, dict]:
    return {(r.direction, r.method, r.corruption, r.severity): doc for r, doc in found.items()}


def _cells(cfg: dict, direction: str) -> tuple[list[tuple[str, int]], list[str]]:
    cells = [c for c in query_cells(cfg, direction) if c[0] != CLEAN]
    multi = len({s for _, s in cells}) > 1
    return cells, [cell_label(c, s, multi) for c, s in cells]


def query_provenance(cfg: dict, direction: str) -> tuple[str | None, dict]:
    """Where this direction's query sets came from (the authors' prebuilt files, and for
    captions which semantic-filter model re-drew them), read from the query manifests."""
    from ..config import queries_path
    from ..corrupt.semfilter import REFERENCE_MODEL

    info: dict = {"prebuilt": [], "filter": {}}
    for c, s in query_cells(cfg, direction):
        if c == CLEAN:
            continue
        path = Path(queries_path(cfg, direction, c, s))
        path = path / "manifest.json" if path.is_dir() else path
        try:
            meta = json.loads(path.read_text()).get("meta") or {}
        except (OSError, ValueError):
            continue
        if meta.get("prebuilt"):
            info["prebuilt"].append(c)
        if meta.get("filter"):
            f = meta["filter"]
            info["filter"][TEXT_LABELS.get(c, c)] = {k: f.get(k) for k in ("model", "never_reached", "n_filtered",
                                                                             "mean_tries")}
    parts = []
    if info["prebuilt"]:
        parts.append(f"{len(info['prebuilt'])} query sets are the TCR authors' prebuilt files "
                     f"(datasets.*.prebuilt).")
    if info["filter"]:
        models = sorted({f["model"] for f in info["filter"].values()})
        dev = "" if models == [REFERENCE_MODEL] else (f" — a documented deviation: the reference filters with "
                                                      f"{REFERENCE_MODEL}")
        counts = ", ".join(f"{lab} {f['never_reached']}/{f['n_filtered']}" for lab, f in info["filter"].items())
        parts.append(f"Semantic filter (cosine >= threshold to the original caption, re-drawn as the reference "
                     f"does): model {', '.join(models)}{dev}. Captions that never reached the threshold (kept "
                     f"as the last draw): {counts}.")
    return (" ".join(parts) or None), info


def _is_sequential(doc: dict) -> bool:
    """Per-batch domains and not a mixed stream (a file without a ``stream`` block counts)."""
    return bool(doc["online"].get("domain")) and (doc.get("stream") or {}).get("kind", "sequential") == "sequential"


def sequential_curves(found: dict[Run, dict], direction: str) -> dict[str, list[tuple[str, list[float]]]]:
    """{method: [(domain, per-batch R@1), ...]} for results files of sequential streams; a
    method with several sequential streams is keyed ``"<method> (<stream>)"``."""
    docs = [(run, doc) for run, doc in sorted(found.items(), key=lambda kv: kv[0].result_path)
            if run.direction == direction and _is_sequential(doc)]
    per_method = defaultdict(int)
    for run, _ in docs:
        per_method[run.method] += 1
    out: dict[str, list[tuple[str, list[float]]]] = {}
    for run, doc in docs:
        segments: list[tuple[str, list[float]]] = []
        for dom, r1 in zip(doc["online"]["domain"], doc["online"]["batch_r1"]):
            if not segments or segments[-1][0] != dom:
                segments.append((str(dom), []))
            segments[-1][1].append(float(r1))
        out[run.method if per_method[run.method] == 1 else f"{run.method} ({run.corruption})"] = segments
    return out


def independent_r1(found: dict[Run, dict], direction: str) -> dict[str, dict[str, float]]:
    """{method: {"<corruption>-s<severity>": R@1}} of the one-domain runs (the streams' references)."""
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for r, doc in found.items():
        if r.direction == direction and not doc["online"].get("domain") and not doc.get("stream"):
            out[r.method][f"{r.corruption}-s{r.severity}"] = doc["metrics"]["R@1"]
    return dict(out)
