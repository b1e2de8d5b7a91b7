"""The report's tables as data, and as :class:`~qshift.report.blocks.Table` blocks.

:func:`direction_table` ({method: {cell label: value, 'Avg', 'Clean'}}), :func:`delta_table`,
:func:`paper_comparison`, :func:`stream_tables` and :func:`forgetting_table` compute the
numbers; the ``*_block`` functions turn them into cells (text with emphasis flags, the HTML's
Δ lines and best-in-column marks), which the blocks render to Markdown and HTML.
"""

from __future__ import annotations

from .. import paper
from ..config import Run, streams
from ..corrupt.text import TEXT_LABELS, not_run_types
from ..results import CLEAN
from ..streams import domain_label, stream_domains
from .blocks import Cell, Column, Row, Table
from .inputs import BASELINE, _by_key, _cells, _fmt, cell_label


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
            row[label] = doc["metrics"].get(metric) if doc else None  # mAP: identity-level datasets only
            if (direction, method, c, s) in bad:
                marked.setdefault(method, []).append(label)
        vals = [row[lab] for lab in labels]
        row["Avg"] = sum(vals) / len(vals) if vals and all(v is not None for v in vals) else None
        kept = [v for lab, v in zip(labels, vals) if lab not in marked.get(method, ())]
        if row["Avg"] is None and method in marked and kept and all(v is not None for v in kept):
            row["Avg"] = sum(kept) / len(kept)
            excludes[method] = [lab for lab in labels if lab in marked[method]]
        clean = by_key.get((direction, method, CLEAN, 0))
        row["Clean"] = clean["metrics"].get(metric) if clean else None
        if (direction, method, CLEAN, 0) in bad:
            marked.setdefault(method, []).append("Clean")
        rows[method] = row
    return {"columns": labels + ["Avg", "Clean"], "rows": rows, "metric": metric, "diverged": marked,
            "avg_excludes": excludes}


GROUP_MEAN = "category mean"


def group_tables(cfg: dict, direction: str, found: dict[Run, dict], metrics: tuple[str, ...],
                 diverged: dict[Run, dict] | None = None) -> dict[str, dict]:
    """FashionIQ-style tables (results' ``metrics_by_group``, qshift.cir): per metric, one
    :func:`direction_table` per category and one of the unweighted mean over the categories (the
    benchmark's average), keyed ``"<metric> <category>"`` / ``"<metric> category mean"``; {} when
    no run of the direction is scored per group."""
    groups = sorted({g for r, doc in found.items() if r.direction == direction
                     for g in (doc.get("metrics_by_group") or {})})
    out: dict[str, dict] = {}
    for metric in metrics if groups else ():
        for g in groups + [GROUP_MEAN]:
            view = {}
            for r, doc in found.items():
                by = doc.get("metrics_by_group") or {}
                vals = [by.get(x, {}).get(metric) for x in (groups if g == GROUP_MEAN else [g])]
                ok = vals and all(v is not None for v in vals)
                view[r] = {**doc, "metrics": {metric: sum(vals) / len(vals)} if ok else {}}
            out[f"{metric} {g}"] = direction_table(cfg, direction, view, metric, diverged)
    return out


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


# -- as blocks --------------------------------------------------------------------------------------------

def _col_cls(c: str) -> str | None:
    return {"Avg": "avg", "Clean": "clean"}.get(c)


def _sign(d: float) -> str:
    return "pos" if d > 0 else "neg" if d < 0 else ""


def metric_block(table: dict, baseline: str | None = BASELINE, html: bool = False) -> Table:
    """A direction table. Markdown form: the Avg carries the difference to ``baseline`` in
    brackets. HTML form (``html``): every cell a second line with its difference, the best
    of each column marked, the baseline row shaded and labelled (reference)."""
    cols, rows = table["columns"], table["rows"]
    base = rows.get(baseline) if baseline else None
    best = {c: max((r[c] for r in rows.values() if r.get(c) is not None), default=None) for c in cols}
    out = []
    for method, row in rows.items():
        cells = [Cell(method, note="(reference)" if html and method == baseline else None)]
        for c in cols:
            v = row.get(c)
            d = v - base[c] if base is not None and method != baseline and v is not None and base.get(c) is not None \
                else None
            x = Cell(_cell_text(table, method, c, v))
            if html:
                x.best = v is not None and len(rows) > 1 and v == best[c]
                x.sub, x.sub_cls = (None, "") if d is None else (f"{d:+.1f}", _sign(d))
            elif c == "Avg" and d is not None:
                x.text += f" ({d:+.1f})"
            cells.append(x)
        out.append(Row(cells, "ref" if html and method == baseline else None))
    columns = [Column("Method", "left", "m")] + [Column(c, cls=_col_cls(c) if html else None) for c in cols]
    return Table(columns, out)


def markdown_table(table: dict, baseline: str | None = BASELINE) -> str:
    return metric_block(table, baseline).markdown()


def delta_block(delta: dict) -> Table:
    cols = delta["columns"]
    return Table.grid(["Method"] + cols, [[m] + ["—" if row[c] is None else f"{row[c]:+.1f}" for c in cols]
                                          for m, row in delta["rows"].items()])


def markdown_delta_table(delta: dict) -> str:
    return delta_block(delta).markdown()


def paper_block(cmp: dict, html: bool = False) -> Table:
    """Ours / paper per cell; HTML: the header's second line says so, each cell the difference."""
    cols = cmp["columns"]
    rows = []
    for method, row in cmp["rows"].items():
        cells = [Cell(method)]
        for c in cols:
            if c not in row:
                cells.append(Cell(""))
                continue
            ours, ref = row[c]
            x = Cell(f"{_fmt(ours)} / {_fmt(ref)}")
            if html and ours is not None:
                x.sub, x.sub_cls = f"{ours - ref:+.1f}", "pos" if ours >= ref else "neg"
            cells.append(x)
        rows.append(Row(cells))
    first = Column("Method" if html else "Method (ours / paper)", "left", "m")
    return Table([first] + [Column(c, note="ours / paper" if html else None) for c in cols], rows)


def markdown_paper_table(cmp: dict) -> str:
    return paper_block(cmp).markdown()


def streams_block(tables: dict[str, dict]) -> Table:
    """Method x stream: ``in stream / alone (Δ)`` cells."""
    names = list(tables)
    methods = list(dict.fromkeys(m for t in tables.values() for m in t["rows"]))
    header = ["Method"] + [f"{n} ({tables[n]['kind']}, {len(tables[n]['domains'])} domains)" for n in names]
    rows = [[m] + [_vs(tables[n]["rows"][m]["r1"], tables[n]["rows"][m]["alone"]) if m in tables[n]["rows"]
                   else "" for n in names] for m in methods]
    return Table.grid(header, rows)


def mixed_domain_block(table: dict) -> Table:
    """A mixed stream, per domain: ``in stream / alone (Δ)`` cells."""
    rows = [[m] + [_vs(row["by_domain"][d]["r1"], row["by_domain"][d]["alone"]) for d in table["domains"]]
            for m, row in table["rows"].items()]
    return Table.grid(["Method"] + table["domains"], rows)


FORGETTING_COLUMNS = ["Method", "Domain (stream order)", "Batches", "R@1 in stream", "R@1 alone", "Gap",
                      "Drift (last - first batch)"]


def forgetting_block(table: dict[str, list[dict]]) -> Table:
    rows = [[method, f"{r['position'] + 1}. {r['domain']}", str(r["batches"]), _fmt(r["mean_r1"]),
             _fmt(r["reference_r1"]), "—" if r["gap"] is None else f"{r['gap']:+.1f}",
             "—" if r["drift"] is None else f"{r['drift']:+.1f}"]
            for method, rows in table.items() for r in rows]
    return Table.grid(FORGETTING_COLUMNS, rows, left=2)


def markdown_forgetting_table(table: dict[str, list[dict]]) -> str:
    return forgetting_block(table).markdown()
