"""Uncertainty from per-query outcomes (:mod:`qshift.outcomes`): bootstrap intervals, paired
differences to ``source``, intervals of the Avg columns, and matched stream comparisons.

- **Interval of a cell** (one method, one query set): the 95% percentile bootstrap interval of
  R@K over the queries — resample the set's queries with replacement ``n_boot`` times. A query
  is an image for i2t and a caption for t2i, so t2i resamples *captions* (the issue's choice);
  the five captions of one image share that image's gallery entry and are not independent, so
  a t2i interval is somewhat narrower than one that resamples images (clusters) would be.
- **Paired Δ to source**: every method of a cell is resampled with the *same* indices (queries
  matched by query id), and the interval is that of the per-replicate difference. A method
  against itself gives exactly 0 ± 0. A Δ is *significant* (marked ``*``) when its 95%
  interval excludes 0.
- **Avg**: each cell is resampled on its own (seeded per cell) and the replicates are averaged
  over the cells — the interval of the plain mean over the corruption columns; Δ likewise.
- **Matched streams**: a stream's queries are byte-identical to the same queries of each
  domain's own query set, so a stream's per-domain R@1 is compared with the same method's
  independent run on exactly those queries (matched by query id); the gap's interval is a paired
  bootstrap over them. For ``source`` (no adaptation) every gap is exactly 0.

Seeds: ``derive_seed("bootstrap", seed, direction, corruption, severity)`` — the same resample
for every method of a cell, in the adapt stage (``metrics_ci`` of a results file) and in the
report alike. Vectorised: one (chunk, n) index matrix per chunk, all methods of a cell at once.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .errors import InputError
from .io import derive_seed
from .outcomes import read_outcomes, recall_from_ranks
from .results import CLEAN, RECALL_KS

N_BOOT = 1000
LEVEL = 0.95
BASELINE = "source"


# -- the bootstrap ---------------------------------------------------------------------------------

def _pct(hits: np.ndarray) -> float:
    """R@K in percent exactly as the adapt loop computes it (100 * hits / n)."""
    return 100.0 * int(np.sum(hits)) / len(hits)


def cell_seed(seed: int, direction: str, corruption: str, severity: int) -> int:
    return derive_seed("bootstrap", seed, direction, corruption, int(severity))


def replicates(hits: np.ndarray, seed: int, n_boot: int = N_BOOT, budget: int = 1 << 24) -> np.ndarray:
    """(M, n) hit matrix (M methods on the same n queries) -> (M, n_boot) R@K in percent, every
    method resampled with the same indices."""
    hits = np.atleast_2d(np.asarray(hits, dtype=bool))
    m, n = hits.shape
    if n == 0:
        raise InputError("bootstrap over zero queries")
    rng = np.random.default_rng(seed)
    chunk = max(1, budget // max(1, m * n))
    out = np.empty((m, n_boot))
    for start in range(0, n_boot, chunk):
        c = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(c, n))
        out[:, start:start + c] = hits[:, idx].mean(-1) * 100.0
    return out


def interval(reps: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval along the last axis."""
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(reps, [a, 1.0 - a], axis=-1)
    return float(lo), float(hi)


def significant(lo: float, hi: float) -> bool:
    return lo > 0.0 or hi < 0.0


def mark(lo: float, hi: float) -> str:
    return "*" if significant(lo, hi) else ""


def check_and_interval(outcomes: dict, metrics: dict, seed: int, key: dict, n_boot: int = N_BOOT) -> dict:
    """The adapt stage's ``metrics_ci``: {"R@K_lo", "R@K_hi"} of one run; first checks that the
    ranks reproduce the run's R@K exactly (they are computed from the same top-K)."""
    from_ranks = recall_from_ranks(outcomes["rank"])
    if from_ranks != {k: metrics[k] for k in from_ranks}:
        raise RuntimeError(f"per-query ranks give {from_ranks}, the stream counted {metrics}")
    rank = outcomes["rank"][np.argsort(outcomes["query_id"], kind="stable")]
    seed = cell_seed(seed, key["direction"], key["corruption"], key["severity"])
    out = {}
    for k in RECALL_KS:
        lo, hi = interval(replicates(rank < k, seed, n_boot)[0])
        out[f"R@{k}_lo"], out[f"R@{k}_hi"] = lo, hi
    return out


# -- a direction's table ------------------------------------------------------------------------------

def _aligned(docs: dict[str, dict]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Query ids common to every method's run, sorted, and each method's ranks on them."""
    common = None
    for d in docs.values():
        common = set(d["query_id"].tolist()) if common is None else common & set(d["query_id"].tolist())
    ids = np.asarray(sorted(common), dtype=np.int64)
    ranks = {}
    for m, d in docs.items():
        order = np.argsort(d["query_id"], kind="stable")
        pos = np.searchsorted(d["query_id"][order], ids)
        ranks[m] = d["rank"][order][pos]
    return ids, ranks


def direction_intervals(cfg: dict, direction: str, found: dict, metric: str = "R@1",
                        n_boot: int | None = None) -> dict:
    """Intervals for the report's direction table.

    Returns {"metric", "columns", "ci": {method: {column: (lo, hi)}}, "delta": {method: {column:
    {"d", "lo", "hi", "sig"}}}, "without_outcomes": [results paths], "n_boot"}. Columns: the
    corruption cells (the report's labels), "Avg" (methods with every cell) and "Clean".
    """
    from .config import query_cells
    from .report import cell_label

    k = int(metric.split("@")[1])
    n_boot = int(n_boot or (cfg.get("report") or {}).get("bootstrap", N_BOOT))
    seed = int(cfg["seed"])
    cells = [c for c in query_cells(cfg, direction) if c[0] != CLEAN]
    multi = len({s for _, s in cells}) > 1
    methods = list(cfg["adapt"]["methods"])
    by_key = {(r.direction, r.method, r.corruption, r.severity): r for r in found}
    ci: dict[str, dict] = {m: {} for m in methods}
    delta: dict[str, dict] = {m: {} for m in methods if m != BASELINE}
    point: dict[str, dict] = {m: {} for m in methods}
    reps_by_cell: dict[str, dict[str, np.ndarray]] = {}
    without: list[str] = []
    for c, s in cells + [(CLEAN, 0)]:
        label = "Clean" if c == CLEAN else cell_label(c, s, multi)
        docs = {}
        for m in methods:
            run = by_key.get((direction, m, c, s))
            if run is None or (found.get(run) or {}).get("status") == "diverged":  # no R@K to bound
                continue
            doc = read_outcomes(run.outcomes_path)
            if doc is None:
                without.append(run.result_path)
                continue
            docs[m] = doc
        if not docs:
            continue
        ids, ranks = _aligned(docs)
        if len(ids) == 0:
            continue
        names = list(ranks)
        reps = replicates(np.stack([ranks[m] < k for m in names]), cell_seed(seed, direction, c, s), n_boot)
        for i, m in enumerate(names):
            ci[m][label] = interval(reps[i])
            point[m][label] = _pct(ranks[m] < k)
        if c != CLEAN:
            reps_by_cell[label] = dict(zip(names, reps))
        if BASELINE in names:
            b = names.index(BASELINE)
            for i, m in enumerate(names):
                if m != BASELINE:
                    lo, hi = interval(reps[i] - reps[b])
                    delta[m][label] = {"d": point[m][label] - point[BASELINE][label], "lo": lo, "hi": hi,
                                       "sig": significant(lo, hi)}
    labels = [cell_label(c, s, multi) for c, s in cells]
    if labels and all(lab in reps_by_cell for lab in labels):
        full = [m for m in methods if all(m in reps_by_cell[lab] for lab in labels)]
        avg = {m: np.mean([reps_by_cell[lab][m] for lab in labels], axis=0) for m in full}
        for m in full:
            ci[m]["Avg"] = interval(avg[m])
            point[m]["Avg"] = float(np.mean([point[m][lab] for lab in labels]))
        if BASELINE in avg:
            for m in full:
                if m != BASELINE:
                    lo, hi = interval(avg[m] - avg[BASELINE])
                    delta[m]["Avg"] = {"d": point[m]["Avg"] - point[BASELINE]["Avg"], "lo": lo, "hi": hi,
                                       "sig": significant(lo, hi)}
    return {"metric": metric, "columns": labels + ["Avg", "Clean"], "ci": ci, "delta": delta, "point": point,
            "without_outcomes": without, "n_boot": n_boot}


# -- formatting (called from qshift.report) ------------------------------------------------------------

def _f(v) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1f}"


def half_width(lo: float, hi: float) -> float:
    return (hi - lo) / 2.0


def ci_cell(v, ci: tuple[float, float] | None) -> str:
    """``61.2 ±2.1`` (± half the 95% interval; the bounds are in summary.json)."""
    if v is None:
        return "—"
    return _f(v) if ci is None else f"{_f(v)} ±{half_width(*ci):.1f}"


def delta_cell(d: dict | None) -> str:
    """``+1.3* ±0.8``: the paired Δ, ``*`` when its 95% interval excludes 0."""
    if d is None:
        return "—"
    return f"{d['d']:+.1f}{'*' if d['sig'] else ''} ±{half_width(d['lo'], d['hi']):.1f}"


def ci_rows(table: dict, unc: dict, baseline: str | None = BASELINE) -> tuple[list[str], list[list[str]]]:
    """The report's R@1 table with intervals: header and rows (Avg also carries Δ to source)."""
    cols = table["columns"]
    rows = []
    for method, row in table["rows"].items():
        cells = []
        for c in cols:
            text = ci_cell(row.get(c), unc["ci"].get(method, {}).get(c))
            d = unc["delta"].get(method, {}).get(c) if method != baseline else None
            if c == "Avg" and d is not None:
                text += f" ({d['d']:+.1f}{'*' if d['sig'] else ''})"
            cells.append(text)
        rows.append([method] + cells)
    return ["Method"] + cols, rows


def delta_rows(unc: dict) -> tuple[list[str], list[list[str]]]:
    cols = unc["columns"]
    return ["Method"] + cols, [[m] + [delta_cell(row.get(c)) for c in cols] for m, row in unc["delta"].items()]


def has_intervals(unc: dict | None) -> bool:
    return bool(unc) and any(unc["ci"].values())


def note(unc: dict) -> str:
    return (f"± is half the 95% bootstrap interval over the queries ({unc['n_boot']} resamples, seeded; i2t "
            "resamples images, t2i captions); Avg: each cell resampled, then averaged. Δ to `source` is a "
            "paired bootstrap (same resampled queries); `*` marks a Δ whose 95% interval excludes 0. Exact "
            "bounds: summary.json (`_lo`/`_hi`).")


def missing_note(unc: dict) -> str | None:
    n = len(unc["without_outcomes"])
    if not n:
        return None
    first = unc["without_outcomes"][0]
    return (f"**No intervals for {n} run(s)**: their results files have no per-query outcomes (`.npz` beside the "
            f"JSON; written by adapt runs since per-query outcomes exist), e.g. `{first}` — rerun their adapt "
            "jobs to get intervals and significance marks.")


def summary_companions(unc: dict) -> dict[str, dict]:
    """Per method, the summary.json companions of ``avg_r1``/``clean_r1``/``cells_r1`` and the Δs."""
    out: dict[str, dict] = {}
    for m, cis in unc["ci"].items():
        s: dict = {}
        for col, key in (("Avg", "avg_r1"), ("Clean", "clean_r1")):
            if col in cis:
                s[f"{key}_lo"], s[f"{key}_hi"] = cis[col]
        cells = {c: v for c, v in cis.items() if c not in ("Avg", "Clean")}
        if cells:
            s["cells_r1_lo"] = {c: v[0] for c, v in cells.items()}
            s["cells_r1_hi"] = {c: v[1] for c, v in cells.items()}
        d = unc["delta"].get(m) or {}
        if d:
            s["delta_to_source"] = {c: {"d": v["d"], "d_lo": v["lo"], "d_hi": v["hi"], "significant": v["sig"]}
                                    for c, v in d.items()}
        out[m] = s
    return out


def error_bars(table: dict, unc: dict | None) -> dict[str, dict[str, tuple[float, float]]] | None:
    """{method: {column: (below, above)}} for the bar plot (None without intervals)."""
    if not has_intervals(unc):
        return None
    out = {}
    for m, row in table["rows"].items():
        out[m] = {c: (row[c] - lo, hi - row[c]) for c, (lo, hi) in unc["ci"].get(m, {}).items()
                  if row.get(c) is not None}
    return out


# -- matched streams ---------------------------------------------------------------------------------------

def matched_streams(cfg: dict, direction: str, found: dict, tables: dict[str, dict],
                    n_boot: int | None = None) -> list[dict]:
    """Compare each stream's per-domain R@1 with the method's independent runs on exactly the
    stream's queries of that domain (by query id), with a paired bootstrap interval of the gap.

    Updates ``tables`` (:func:`qshift.report.stream_tables`) in place where both outcome files
    exist: a cell's ``alone`` becomes the matched R@1 and a row's ``alone`` the matched R@1
    over all the stream's queries; returns one row per (stream, method, domain).
    """
    from .config import streams as stream_defs
    from .outcomes import arrival_labels
    from .streams import domain_label, stream_domains

    n_boot = int(n_boot or (cfg.get("report") or {}).get("bootstrap", N_BOOT))
    seed = int(cfg["seed"])
    by_key = {(r.direction, r.method, r.corruption, r.severity): r for r in found}
    defs = stream_defs(cfg, direction)
    rows = []
    for name, table in tables.items():
        doms = {domain_label(c, s): (c, s) for c, s in stream_domains(defs[name], direction)}
        for method, row in table["rows"].items():
            run = by_key.get((direction, method, name, 0))
            stream = read_outcomes(run.outcomes_path) if run else None
            if stream is None or "domain" not in stream:
                continue
            labels = arrival_labels(stream)
            all_alone, complete = [], True
            for d, (c, s) in doms.items():
                sel = labels == d
                alone_run = by_key.get((direction, method, c, s))
                alone = read_outcomes(alone_run.outcomes_path) if alone_run else None
                if alone is None or not sel.any():
                    complete = False
                    continue
                lookup = dict(zip(alone["query_id"].tolist(), alone["rank"].tolist()))
                ids = stream["query_id"][sel]
                if any(i not in lookup for i in ids.tolist()):
                    raise InputError(f"stream {name}: some queries of domain {d} are not in {alone_run.result_path}")
                r_stream = stream["rank"][sel]
                r_alone = np.asarray([lookup[i] for i in ids.tolist()])
                h = np.stack([r_stream < 1, r_alone < 1])
                reps = replicates(h, derive_seed("bootstrap-stream", seed, direction, name, d), n_boot)
                lo, hi = interval(reps[0] - reps[1])
                r1, r1_alone = (_pct(x) for x in h)
                all_alone.append(r_alone < 1)
                cell = row["by_domain"].get(d)
                if cell is not None:
                    cell.update(alone=r1_alone, matched=True, gap_lo=lo, gap_hi=hi)
                rows.append({"stream": name, "kind": table["kind"], "method": method, "domain": d,
                             "n": int(sel.sum()), "r1": r1, "alone_r1": r1_alone, "gap": r1 - r1_alone,
                             "gap_lo": lo, "gap_hi": hi, "significant": significant(lo, hi)})
            if complete and all_alone:
                row["alone"] = _pct(np.concatenate(all_alone))
                row["matched"] = True
    return rows


MATCHED_COLUMNS = ["Stream", "Method", "Domain", "Queries", "R@1 in stream", "R@1 alone (same queries)", "Gap"]


def matched_rows(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    return MATCHED_COLUMNS, [[f"{r['stream']} ({r['kind']})", r["method"], r["domain"], str(r["n"]), _f(r["r1"]),
                              _f(r["alone_r1"]), delta_cell({"d": r["gap"], "lo": r["gap_lo"], "hi": r["gap_hi"],
                                                             "sig": r["significant"]})] for r in rows]


MATCHED_NOTE = ("Matched: each domain's R@1 in the stream against the same method adapted to that domain alone, "
                "on exactly the same queries (matched by query id; a stream's query is byte-identical to its "
                "domain's own). Gap < 0: the stream lost accuracy there (forgetting, for a sequential stream); "
                "± half the 95% paired bootstrap interval; `*`: the interval excludes 0. `source` does not adapt, "
                "so its gaps are 0.")


SEGMENTS_NOTE = ("Sequential streams, batch by batch: each domain segment's mean batch R@1 and its drift (a "
                 "boundary batch mixes two domains, so these are not per-query numbers; the forgetting is the "
                 "matched gap above).")


def matched_reference(rows: list[dict], kind: str = "sequential") -> dict[str, dict[str, float]]:
    """{method: {domain: matched alone R@1}} of the given kind's streams (forgetting plots)."""
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        if r["kind"] == kind:
            out.setdefault(r["method"], {})[r["domain"]] = r["alone_r1"]
    return out


def outcomes_exist(result_path: str | Path) -> bool:
    return Path(result_path).with_suffix(".npz").is_file()


# -- across seeds ------------------------------------------------------------------------------------------

# two-sided 95% Student t quantiles t_{0.975, df} for df = 1..30 (beyond: the normal's 1.96)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def t_interval(values: list[float]) -> tuple[float, float, float] | None:
    """(mean, lo, hi): the 95% Student t interval of the mean over seeds (None for < 2 values)."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return None
    mean, sd = float(v.mean()), float(v.std(ddof=1))
    t = _T975[len(v) - 2] if len(v) - 1 <= len(_T975) else 1.96
    h = t * sd / math.sqrt(len(v))
    return mean, mean - h, mean + h


def seed_summary(cfg: dict, direction: str, by_seed: dict[int, dict], n_boot: int | None = None) -> dict:
    """Each method's Avg R@1 per adaptation seed (with that seed's bootstrap interval over the
    queries) and across seeds: the mean with its 95% t interval over the seeds, and the Δ to
    ``source`` paired by seed (the same seed's stream order for both). A seed whose row is
    incomplete (a missing or diverged cell) is left out of that method's across-seed numbers.

    Returns {"seeds": [...], "rows": {method: {"per_seed": {seed: {"avg", "lo", "hi"}}, "n",
    "mean", "lo", "hi", "delta": {"d", "lo", "hi", "sig"} | None}}}.
    """
    seeds = list(by_seed)
    per: dict[str, dict[int, dict]] = {m: {} for m in cfg["adapt"]["methods"]}
    for seed, found in by_seed.items():
        unc = direction_intervals(cfg, direction, found, n_boot=n_boot)
        for m, pts in unc["point"].items():
            if "Avg" in pts:
                lo, hi = unc["ci"][m]["Avg"]
                per.setdefault(m, {})[seed] = {"avg": pts["Avg"], "lo": lo, "hi": hi}
    rows: dict[str, dict] = {}
    base = per.get(BASELINE, {})
    for m, got in per.items():
        row: dict = {"per_seed": got, "n": len(got), "mean": None, "lo": None, "hi": None, "delta": None}
        ti = t_interval([got[s]["avg"] for s in seeds if s in got])
        if ti is not None:
            row["mean"], row["lo"], row["hi"] = ti
        elif got:
            row["mean"] = float(np.mean([v["avg"] for v in got.values()]))
        paired = [s for s in seeds if s in got and s in base]
        if m != BASELINE:
            td = t_interval([got[s]["avg"] - base[s]["avg"] for s in paired])
            if td is not None:
                row["delta"] = {"d": td[0], "lo": td[1], "hi": td[2], "sig": significant(td[1], td[2])}
        rows[m] = row
    return {"seeds": seeds, "rows": rows}


def seed_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    """The report's seeds table: Avg R@1 per seed (± its bootstrap), mean ± t interval, Δ to source."""
    seeds = summary["seeds"]
    header = ["Method"] + [f"seed {s}" for s in seeds] + ["Mean over seeds", "Δ to source (paired by seed)"]
    rows = []
    for m, row in summary["rows"].items():
        cells = [ci_cell(row["per_seed"][s]["avg"], (row["per_seed"][s]["lo"], row["per_seed"][s]["hi"]))
                 if s in row["per_seed"] else "—" for s in seeds]
        mean = "—" if row["mean"] is None else (
            _f(row["mean"]) if row["lo"] is None else f"{_f(row['mean'])} ±{half_width(row['lo'], row['hi']):.1f}")
        if row["n"] and row["n"] < len(seeds):
            mean += f" (n={row['n']})"
        rows.append([m] + cells + [mean, "" if m == BASELINE else delta_cell(row["delta"])])
    return header, rows


SEEDS_NOTE = ("Across adaptation seeds (params `seeds`; a seed sets the stream order and torch's RNG, the queries "
              "and the source model are the same): each seed's Avg R@1 ± half its 95% bootstrap interval over the "
              "queries; the mean over seeds ± half its 95% Student t interval over the seeds; the Δ to `source` "
              "paired by seed, `*` when its interval excludes 0. The tables above are the first seed's.")
