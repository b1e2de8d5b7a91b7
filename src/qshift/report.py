"""Reports: paper-form tables (rows = methods, columns = corruptions, Avg) and plots.

Reads exactly the results files the experiment grid declares (``config.runs``); a missing
or unreadable file becomes a "not run / failed" entry with its reason, never a silent gap.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from .config import Run, query_cells, runs
from .corrupt.text import TEXT_LABELS
from .errors import QShiftError
from .io import atomic_path, write_json, write_text
from .results import CLEAN, load_result

DIRECTION_TITLE = {"i2t": "Image-to-text retrieval (image queries corrupted)",
                   "t2i": "Text-to-image retrieval (caption queries corrupted)"}


def cell_label(corruption: str, severity: int, multi: bool) -> str:
    name = TEXT_LABELS.get(corruption, corruption)
    return f"{name} s{severity}" if multi else name


def collect(cfg: dict) -> tuple[dict[Run, dict], list[tuple[Run, str]]]:
    found, missing = {}, []
    for run in runs(cfg):
        path = Path(run.result_path)
        if not path.is_file():
            missing.append((run, f"results file missing: {path}"))
            continue
        try:
            found[run] = load_result(path)
        except QShiftError as e:
            missing.append((run, str(e)))
    return found, missing


def _fmt(v: float | None) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1f}"


def direction_table(cfg: dict, direction: str, found: dict[Run, dict], metric: str = "R@1") -> dict:
    """{method: {cell_label: value, 'Avg': ..., 'Clean': ...}} plus the column order."""
    cells = [c for c in query_cells(cfg, direction) if c[0] != CLEAN]
    levels = {s for _, s in cells}
    labels = [cell_label(c, s, len(levels) > 1) for c, s in cells]
    rows: dict[str, dict[str, float | None]] = {}
    by_key = {(r.direction, r.method, r.corruption, r.severity): doc for r, doc in found.items()}
    for method in cfg["adapt"]["methods"]:
        row: dict[str, float | None] = {}
        for (c, s), label in zip(cells, labels):
            doc = by_key.get((direction, method, c, s))
            row[label] = doc["metrics"][metric] if doc else None
        vals = [row[lab] for lab in labels]
        row["Avg"] = sum(vals) / len(vals) if vals and all(v is not None for v in vals) else None
        clean = by_key.get((direction, method, CLEAN, 0))
        row["Clean"] = clean["metrics"][metric] if clean else None
        rows[method] = row
    return {"columns": labels + ["Avg", "Clean"], "rows": rows}


def markdown_table(table: dict, baseline: str | None = "source") -> str:
    cols = table["columns"]
    lines = ["| Method | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    base = table["rows"].get(baseline) if baseline else None
    for method, row in table["rows"].items():
        cells = []
        for c in cols:
            v = row.get(c)
            text = _fmt(v)
            if c == "Avg" and base is not None and method != baseline and v is not None and base.get(c) is not None:
                text += f" ({v - base[c]:+.1f})"
            cells.append(text)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _save(fig, path: Path) -> None:
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")


def plot_bars(table: dict, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cols = [c for c in table["columns"]]
    methods = list(table["rows"])
    x = np.arange(len(cols))
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(cols) + 2), 3.8))
    for i, m in enumerate(methods):
        vals = [table["rows"][m].get(c) for c in cols]
        ax.bar(x + i * width - 0.4 + width / 2, [v if v is not None else 0 for v in vals], width, label=m)
    ax.set_xticks(x, cols, rotation=30, ha="right")
    ax.set_ylabel("R@1 (%)")
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=min(len(methods), 5))
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)
    plt.close(fig)


def plot_online(cfg: dict, direction: str, found: dict[Run, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = query_cells(cfg, direction)
    n = len(cells)
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.0 * nrows), squeeze=False)
    by_key = {(r.direction, r.method, r.corruption, r.severity): doc for r, doc in found.items()}
    for ax, (c, s) in zip(axes.flat, cells):
        for method in cfg["adapt"]["methods"]:
            doc = by_key.get((direction, method, c, s))
            if doc:
                sizes = doc["online"]["batch_size"]
                seen = [sum(sizes[: i + 1]) for i in range(len(sizes))]
                ax.plot(seen, doc["online"]["cum_r1"], label=method)
        ax.set_title(cell_label(c, s, True) if c != CLEAN else "clean", fontsize=9)
        ax.set_xlabel("queries seen", fontsize=8)
        ax.set_ylabel("cumulative R@1 (%)", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"Online R@1 along the query stream — {direction}")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def build_report(cfg: dict, out_dir: str | Path = "reports") -> dict:
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    found, missing = collect(cfg)
    summary: dict = {"benchmark": cfg["benchmark"], "model": cfg["model"]["name"], "directions": {}}
    md = [f"# QShift report — {cfg['benchmark']} / {cfg['model']['name']}", "",
          "Recall@1 (%) of each method on each query shift; **Avg** is the plain mean over the corruption "
          "columns (in brackets: the difference to `source`); **Clean** is the same method on uncorrupted "
          "queries, the reference. Each run adapts online over the whole query stream "
          f"(batch {cfg['adapt']['batch_size']}, {cfg['adapt']['steps']} steps per batch, seed {cfg['seed']}).", ""]
    pre = Path("reports/pretrain.json")
    if pre.is_file():
        import json

        p = json.loads(pre.read_text())
        md += ["## Source model", "",
               f"`{p.get('model')}` trained for {p.get('steps')} steps ({p.get('train_seconds')} s on "
               f"{p.get('device')}). Clean test R@1: i2t {_fmt(p.get('test_i2t_R@1'))}, "
               f"t2i {_fmt(p.get('test_t2i_R@1'))}.", ""]
    import shutil

    if fig_dir.exists():
        shutil.rmtree(fig_dir)
    fig_dir.mkdir(parents=True)
    for direction in cfg["adapt"]["directions"]:
        tables = {k: direction_table(cfg, direction, found, k) for k in ("R@1", "R@5", "R@10")}
        summary["directions"][direction] = {
            m: {"avg_r1": row["Avg"], "clean_r1": row["Clean"],
                "cells_r1": {c: row[c] for c in tables["R@1"]["columns"] if c not in ("Avg", "Clean")}}
            for m, row in tables["R@1"]["rows"].items()}
        plot_bars(tables["R@1"], f"R@1 per query shift — {direction}", fig_dir / f"{direction}_r1.png")
        plot_online(cfg, direction, found, fig_dir / f"{direction}_online.png")
        md += [f"## {DIRECTION_TITLE[direction]}", "", markdown_table(tables["R@1"]), "",
               f"![R@1 per shift](figures/{direction}_r1.png)", "",
               f"![Online R@1](figures/{direction}_online.png)", "",
               "<details><summary>R@5 and R@10</summary>", "", "R@5", "", markdown_table(tables["R@5"]), "",
               "R@10", "", markdown_table(tables["R@10"]), "", "</details>", ""]
        counters = defaultdict(dict)
        for r, doc in found.items():
            if r.direction == direction and doc.get("counters", {}).get("skipped_steps"):
                counters[r.method][cell_label(r.corruption, r.severity, True)] = doc["counters"]["skipped_steps"]
        if counters:
            md += ["Skipped optimisation steps (empty selection or non-finite loss): " +
                   "; ".join(f"{m}: " + ", ".join(f"{c} {n}" for c, n in d.items()) for m, d in counters.items()),
                   ""]
    untracked = [r for r, doc in found.items() if not doc.get("mlflow", {}).get("logged")]
    md += ["## Not run / failed", ""]
    if missing:
        md += [f"- `{r.result_path}`: {why}" for r, why in missing]
    else:
        md += ["Every run of the grid finished."]
    if untracked:
        md += ["", "Finished but not logged to MLflow (numbers above are from the results files): " +
               ", ".join(f"`{r.result_path}`" for r in untracked)]
    md += [""]
    summary["missing"] = [{"run": r.result_path, "reason": why} for r, why in missing]
    write_text(out_dir / "report.md", "\n".join(md))
    write_json(out_dir / "summary.json", summary)
    return summary
