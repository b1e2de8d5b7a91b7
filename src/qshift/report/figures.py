"""The report's figures (matplotlib, Agg): R@1 per shift, the method x shift heatmap, R@1
against severity, online R@1 along the stream and forgetting on sequential streams.

Each is written atomically as a PNG (:func:`_save`); :func:`_plt` is matplotlib's pyplot on
the Agg backend (also used by :mod:`qshift.observations`).
"""

from __future__ import annotations

import math
from pathlib import Path

from ..config import Run, query_cells
from ..corrupt.text import TEXT_LABELS
from ..io import atomic_path
from ..results import CLEAN
from .inputs import BASELINE, _by_key, cell_label
from .tables import forgetting_table


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
