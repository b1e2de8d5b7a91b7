"""Reports: paper-form tables (rows = methods, columns = corruptions, Avg), plots, HTML.

Reads exactly the results files the experiment grid declares (``config.runs``); a missing
or unreadable file becomes a "not run / failed" entry with its reason, never a silent gap.

Outputs (``report.dir``): ``report.md``, a self-contained ``report.html`` (inline CSS,
figures embedded as base64 data URIs, no scripts, nothing fetched), ``summary.json`` and
``figures/``. Per direction: R@1/R@5/R@10 tables with the clean reference column, deltas to
``source``, the paper's numbers beside reproduced ones where the benchmark matches
(:mod:`qshift.paper`), and plots: R@1 per shift, R@1 against severity (grids with several
severities), a method x corruption heatmap, online R@1 along the stream, and forgetting on
sequential streams.

Streams (params ``streams``, :mod:`qshift.streams`): per direction a method x stream table,
each stream's R@1 beside the same method's independent runs on the stream's domains
(:func:`stream_tables`), and per domain for mixed streams. A results file whose ``online``
block carries ``domain`` (one domain label per batch, e.g. ``gaussian_noise-s5``) and that is
not a mixed stream is a sequential stream; the report splits its per-batch R@1 by domain
(:func:`sequential_curves`) and compares each domain with that method's independent run on
the same domain (:func:`forgetting_table`).

MLflow: results the current store does not hold (looked up by run key, whatever their
``mlflow.logged`` says) are replayed to it (the results files are never modified) and every run of the grid is attached to its sweep's parent run;
the report lists what was replayed and what still fails (:func:`qshift.tracking.sync_sweep`).
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import shutil
from collections import defaultdict
from pathlib import Path

from . import faults, paper, reportset, stats
from .config import EXAMPLES_DIR, MODEL_DIR, TUNED, Run, primary_seed, query_cells, run_seeds, runs, streams
from .corrupt.text import TEXT_LABELS, not_run_types
from .errors import QShiftError
from .io import atomic_path, write_json, write_text
from .results import CLEAN, load_result
from .streams import domain_label, stream_domains

DIRECTION_TITLE = {"i2t": "Image-to-text retrieval (image queries corrupted)",
                   "t2i": "Text-to-image retrieval (caption queries corrupted)"}
METRICS = ("R@1", "R@5", "R@10")
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


# -- tables --------------------------------------------------------------------------------------

def direction_table(cfg: dict, direction: str, found: dict[Run, dict], metric: str = "R@1",
                    diverged: dict[Run, dict] | None = None) -> dict:
    """{method: {cell_label: value, 'Avg': ..., 'Clean': ...}} plus the column order.

    A diverged run's cell is None and listed in ``diverged`` ({method: [labels]}); the Avg of
    a row whose only gaps are diverged cells is over its other cells (``avg_excludes``)."""
    cells, labels = _cells(cfg, direction)
    rows: dict[str, dict[str, float | None]] = {}
    by_key = _by_key(found)
    bad = _by_key(diverged or {})
    marked: dict[str, list[str]] = {}
    excludes: dict[str, list[str]] = {}
    for method in cfg["adapt"]["methods"]:
        row: dict[str, float | None] = {}
        for (c, s), label in zip(cells, labels):
            doc = by_key.get((direction, method, c, s))
            row[label] = doc["metrics"][metric] if doc else None
            if (direction, method, c, s) in bad:
                marked.setdefault(method, []).append(label)
        vals = [row[lab] for lab in labels]
        row["Avg"] = sum(vals) / len(vals) if vals and all(v is not None for v in vals) else None
        kept = [v for lab, v in zip(labels, vals) if lab not in marked.get(method, ())]
        if row["Avg"] is None and method in marked and kept and all(v is not None for v in kept):
            row["Avg"] = sum(kept) / len(kept)
            excludes[method] = [lab for lab in labels if lab in marked[method]]
        clean = by_key.get((direction, method, CLEAN, 0))
        row["Clean"] = clean["metrics"][metric] if clean else None
        if (direction, method, CLEAN, 0) in bad:
            marked.setdefault(method, []).append("Clean")
        rows[method] = row
    return {"columns": labels + ["Avg", "Clean"], "rows": rows, "metric": metric, "diverged": marked,
            "avg_excludes": excludes}


def _cell_text(table: dict, method: str, c: str, v) -> str:
    """A cell's text: the number, "diverged" for a diverged run, and a dagger on an Avg that excludes one."""
    if v is None and c in table.get("diverged", {}).get(method, ()):
        return "diverged"
    return _fmt(v) + ("†" if c == "Avg" and method in table.get("avg_excludes", {}) else "")


def avg_note(table: dict) -> str | None:
    """The line under a table whose Avg leaves out diverged runs (None when none does)."""
    ex = table.get("avg_excludes") or {}
    if not ex:
        return None
    return ("† Avg over the cells that did not diverge; diverged runs have no R@K and are left out: " +
            "; ".join(f"{m}: {', '.join(labels)}" for m, labels in ex.items()) + ".")


def delta_table(table: dict, baseline: str = BASELINE) -> dict | None:
    """Each method's difference to the baseline, cell by cell (None without a baseline row)."""
    base = table["rows"].get(baseline)
    if base is None:
        return None
    rows = {}
    for method, row in table["rows"].items():
        if method == baseline:
            continue
        rows[method] = {c: (row[c] - base[c] if row.get(c) is not None and base.get(c) is not None else None)
                        for c in table["columns"]}
    return {"columns": table["columns"], "rows": rows, "metric": table.get("metric", "R@1")}


def markdown_table(table: dict, baseline: str | None = BASELINE) -> str:
    cols = table["columns"]
    lines = ["| Method | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    base = table["rows"].get(baseline) if baseline else None
    for method, row in table["rows"].items():
        cells = []
        for c in cols:
            v = row.get(c)
            text = _cell_text(table, method, c, v)
            if c == "Avg" and base is not None and method != baseline and v is not None and base.get(c) is not None:
                text += f" ({v - base[c]:+.1f})"
            cells.append(text)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_delta_table(delta: dict) -> str:
    cols = delta["columns"]
    lines = ["| Method | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for method, row in delta["rows"].items():
        lines.append(f"| {method} | " + " | ".join("—" if row[c] is None else f"{row[c]:+.1f}" for c in cols) + " |")
    return "\n".join(lines)


def paper_comparison(cfg: dict, direction: str, found: dict[Run, dict]) -> dict:
    """Reproduced vs paper R@1 for the cells both have: {'match', 'note', 'columns', 'rows'}."""
    dataset, model = cfg["benchmark"], cfg["model"]["name"]
    m = paper.match(dataset, model)
    if m is None:
        return {"match": None, "columns": [], "rows": {},
                "note": f"No paper reference for `{dataset}` / `{model}`: the TCR paper reports "
                        f"{paper.available()}; nothing here is comparable."}
    cells, labels = _cells(cfg, direction)
    table = direction_table(cfg, direction, found, "R@1")
    wanted = [(c, s, lab) for (c, s), lab in zip(cells, labels)] + [("avg", None, "Avg"), (CLEAN, 0, "Clean")]
    if direction == "t2i":  # listed types that cannot run here still show the paper's number (ours: —)
        levels = cfg["corrupt"]["text"]["levels"]
        multi = len({s for _, s in cells} | set(levels)) > 1
        wanted[len(cells):len(cells)] = [(n, lv, cell_label(n, lv, multi)) for n in not_run_types(cfg) for lv in levels]
    columns, rows = [], {}
    for method in cfg["adapt"]["methods"]:
        for c, s, lab in wanted:
            ref = paper.lookup(dataset, model, direction, method, c, s)
            if ref is None:
                continue
            if lab not in columns:
                columns.append(lab)
            rows.setdefault(method, {})[lab] = (table["rows"][method].get(lab), ref)
    columns = [lab for _, _, lab in wanted if lab in columns]
    order = {lab: i for i, lab in enumerate(TEXT_LABELS.get(c, c) for c in paper.TEXT_TYPES_15.values())}
    if direction == "t2i":  # the paper's order of the 15 types, whatever ran
        columns.sort(key=lambda lab: (lab in ("Avg", "Clean"), order.get(lab.split(" ")[0], len(order))))
    note = f"Paper: {paper.conditions(dataset, model, direction) or 'TCR paper'} ({m[0]} / {m[1]})."
    if not rows:
        note += " It has no number for any cell of this grid (image corruptions need severity 5)."
    elif "Avg" in columns:
        note += " The paper's Avg is over all of its corruptions; ours over this grid's."
    return {"match": m, "columns": columns, "rows": rows, "note": note}


def query_provenance(cfg: dict, direction: str) -> tuple[str | None, dict]:
    """Where this direction's query sets came from (the authors' prebuilt files, and for
    captions which semantic-filter model re-drew them), read from the query manifests."""
    from .config import queries_path
    from .corrupt.semfilter import REFERENCE_MODEL

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


def markdown_paper_table(cmp: dict) -> str:
    cols = cmp["columns"]
    lines = ["| Method (ours / paper) | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for method, row in cmp["rows"].items():
        lines.append(f"| {method} | " + " | ".join(
            f"{_fmt(row[c][0])} / {_fmt(row[c][1])}" if c in row else "" for c in cols) + " |")
    return "\n".join(lines)


# -- sequential streams ------------------------------------------------------------------------------

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


def stream_tables(cfg: dict, direction: str, found: dict[Run, dict],
                  reference: dict[str, dict[str, float]]) -> dict[str, dict]:
    """Per stream of the direction: {"kind", "domains", "rows": {method: {"r1", "alone",
    "by_domain": {domain: {"r1", "alone", "n"}}}}}.

    ``alone`` is the method's independent R@1 on the stream's domains, weighted by how many of
    the stream's queries each domain has (None when one of those runs is not in the grid): what
    the stream would score if mixing or ordering the domains made no difference.
    """
    by_key = _by_key(found)
    methods = [m for m in cfg["adapt"]["methods"] if m in set((cfg.get("streams") or {}).get("methods") or [])]
    out: dict[str, dict] = {}
    for name, spec in streams(cfg, direction).items():
        domains = [domain_label(c, s) for c, s in stream_domains(spec, direction)]
        rows = {}
        for method in methods:
            doc = by_key.get((direction, method, name, 0))
            by_dom = (doc or {}).get("metrics_by_domain") or {}
            ref = reference.get(method, {})
            cells = {d: {"r1": by_dom.get(d, {}).get("R@1"), "alone": ref.get(d),
                         "n": by_dom.get(d, {}).get("n_queries")} for d in domains}
            weights = {d: (c["n"] if c["n"] is not None else 1) for d, c in cells.items()}
            alone = (sum(weights[d] * cells[d]["alone"] for d in domains) / sum(weights.values())
                     if all(cells[d]["alone"] is not None for d in domains) and sum(weights.values()) else None)
            rows[method] = {"r1": doc["metrics"]["R@1"] if doc else None, "alone": alone, "by_domain": cells}
        out[name] = {"kind": spec["kind"], "domains": domains, "rows": rows}
    return out


def _vs(ours: float | None, alone: float | None) -> str:
    """``ours / alone (Δ)``: a stream's R@1 beside the independent runs' (Δ < 0: the stream lost)."""
    if ours is None:
        return "—"
    if alone is None:
        return f"{_fmt(ours)} / —"
    return f"{_fmt(ours)} / {_fmt(alone)} ({ours - alone:+.1f})"


def _stream_rows(tables: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """Method x stream: header and rows of ``in stream / alone (Δ)`` cells."""
    names = list(tables)
    methods = list(dict.fromkeys(m for t in tables.values() for m in t["rows"]))
    header = ["Method"] + [f"{n} ({tables[n]['kind']}, {len(tables[n]['domains'])} domains)" for n in names]
    rows = [[m] + [_vs(tables[n]["rows"][m]["r1"], tables[n]["rows"][m]["alone"]) if m in tables[n]["rows"]
                   else "" for n in names] for m in methods]
    return header, rows


def _mixed_domain_rows(name: str, table: dict) -> tuple[list[str], list[list[str]]]:
    header = ["Method"] + table["domains"]
    rows = [[m] + [_vs(row["by_domain"][d]["r1"], row["by_domain"][d]["alone"]) for d in table["domains"]]
            for m, row in table["rows"].items()]
    return header, rows


def _md_grid(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _html_grid(header: list[str], rows: list[list[str]]) -> str:
    head = "<tr>" + "".join(f"<th class='m'>{_e(c)}</th>" if i == 0 else f"<th>{_e(c)}</th>"
                            for i, c in enumerate(header)) + "</tr>"
    body = "".join("<tr>" + "".join(f"<td class='m'>{_e(v)}</td>" if i == 0 else f"<td>{_e(v)}</td>"
                                    for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table>{head}{body}</table>"


STREAMS_NOTE = ("Multi-domain query streams (params `streams`): **mixed** — each query's domain is drawn at random "
                "from the stream's set, so every batch mixes shifts (REST's multi-distribution shift); "
                "**sequential** — the domains arrive one after another in equal blocks. A cell reads "
                "*R@1 in the stream / the same method adapted to each domain alone* (its independent runs, "
                "weighted by the stream's queries per domain) and the difference (< 0: the stream lost accuracy).")


def forgetting_table(curves: dict[str, list[tuple[str, list[float]]]],
                     reference: dict[str, dict[str, float]] | None = None) -> dict[str, list[dict]]:
    """Per method and domain segment: mean R@1 in the stream, the first and last batch, the
    reference (the method's independent run on that domain) and the gap to it.

    A negative ``gap`` means the sequential stream does worse on that domain than adapting to
    it alone; ``drift`` (last batch - first batch) shows degradation inside a segment.
    """
    out: dict[str, list[dict]] = {}
    for method, segments in curves.items():
        rows = []
        for i, (dom, vals) in enumerate(segments):
            mean = sum(vals) / len(vals) if vals else None
            ref = (reference or {}).get(method.split(" (")[0], {}).get(dom)
            rows.append({"position": i, "domain": dom, "batches": len(vals), "mean_r1": mean,
                         "first_r1": vals[0] if vals else None, "last_r1": vals[-1] if vals else None,
                         "drift": vals[-1] - vals[0] if vals else None, "reference_r1": ref,
                         "gap": (mean - ref) if mean is not None and ref is not None else None})
        out[method] = rows
    return out


def _forgetting_rows(table: dict[str, list[dict]]) -> list[list[str]]:
    return [[method, f"{r['position'] + 1}. {r['domain']}", str(r["batches"]), _fmt(r["mean_r1"]),
             _fmt(r["reference_r1"]), "—" if r["gap"] is None else f"{r['gap']:+.1f}",
             "—" if r["drift"] is None else f"{r['drift']:+.1f}"]
            for method, rows in table.items() for r in rows]


FORGETTING_COLUMNS = ["Method", "Domain (stream order)", "Batches", "R@1 in stream", "R@1 alone", "Gap",
                      "Drift (last - first batch)"]


def markdown_forgetting_table(table: dict[str, list[dict]]) -> str:
    lines = ["| " + " | ".join(FORGETTING_COLUMNS) + " |", "|---|---|" + "---:|" * (len(FORGETTING_COLUMNS) - 2)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in _forgetting_rows(table)])


def html_forgetting_table(table: dict[str, list[dict]]) -> str:
    head = "<tr>" + "".join(f"<th class='m'>{_e(c)}</th>" if i < 2 else f"<th>{_e(c)}</th>"
                            for i, c in enumerate(FORGETTING_COLUMNS)) + "</tr>"
    body = "".join("<tr>" + "".join(f"<td class='m'>{_e(v)}</td>" if i < 2 else f"<td>{_e(v)}</td>"
                                    for i, v in enumerate(row)) + "</tr>" for row in _forgetting_rows(table))
    return f"<table>{head}{body}</table>"


# -- plots ------------------------------------------------------------------------------------------

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _legend(ax, **kw) -> None:
    if ax.get_legend_handles_labels()[0]:  # nothing to show when every run of a panel is missing
        ax.legend(**kw)


def _finish_panels(plt, fig, axes, n: int, title: str, path: Path) -> None:
    """Blank the unused panels of a grid, title it, add one legend, save and close."""
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    _figure_legend(fig, axes)
    _save(fig, path)
    plt.close(fig)


def _method_colour(cfg: dict, method: str) -> str:
    methods = list(cfg["adapt"]["methods"])
    return f"C{methods.index(method) % 10}" if method in methods else "k"


def _figure_legend(fig, axes) -> None:
    """One legend for a grid of panels, with every method that appears in any panel (a panel
    may lack some methods, e.g. the clean one holds only ``adapt.clean_methods``)."""
    handles: dict[str, object] = {}
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(len(handles), 9),
                   fontsize=8, bbox_to_anchor=(0.5, -0.02))
        fig.subplots_adjust(bottom=0.12)


def _save(fig, path: Path) -> None:
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")


def plot_bars(table: dict, title: str, path: Path, errors: dict | None = None) -> None:
    import numpy as np

    plt = _plt()
    cols = list(table["columns"])
    methods = list(table["rows"])
    x = np.arange(len(cols))
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(cols) + 2), 3.8))
    for i, m in enumerate(methods):
        vals = [table["rows"][m].get(c) for c in cols]
        err = None if errors is None else np.array([errors.get(m, {}).get(c, (0.0, 0.0)) for c in cols]).T
        ax.bar(x + i * width - 0.4 + width / 2, [v if v is not None else 0 for v in vals], width, label=m,
               yerr=err, capsize=2 if err is not None else 0, error_kw={"lw": 0.8})
    ax.set_xticks(x, cols, rotation=30, ha="right")
    ax.set_ylabel(f"{table.get('metric', 'R@1')} (%)")
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=min(len(methods), 5))
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)
    plt.close(fig)


def plot_heatmap(table: dict, title: str, path: Path) -> None:
    """Methods x corruption cells (and Avg, Clean), coloured and annotated by R@1."""
    import numpy as np

    plt = _plt()
    cols, methods = list(table["columns"]), list(table["rows"])
    data = np.array([[np.nan if table["rows"][m].get(c) is None else table["rows"][m][c] for c in cols]
                     for m in methods], dtype=float)
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(cols) + 2.5), max(2.2, 0.45 * len(methods) + 1.4)))
    finite = data[np.isfinite(data)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 100.0)
    im = ax.imshow(np.ma.masked_invalid(data), cmap="viridis", aspect="auto", vmin=vmin,
                   vmax=vmax if vmax > vmin else vmin + 1)
    base = table["rows"].get(BASELINE)
    for i, m in enumerate(methods):
        for j, c in enumerate(cols):
            v = data[i, j]
            if not np.isfinite(v):
                ax.text(j, i, "—", ha="center", va="center", fontsize=8, color="grey")
                continue
            text = f"{v:.1f}"
            if base is not None and m != BASELINE and base.get(c) is not None:
                text += f"\n{v - base[c]:+.1f}"
            light = (v - vmin) / max(vmax - vmin, 1e-9) > 0.6
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="black" if light else "white")
    if "Avg" in cols:
        ax.axvline(cols.index("Avg") - 0.5, color="white", lw=3)
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(methods)), methods, fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label=f"{table.get('metric', 'R@1')} (%)", fraction=0.04)
    _save(fig, path)
    plt.close(fig)


def severity_series(cfg: dict, direction: str, found: dict[Run, dict]) -> dict[str, dict[str, list]]:
    """{corruption: {method: [(severity, R@1), ...]}} with the clean run as severity 0."""
    by_key = _by_key(found)
    cells = [c for c in query_cells(cfg, direction) if c[0] != CLEAN]
    out: dict[str, dict[str, list]] = {}
    for corruption in dict.fromkeys(c for c, _ in cells):
        for method in cfg["adapt"]["methods"]:
            pts = []
            clean = by_key.get((direction, method, CLEAN, 0))
            if clean:
                pts.append((0, clean["metrics"]["R@1"]))
            for c, s in cells:
                doc = by_key.get((direction, method, c, s)) if c == corruption else None
                if doc:
                    pts.append((s, doc["metrics"]["R@1"]))
            out.setdefault(corruption, {})[method] = pts
    return out


def plot_severity(cfg: dict, direction: str, found: dict[Run, dict], path: Path) -> bool:
    """R@1 against severity, one panel per corruption; False (no plot) with a single severity."""
    cells = [c for c in query_cells(cfg, direction) if c[0] != CLEAN]
    if len({s for _, s in cells}) < 2:
        return False
    plt = _plt()
    series = severity_series(cfg, direction, found)
    n = len(series)
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.0 * ncols, 2.9 * nrows), squeeze=False)
    for ax, (corruption, methods) in zip(axes.flat, series.items()):
        for method, pts in methods.items():
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method,
                        color=_method_colour(cfg, method))
        ax.set_title(TEXT_LABELS.get(corruption, corruption), fontsize=9)
        ax.set_xlabel("severity (0 = clean)", fontsize=8)
        ax.set_ylabel("R@1 (%)", fontsize=8)
        ax.grid(alpha=0.3)
    _finish_panels(plt, fig, axes, n, f"R@1 against severity — {direction}", path)
    return True


def plot_online(cfg: dict, direction: str, found: dict[Run, dict], path: Path) -> None:
    plt = _plt()
    cells = query_cells(cfg, direction)
    n = len(cells)
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.0 * nrows), squeeze=False)
    by_key = _by_key(found)
    for ax, (c, s) in zip(axes.flat, cells):
        for method in cfg["adapt"]["methods"]:
            doc = by_key.get((direction, method, c, s))
            if doc:
                sizes = doc["online"]["batch_size"]
                seen = [sum(sizes[: i + 1]) for i in range(len(sizes))]
                ax.plot(seen, doc["online"]["cum_r1"], label=method, color=_method_colour(cfg, method))
        ax.set_title(cell_label(c, s, True) if c != CLEAN else "clean", fontsize=9)
        ax.set_xlabel("queries seen", fontsize=8)
        ax.set_ylabel("cumulative R@1 (%)", fontsize=8)
        ax.grid(alpha=0.3)
    _finish_panels(plt, fig, axes, n, f"Online R@1 along the query stream — {direction}", path)


def plot_forgetting(curves: dict[str, list[tuple[str, list[float]]]], path: Path, title: str = "Sequential stream",
                    reference: dict[str, dict[str, float]] | None = None) -> None:
    """Forgetting on a sequential stream through several domains.

    ``curves``: {method: [(domain, per-batch R@1 in that segment), ...]} in stream order.
    Left: per-batch R@1 along the whole stream, domain boundaries marked. Right: each
    segment's mean R@1 against ``reference`` ({method: {domain: R@1}}, the method adapted to
    that domain alone) when given — the gap is what the stream lost (or gained).
    """
    plt = _plt()
    table = forgetting_table(curves, reference)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [3, 2]})
    first = next(iter(curves.values()), [])
    for method, segments in curves.items():
        ys = [v for _, vals in segments for v in vals]
        (line,) = ax.plot(range(len(ys)), ys, label=method, lw=1.2)
        rows = table[method]
        xs = range(len(rows))
        bx.plot(xs, [r["mean_r1"] for r in rows], marker="o", color=line.get_color(), label=f"{method} (stream)")
        if any(r["reference_r1"] is not None for r in rows):
            bx.plot(xs, [r["reference_r1"] if r["reference_r1"] is not None else math.nan for r in rows],
                    marker="x", ls="--", color=line.get_color(), label=f"{method} (alone)")
    start = 0
    for dom, vals in first:  # boundaries of the first method's stream (all share the order)
        if start:
            ax.axvline(start - 0.5, color="grey", lw=0.8, ls=":")
        ax.text(start + len(vals) / 2 - 0.5, 1.01, dom, transform=ax.get_xaxis_transform(), ha="center",
                va="bottom", fontsize=7, rotation=20)
        start += len(vals)
    ax.set_xlabel("batch along the stream", fontsize=8)
    ax.set_ylabel("batch R@1 (%)", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    bx.set_xticks(range(len(first)), [d for d, _ in first], rotation=30, ha="right", fontsize=7)
    bx.set_ylabel("mean R@1 per domain (%)", fontsize=8)
    bx.grid(alpha=0.3)
    bx.legend(fontsize=7)
    fig.suptitle(title, y=1.06)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


# -- HTML -----------------------------------------------------------------------------------------------

CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:0 auto;max-width:1150px;padding:18px 26px;
color:#1d2330;line-height:1.45;background:#fff}
h1{font-size:1.6em;border-bottom:2px solid #2f5d9b;padding-bottom:6px}h2{font-size:1.3em;margin-top:1.8em;
border-bottom:1px solid #d5dbe5;padding-bottom:3px}h3{font-size:1.05em;margin-top:1.3em}
table{border-collapse:collapse;margin:8px 0 14px;font-size:0.88em;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d5dbe5;padding:4px 8px;text-align:right;vertical-align:top}
th{background:#eef2f8}td.m,th.m{text-align:left;font-weight:600}
td.avg,th.avg{border-left:2px solid #2f5d9b;font-weight:600}td.clean,th.clean{background:#f5f5f2;color:#555}
tr.ref td{background:#fbf8ec}.d{display:block;font-size:0.8em}.pos{color:#1b7a33}.neg{color:#b3261e}
.best{font-weight:700;text-decoration:underline}
.note{color:#555;font-size:0.9em}.fig{margin:10px 0 18px}.fig img{max-width:100%;border:1px solid #e3e7ee}
ul.missing li{font-family:monospace;font-size:0.88em}code{background:#f1f3f7;padding:0 3px;border-radius:3px}
.ok{color:#1b7a33}.bad{color:#b3261e}
"""


def _e(s) -> str:
    return html.escape(str(s), quote=True)


def _md_inline(s: str) -> str:
    """Escape, then render `code` spans (the only Markdown the notes use)."""
    parts = _e(s).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def html_table(table: dict, baseline: str | None = BASELINE, deltas: bool = True) -> str:
    cols, rows = table["columns"], table["rows"]
    base = rows.get(baseline) if baseline else None
    best = {c: max((r[c] for r in rows.values() if r.get(c) is not None), default=None) for c in cols}

    def cls(c):
        return {"Avg": "avg", "Clean": "clean"}.get(c, "")

    head = "<tr><th class='m'>Method</th>" + "".join(f"<th class='{cls(c)}'>{_e(c)}</th>" for c in cols) + "</tr>"
    body = []
    for method, row in rows.items():
        tds = []
        for c in cols:
            v = row.get(c)
            mark = " best" if v is not None and len(rows) > 1 and v == best[c] else ""
            text = f"<span class='{mark.strip()}'>{_cell_text(table, method, c, v)}</span>" if mark else \
                _cell_text(table, method, c, v)
            if deltas and base is not None and method != baseline and v is not None and base.get(c) is not None:
                d = v - base[c]
                text += f"<span class='d {'pos' if d > 0 else 'neg' if d < 0 else ''}'>{d:+.1f}</span>"
            tds.append(f"<td class='{cls(c)}'>{text}</td>")
        ref = " class='ref'" if method == baseline else ""
        label = f"{_e(method)}" + (" <span class='note'>(reference)</span>" if method == baseline else "")
        body.append(f"<tr{ref}><td class='m'>{label}</td>{''.join(tds)}</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def html_paper_table(cmp: dict) -> str:
    cols = cmp["columns"]
    head = "<tr><th class='m'>Method</th>" + "".join(f"<th>{_e(c)}<br><span class='note'>ours / paper</span></th>"
                                                     for c in cols) + "</tr>"
    body = []
    for method, row in cmp["rows"].items():
        tds = []
        for c in cols:
            if c not in row:
                tds.append("<td></td>")
                continue
            ours, ref = row[c]
            d = "" if ours is None else f"<span class='d {'pos' if ours >= ref else 'neg'}'>{ours - ref:+.1f}</span>"
            tds.append(f"<td>{_fmt(ours)} / {_fmt(ref)}{d}</td>")
        body.append(f"<tr><td class='m'>{_e(method)}</td>{''.join(tds)}</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"<div class='fig'><img alt='{_e(alt)}' src='data:image/png;base64,{data}'></div>"


# -- the report ------------------------------------------------------------------------------------------

def _safe_uri(uri: str) -> str:
    """A tracking URI without credentials (user:password@host)."""
    if "://" in uri and "@" in uri.split("://", 1)[1].split("/", 1)[0]:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return uri


def _tracking_notes(sync: dict | None) -> list[str]:
    """Markdown lines about MLflow replay for the "Not run / failed" section."""
    if sync is None:
        return ["MLflow: replay not attempted (report built without tracking)."]
    lines = [f"MLflow (`{_safe_uri(sync['uri'])}`, experiment `{sync['experiment']}`, sweep `{sync['sweep']}`):"]
    if sync["replayed"]:
        lines.append("- replayed now (not logged when they ran; the results files are unchanged): " +
                     ", ".join(f"`{r.result_path}`" for r, _ in sync["replayed"]))
    if sync["failing"]:
        lines += ["- still not logged (numbers above are from the results files; the next report run retries):"]
        lines += [f"  - `{r.result_path}`: {err}" for r, err in sync["failing"]]
    if sync.get("error"):
        lines.append(f"- sweep bookkeeping failed: {sync['error']}")
    if not sync["replayed"] and not sync["failing"] and not sync.get("error"):
        lines.append("- every finished run is logged.")
    return lines


def build_report(cfg: dict, out_dir: str | Path = "reports", track: bool = True) -> dict:
    """Write report.md, report.html, summary.json and figures/; returns the summary.

    ``track``: replay unlogged results to MLflow and keep the sweep's parent run up to date
    (never modifies a results file); False builds the report from the files alone.
    """
    out_dir = Path(out_dir)
    stage = reportset.staging(out_dir)  # the new set is built here, then swapped in
    fig_dir = stage / "figures"
    diverged: dict[Run, dict] = {}
    found, missing = collect(cfg, diverged)  # the first seed's runs: every table below
    seeds = run_seeds(cfg)
    by_seed, other_diverged = {seeds[0]: found}, {}
    for seed in seeds[1:]:  # the other seeds: the Seeds section, the failures list, MLflow
        by_seed[seed], seed_missing = collect(cfg, other_diverged, [seed])
        missing += seed_missing
    sync = None
    if track:
        from .tracking import sync_sweep

        everything = {r: d for f in by_seed.values() for r, d in f.items()}
        sync = sync_sweep(cfg, {**everything, **diverged, **other_diverged})  # diverged runs too (FAILED)
    summary: dict = {"benchmark": cfg["benchmark"], "model": cfg["model"]["name"], "directions": {}}
    title = f"QShift report — {cfg['benchmark']} / {cfg['model']['name']}"
    intro = ("Recall@1 (%) of each method on each query shift; **Avg** is the plain mean over the corruption "
             "columns (in brackets: the difference to `source`); **Clean** is the same method on uncorrupted "
             f"queries, the reference (run for {_clean_methods(cfg)}). Each run adapts online over the whole query stream "
             f"(batch {cfg['adapt']['batch_size']}, {cfg['adapt']['steps']} steps per batch, "
             + (f"seed {seeds[0]})." if len(seeds) == 1 else
                f"seed {seeds[0]}, the first of seeds {', '.join(map(str, seeds))}: across seeds, see Seeds)."))
    md = [f"# {title}", "", intro, ""]
    intro_html = _md_inline(intro.replace("(in brackets: the difference to `source`)",
                                          "(second line of a cell: the difference to `source`)"))
    h = [f"<h1>{_e(title)}</h1>", "<p>" + intro_html.replace("**Avg**", "<b>Avg</b>").replace(
        "**Clean**", "<b>Clean</b>") + "</p>"]
    fetched = Path(MODEL_DIR.format(model=cfg["model"]["name"])) / "model.json"  # a pretrained source
    pre = fetched if fetched.is_file() else Path("reports/pretrain.json")
    if pre.is_file():
        p = json.loads(pre.read_text())
        if p.get("trained", True):
            line = (f"`{p.get('model')}` trained for {p.get('steps')} steps ({p.get('train_seconds')} s on "
                    f"{p.get('device')}). Clean test R@1: i2t {_fmt(p.get('test_i2t_R@1'))}, "
                    f"t2i {_fmt(p.get('test_t2i_R@1'))}.")
        else:
            line = f"`{p.get('model')}`: pretrained `{p.get('source')}` ({p.get('parameters'):,} parameters), not trained here."
        md += ["## Source model", "", line, ""]
        h += ["<h2>Source model</h2>", f"<p>{_md_inline(line)}</p>"]
    from .tune import markdown_tuning, merge_docs

    tuned = [Path(TUNED.format(dataset=cfg["benchmark"], model=cfg["model"]["name"], method=m))  # stage tune
             for m in cfg["adapt"]["methods"]]
    doc = merge_docs([json.loads(t.read_text()) for t in tuned if t.is_file()])
    if doc is not None:
        lines = markdown_tuning(doc)
        md += ["## Hyperparameters", ""] + lines + [""]
        h += ["<h2>Hyperparameters</h2>", f"<p>{_md_inline(lines[0].replace('**', ''))}</p>"]
        if len(lines) > 2:
            h += [_html_grid([c.strip() for c in lines[2].strip("|").split("|")],
                             [[c.strip() for c in row.strip("|").split("|")] for row in lines[4:]])]
        summary["tuned"] = doc.get("best", {})

    for direction in cfg["adapt"]["directions"]:
        tables = {k: direction_table(cfg, direction, found, k, diverged) for k in METRICS}
        unc = stats.direction_intervals(cfg, direction, found)  # bootstrap intervals (qshift.stats)
        ci = stats.has_intervals(unc)
        summary["directions"][direction] = {
            m: {"avg_r1": row["Avg"], "clean_r1": row["Clean"],
                "cells_r1": {c: row[c] for c in tables["R@1"]["columns"] if c not in ("Avg", "Clean")},
                **({"diverged": tables["R@1"]["diverged"][m]} if m in tables["R@1"]["diverged"] else {}),
                **({"avg_excludes": tables["R@1"]["avg_excludes"][m]} if m in tables["R@1"]["avg_excludes"]
                   else {}),
                **stats.summary_companions(unc).get(m, {})}
            for m, row in tables["R@1"]["rows"].items()}
        figs = {"r1": fig_dir / f"{direction}_r1.png", "online": fig_dir / f"{direction}_online.png",
                "heatmap": fig_dir / f"{direction}_heatmap.png", "severity": fig_dir / f"{direction}_severity.png",
                "forgetting": fig_dir / f"{direction}_forgetting.png"}
        plot_bars(tables["R@1"], f"R@1 per query shift — {direction}", figs["r1"],
                  errors=stats.error_bars(tables["R@1"], unc))
        plot_heatmap(tables["R@1"], f"R@1, method x shift — {direction} (second line: Δ to source)",
                     figs["heatmap"])
        plot_online(cfg, direction, found, figs["online"])
        has_severity = plot_severity(cfg, direction, found, figs["severity"])
        seq = sequential_curves(found, direction)
        reference = independent_r1(found, direction)
        st_tables = stream_tables(cfg, direction, found, reference)
        matched = stats.matched_streams(cfg, direction, found, st_tables)  # same queries, by query id
        if matched:
            summary.setdefault("streams_matched", {})[direction] = matched
            reference = {**reference, **{m: {**reference.get(m, {}), **d}
                                         for m, d in stats.matched_reference(matched).items()}}
        if st_tables:
            summary.setdefault("streams", {})[direction] = {
                name: {"kind": t["kind"], "domains": t["domains"],
                       "methods": {m: {"r1": row["r1"], "alone_r1": row["alone"],
                                       "by_domain": {d: {"r1": c["r1"], "alone_r1": c["alone"]}
                                                     for d, c in row["by_domain"].items()}}
                                   for m, row in t["rows"].items()}}
                for name, t in st_tables.items()}
        if seq:
            plot_forgetting(seq, figs["forgetting"], f"Sequential streams — {direction}", dict(reference))
        cmp = paper_comparison(cfg, direction, found)
        delta = delta_table(tables["R@1"])

        md += [f"## {DIRECTION_TITLE[direction]}", "",
               _md_grid(*stats.ci_rows(tables["R@1"], unc)) if ci else markdown_table(tables["R@1"]), ""]
        md += [avg_note(tables["R@1"]), ""] if avg_note(tables["R@1"]) else []
        if delta is not None and delta["rows"]:
            md += ["Δ R@1 to `source`, per cell:", "",
                   _md_grid(*stats.delta_rows(unc)) if ci else markdown_delta_table(delta), ""]
        md += [stats.note(unc), ""] if ci else []
        md += [stats.missing_note(unc), ""] if stats.missing_note(unc) else []
        md += ([cmp["note"], ""] if not cmp["rows"] else [cmp["note"], "", markdown_paper_table(cmp), ""])
        prov_line, prov = query_provenance(cfg, direction)
        if prov_line:
            md += [prov_line, ""]
            summary.setdefault("query_provenance", {})[direction] = prov
        flags = paper.base_deviations(cmp["rows"])
        if flags:
            flag_line = (f"**Check the set-up:** the reproduced Base (`source`, no adaptation) deviates from the paper's "
                         f"by more than {paper.BASE_TOLERANCE:g} R@1 point in " + ", ".join(
                             f"{f['column']} ({_fmt(f['ours'])} vs {_fmt(f['paper'])}, {f['gap']:+.1f})" for f in flags)
                         + " — data, weights or preprocessing differ from the paper's.")
            md += [flag_line, ""]
            summary.setdefault("base_deviations", {})[direction] = flags
        md += [f"![R@1 per shift](figures/{direction}_r1.png)", "",
               f"![R@1 heatmap](figures/{direction}_heatmap.png)", ""]
        md += ([f"![R@1 against severity](figures/{direction}_severity.png)", ""] if has_severity else
               ["R@1 against severity: not plotted — the grid has a single severity for this direction.", ""])
        md += [f"![Online R@1](figures/{direction}_online.png)", ""]
        if st_tables:
            md += [f"### Streams — {direction}", "", STREAMS_NOTE, "", _md_grid(*_stream_rows(st_tables)), ""]
            for name, t in st_tables.items():
                if t["kind"] == "mixed" and t["rows"]:
                    md += [f"Mixed stream `{name}`, per domain:", "", _md_grid(*_mixed_domain_rows(name, t)), ""]
            if matched:
                md += [stats.MATCHED_NOTE, "", _md_grid(*stats.matched_rows(matched)), ""]
        if seq:
            # with per-query outcomes the matched table above is the exact comparison; batch segments show drift
            forget = forgetting_table(seq, None if matched else dict(reference))
            md += [(stats.SEGMENTS_NOTE if matched else "Sequential streams: each domain's mean R@1 in the stream "
                    "against the same method adapted to that domain alone (gap < 0: the stream lost accuracy there)."),
                   "", markdown_forgetting_table(forget), "", f"![Forgetting](figures/{direction}_forgetting.png)", ""]
        if len(seeds) > 1:
            across = stats.seed_summary(cfg, direction, by_seed)
            summary.setdefault("seeds", {})[direction] = {
                m: {"per_seed": {str(k): v for k, v in row["per_seed"].items()}, "n_seeds": row["n"],
                    "avg_r1_mean": row["mean"], "avg_r1_mean_lo": row["lo"], "avg_r1_mean_hi": row["hi"],
                    **({"delta_to_source": row["delta"]} if row["delta"] else {})}
                for m, row in across["rows"].items()}
            md += [f"### Seeds — {direction}", "", stats.SEEDS_NOTE, "", _md_grid(*stats.seed_rows(across)), ""]
        md += ["<details><summary>R@5 and R@10</summary>", "", "R@5", "", markdown_table(tables["R@5"]), "",
               "R@10", "", markdown_table(tables["R@10"]), "", "</details>", ""]

        h += [f"<h2>{_e(DIRECTION_TITLE[direction])}</h2>"]
        for k in METRICS:
            h += [f"<h3>{_e(k)} (%)</h3>", html_table(tables[k])]
            h += [f"<p class='note'>{_e(avg_note(tables[k]))}</p>"] if avg_note(tables[k]) else []
            if k == "R@1" and ci:
                h += ["<h3>R@1 with 95% intervals; paired Δ to source</h3>", _html_grid(*stats.ci_rows(tables[k], unc)),
                      _html_grid(*stats.delta_rows(unc)), f"<p class='note'>{_md_inline(stats.note(unc))}</p>"]
        if stats.missing_note(unc):
            h += [f"<p class='missing'>{_md_inline(stats.missing_note(unc).replace('**', ''))}</p>"]
        h += ["<p class='note'>Second line of a cell: the difference to <code>source</code> (the reference row); "
              "<b>Clean</b>: uncorrupted queries; <span class='best'>underlined</span>: best in its column.</p>"]
        h += ["<h3>Paper reference</h3>", f"<p class='note'>{_md_inline(cmp['note'])}</p>"]
        if cmp["rows"]:
            h += [html_paper_table(cmp)]
        if flags:
            h += [f"<p class='missing'>{_md_inline(flag_line)}</p>"]
        h += ["<h3>Figures</h3>", _img(figs["r1"], f"R@1 per shift, {direction}"),
              _img(figs["heatmap"], f"R@1 heatmap, {direction}")]
        h += ([_img(figs["severity"], f"R@1 against severity, {direction}")] if has_severity else
              ["<p class='note'>R@1 against severity: not plotted — the grid has a single severity for this "
               "direction.</p>"])
        h += [_img(figs["online"], f"Online R@1, {direction}")]
        if st_tables:
            h += [f"<h3>Streams — {_e(direction)}</h3>",
                  "<p class='note'>" + _md_inline(STREAMS_NOTE).replace("**mixed**", "<b>mixed</b>").replace(
                      "**sequential**", "<b>sequential</b>").replace(
                      "*R@1 in the stream / the same method adapted to each domain alone*",
                      "<i>R@1 in the stream / the same method adapted to each domain alone</i>") + "</p>",
                  _html_grid(*_stream_rows(st_tables))]
            for name, t in st_tables.items():
                if t["kind"] == "mixed" and t["rows"]:
                    h += [f"<p>Mixed stream <code>{_e(name)}</code>, per domain:</p>",
                          _html_grid(*_mixed_domain_rows(name, t))]
            if matched:
                h += [f"<p class='note'>{_md_inline(stats.MATCHED_NOTE)}</p>", _html_grid(*stats.matched_rows(matched))]
        if seq:
            h += ["<h3>Sequential streams</h3>",
                  "<p class='note'>Each domain's mean R@1 in the stream against the same method adapted to that "
                  "domain alone (gap &lt; 0: the stream lost accuracy there).</p>",
                  html_forgetting_table(forget), _img(figs["forgetting"], f"Forgetting, {direction}")]

        if len(seeds) > 1:
            h += [f"<h3>Seeds — {_e(direction)}</h3>", f"<p class='note'>{_md_inline(stats.SEEDS_NOTE)}</p>",
                  _html_grid(*stats.seed_rows(across))]

        counters = defaultdict(dict)
        for r, doc in found.items():
            if r.direction == direction and doc.get("counters", {}).get("skipped_steps"):
                where = r.corruption if doc.get("stream") else cell_label(r.corruption, r.severity, True)
                counters[r.method][where] = doc["counters"]["skipped_steps"]
        if counters:
            line = ("Skipped optimisation steps (empty selection or non-finite loss): " +
                    "; ".join(f"{m}: " + ", ".join(f"{c} {n}" for c, n in d.items()) for m, d in counters.items()))
            md += [line, ""]
            h += [f"<p class='note'>{_e(line)}</p>"]

    from .observations import report_section  # variants/ablations and the papers' observations
    obs_md, obs_html, obs_summary = report_section(cfg, found, fig_dir)
    md, h = md + obs_md, h + obs_html; summary.update(obs_summary)
    faults.point("report:after_figures")  # tests: a kill here must leave the previous report as it was
    ex_dir = Path(EXAMPLES_DIR.format(report=cfg["report"]["dir"]))
    if (ex_dir / "contact_sheet.png").is_file():
        rel = os.path.relpath(ex_dir, out_dir)
        md += ["## Corruption examples", "", f"![Contact sheet]({rel}/contact_sheet.png)", "",
               f"Text corruptions by type and level: [{rel}/text_examples.md]({rel}/text_examples.md)", ""]
        h += ["<h2>Corruption examples</h2>", _img(ex_dir / "contact_sheet.png", "Image corruptions by severity"),
              f"<p>Text corruptions by type and level: <a href='{_e(rel)}/text_examples.md'>text_examples.md</a></p>"]

    md += ["## Not run / failed", ""]
    h += ["<h2>Not run / failed</h2>"]
    skipped_types = not_run_types(cfg)
    if skipped_types:
        md += [f"- text corruption `{n}`: {why}" for n, why in skipped_types.items()] + [""]
        h += ["<ul class='missing'>" + "".join(f"<li>text corruption {_e(n)}: {_e(why)}</li>"
                                                for n, why in skipped_types.items()) + "</ul>"]
        summary["not_run_types"] = skipped_types
    if missing:
        md += [f"- `{r.result_path}`: {why}" for r, why in missing]
        h += ["<ul class='missing'>" + "".join(f"<li>{_e(r.result_path)}: {_e(why)}</li>" for r, why in missing)
              + "</ul>"]
    else:
        md += ["Every run of the grid finished."]
        h += ["<p class='ok'>Every run of the grid finished.</p>"]
    notes = _tracking_notes(sync)
    md += [""] + notes + [""]
    h += ["<p>" + _md_inline(notes[0]) + "</p>"]
    if len(notes) > 1:
        h += ["<ul>" + "".join(f"<li>{_md_inline(n.lstrip(' -'))}</li>" for n in notes[1:]) + "</ul>"]

    summary["missing"] = [{"run": r.result_path, "reason": why} for r, why in missing]
    if diverged or other_diverged:
        summary["diverged"] = [{"run": r.result_path, **doc["diverged"]} for r, doc in
                               sorted({**diverged, **other_diverged}.items(), key=lambda kv: kv[0].result_path)]
    if sync is not None:
        summary["mlflow"] = {"replayed": len(sync["replayed"]), "failing": len(sync["failing"])}
    write_text(stage / "report.md", "\n".join(md))
    page = ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body>\n" + "\n".join(h) + "\n</body></html>\n")
    write_text(stage / "report.html", page)
    write_json(stage / "summary.json", summary)
    reportset.swap_in(stage, out_dir)
    return summary
