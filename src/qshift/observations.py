"""The papers' observations, measured on any benchmark (stage `observe`, report section).

TCR and REST motivate their methods by statistics of the query embeddings (REST Fig. 1(b)):
query shift lowers **query uniformity**, enlarges the **query-gallery gap** and weakens
**query-gallery consistency**; and (REST Fig. 1, "Angle") the adaptation gradient of vanilla
Tent conflicts with the gradient of general knowledge (angles > 90 deg). The papers' exact
formulas are not all known; these are **QShift's definitions**, computed per online batch by
the adapt stage on the embeddings that produced the batch's scores (:mod:`qshift.tta.probe`)
and averaged over the batches of a run (weighted by batch size):

- uniformity  U = mean_i ||z_i - zbar||           (zbar: the batch's query centroid; higher = more uniform)
- gap         G = ||zbar - mean_i g'(i)||         (g'(i): query i's top-1 gallery item, its refined positive)
- consistency C = mean_i cos(z_i, g'(i))
- angle       the angle between the adaptation gradient and a general-knowledge gradient at step 0
  of each batch (median and range over the batches; methods in ``observe.grad_angle``). The
  general-knowledge gradient is QShift's probe: InfoNCE over the batch's source-like pairs on
  the current embeddings (qshift.tta.probe), not REST's (unpublished).

"Before adaptation" is the ``source`` run of each shift (the frozen model: clean, each corruption
cell, each stream domain by the batches' majority domain); "after adaptation" is each method's run.

The stage reads only the results files (cheap), writes ``reports/observations.json`` and adds
``obs.*`` metrics to each run's MLflow run. The report renders the section and the plots, and
the variant/ablation tables (:func:`variant_tables`).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from .config import Run, base_method, is_variant, method_hparams
from .results import CLEAN

STATS = {"uniformity": "obs_uniformity", "gap": "obs_gap", "consistency": "obs_consistency"}
OBSERVATIONS = "reports/observations.json"
SOURCE = "source"


def _wmean(values: list, weights: list) -> float | None:
    pairs = [(v, w) for v, w in zip(values, weights) if v is not None and not (isinstance(v, float) and math.isnan(v))]
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total else None


def angle_summary(angles: list) -> dict | None:
    vals = [a for a in angles if a is not None and not math.isnan(a)]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals),
            "frac_conflict": sum(a > 90 for a in vals) / len(vals)}


def run_observation(doc: dict) -> dict | None:
    """One run's observation statistics from its results document (None: it has none)."""
    online = doc.get("online") or {}
    stats = online.get("stats") or {}
    if not all(k in stats for k in STATS.values()):
        return None
    sizes = online.get("batch_size") or [1] * len(stats["obs_uniformity"])
    out: dict = {name: _wmean(stats[key], sizes) for name, key in STATS.items()}
    out["angle"] = angle_summary(stats.get("grad_angle") or [])
    out["angles"] = stats.get("grad_angle")
    if online.get("domain"):
        by: dict = {}
        for i, dom in enumerate(online["domain"]):
            by.setdefault(dom, []).append(i)
        out["by_domain"] = {d: {name: _wmean([stats[key][i] for i in idx], [sizes[i] for i in idx])
                                for name, key in STATS.items()} for d, idx in by.items()}
    return out


def shift_label(run: Run, doc: dict) -> str:
    if run.corruption == CLEAN:
        return CLEAN
    if doc.get("stream"):
        return f"stream {run.corruption}"
    return f"{run.corruption}-s{run.severity}"


def observe(cfg: dict, found: dict[Run, dict]) -> dict:
    """{"definitions", "directions": {d: {"shifts": [...], "source": {shift: stats}, "methods":
    {method: {shift: stats}}}}, "runs": {run_key: stats}, "without": [run_key...]}."""
    doc: dict = {"definitions": {k: v for k, v in DEFINITIONS.items()}, "directions": {}, "runs": {},
                 "without": []}
    for run, res in sorted(found.items(), key=lambda kv: kv[0].result_path):
        obs = run_observation(res)
        if obs is None:
            doc["without"].append(res.get("run_key", run.result_path))
            continue
        d = doc["directions"].setdefault(run.direction, {"shifts": [], "source": {}, "methods": {}})
        label = shift_label(run, res)
        if label not in d["shifts"]:
            d["shifts"].append(label)
        row = {k: obs[k] for k in (*STATS, "angle")}
        d["methods"].setdefault(run.method, {})[label] = row
        if run.method == SOURCE:
            d["source"][label] = row
            for dom, vals in (obs.get("by_domain") or {}).items():  # the stream's domains, in the stream
                d["source"][f"{label} / {dom}"] = {**vals, "angle": None}
        doc["runs"][res["run_key"]] = {"direction": run.direction, "method": run.method, "shift": label,
                                       **row, "angles": obs["angles"]}
    for d in doc["directions"].values():
        d["shifts"].sort(key=lambda s: (s != CLEAN, s.startswith("stream"), s))
    return doc


DEFINITIONS = {
    "uniformity": "mean_i ||z_i - zbar|| per online batch (zbar the batch's query centroid), batch-size-weighted "
                  "mean over the run (QShift's definition)",
    "gap": "||zbar - mean_i g'(i)|| per batch, g'(i) the query's top-1 gallery item (QShift's definition)",
    "consistency": "mean_i cos(z_i, g'(i)) per batch (QShift's definition)",
    "angle": "degrees between the adaptation gradient and QShift's general-knowledge probe gradient (InfoNCE over "
             "the batch's source-like pairs, current encoder) at step 0 of each batch",
}


def mlflow_metrics(stats: dict) -> dict[str, float]:
    """The ``obs.*`` metrics of one run."""
    out = {f"obs.{k}": stats[k] for k in STATS if stats.get(k) is not None}
    if stats.get("angle"):
        out.update({f"obs.grad_angle_{k}": stats["angle"][k] for k in ("median", "min", "max", "frac_conflict")})
    return out


# -- the report section ---------------------------------------------------------------------------

def _f(v, digits: int = 3) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _angle_cell(a: dict | None) -> str:
    return "—" if not a else f"{a['median']:.0f}° [{a['min']:.0f}–{a['max']:.0f}]"


def plot_shift_panels(d: dict, title: str, path: Path) -> bool:
    """REST Fig. 1(b)-like panels: the source model's U, G, C, in-domain (clean) vs each shift."""
    from .report import _plt, _save

    shifts = [s for s in d["shifts"] if s in d["source"]] + sorted(k for k in d["source"] if " / " in k)
    if not shifts:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(max(9, 0.9 * len(shifts) * 3), 3.6))
    for ax, name in zip(axes, STATS):
        vals = [d["source"][s][name] for s in shifts]
        colours = ["C2" if s == CLEAN else "C3" for s in shifts]
        ax.bar(range(len(shifts)), [v if v is not None else 0 for v in vals], color=colours)
        ax.set_xticks(range(len(shifts)), shifts, rotation=40, ha="right", fontsize=7)
        ax.set_title(f"query {name}" if name != "gap" else "query-gallery gap")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return True


def plot_angles(runs: dict, direction: str, title: str, path: Path) -> bool:
    """Angle vs batch per method (one line per shift), the 90 deg conflict boundary dashed."""
    from .report import _plt, _save

    series: dict[str, list] = {}
    for key, r in runs.items():
        if r["direction"] == direction and r.get("angles") and any(a is not None for a in r["angles"]):
            series.setdefault(r["method"], []).append((r["shift"], r["angles"]))
    if not series:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, len(series), figsize=(4.2 * len(series), 3.4), squeeze=False)
    for ax, (method, lines) in zip(axes[0], sorted(series.items())):
        for shift, angles in lines:
            ax.plot(range(len(angles)), [math.nan if a is None else a for a in angles], lw=1, label=shift)
        ax.axhline(90, ls="--", color="k", lw=1)
        ax.set_title(method)
        ax.set_xlabel("batch")
        ax.set_ylabel("angle (deg)")
        ax.set_ylim(0, 180)
        ax.legend(fontsize=6)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return True


def variant_tables(cfg: dict, direction: str, found: dict[Run, dict]) -> list[tuple[str, list[str], list[list[str]]]]:
    """Per base method with variants in the grid: (title, header, rows) of R@1 per cell + Avg, the
    base first, each variant with its overrides (the ablation table)."""
    from .report import direction_table

    out = []
    methods = list(cfg["adapt"]["methods"])
    bases = [b for b in methods if any(is_variant(cfg, m) and base_method(cfg, m) == b for m in methods)]
    if not bases:
        return out
    table = direction_table(cfg, direction, found)
    for b in bases:
        rows_m = [b] + [m for m in methods if is_variant(cfg, m) and base_method(cfg, m) == b]
        header = ["method", "overrides"] + table["columns"]
        base_hp = method_hparams(cfg, b, direction)
        rows = []
        for m in rows_m:
            hp = method_hparams(cfg, m, direction)
            diff = ", ".join(f"{k}={v}" for k, v in hp.items() if base_hp.get(k) != v) if m != b else "(base)"
            r = table["rows"][m]
            rows.append([f"`{m}`", diff or "(none)"] + [_f(r.get(c), 1) for c in table["columns"]])
        out.append((f"Variants of `{b}` — R@1, {direction}", header, rows))
    return out


def _cell(text: str):
    """A table cell; a ```name``` (a method) becomes a code cell."""
    from .report.blocks import Cell

    code = len(text) > 1 and text.startswith("`") and text.endswith("`")
    return Cell(text[1:-1], code=True) if code else Cell(text)


def _variant_blocks(cfg: dict, found: dict[Run, dict], summary: dict) -> list:
    from .report.blocks import Heading, Table

    out: list = []
    for direction in cfg["adapt"]["directions"]:
        for title, header, rows in variant_tables(cfg, direction, found):
            out += [Heading(2, title), Table.grid(header, [[_cell(c) for c in r] for r in rows])]
            summary.setdefault("variants", {}).setdefault(direction, []).append(
                {"title": title, "rows": [r[:2] + r[2:] for r in rows]})
    return out


def _intro_blocks(obs: dict) -> list:
    from .report.blocks import Para

    intro = ("The papers' observation statistics, **QShift's definitions** (the papers' formulas are not all "
             "published): " + "; ".join(f"*{k}*: {v}" for k, v in obs["definitions"].items()) + ". "
             "Shifted queries should show lower uniformity, a larger gap and lower consistency than clean ones "
             "(TCR; REST Fig. 1(b)), and angles above 90° mean the adaptation gradient conflicts with general "
             "knowledge (REST Fig. 1).")
    out = [Para(intro, "note")]
    if obs.get("without"):
        out.append(Para(f"{len(obs['without'])} results file(s) carry no observation statistics (made before the "
                        f"adapt stage recorded them; rerun those adapt jobs): "
                        + ", ".join(f"`{k}`" for k in obs["without"][:5]) + (" ..." if len(obs["without"]) > 5 else ""),
                        "missing"))
    return out


def _direction_blocks(direction: str, d: dict, runs: dict, fig_dir: Path) -> list:
    from .report.blocks import Cell, Figure, Heading, Para, Table

    src_rows = [[s, *(_f(d["source"][s][k]) for k in STATS)] for s in
                [s for s in d["shifts"] if s in d["source"]] + sorted(k for k in d["source"] if " / " in k)]
    meth_rows = [[Cell(m, code=True)] + [" / ".join(_f((cells.get(s) or {}).get(k), 2) for k in STATS)
                                         if s in cells else "—" for s in d["shifts"]]
                 for m, cells in d["methods"].items()]
    angle_rows = [[Cell(m, code=True)] + [_angle_cell((cells.get(s) or {}).get("angle")) for s in d["shifts"]]
                  for m, cells in d["methods"].items() if any((c or {}).get("angle") for c in cells.values())]
    figs = {"shift": fig_dir / f"{direction}_observations.png", "angle": fig_dir / f"{direction}_angles.png"}
    out = [Heading(3, direction), Para("Before adaptation (`source`):"),
           Table.grid(["shift", "uniformity", "gap", "consistency"], src_rows)]
    if plot_shift_panels(d, f"Source model: query statistics per shift — {direction}", figs["shift"]):
        out.append(Figure(figs["shift"], f"figures/{figs['shift'].name}", "Observations", f"Observations, {direction}"))
    out += [Para("After adaptation, per method (uniformity / gap / consistency):"),
            Table.grid(["method"] + [f"{s}: U / G / C" for s in d["shifts"]], meth_rows)]
    if angle_rows:
        out += [Para("Gradient angle, median [min–max] over batches:"), Table.grid(["method"] + d["shifts"], angle_rows)]
    if plot_angles(runs, direction, f"Gradient angle per batch — {direction}", figs["angle"]):
        out.append(Figure(figs["angle"], f"figures/{figs['angle'].name}", "Gradient angles",
                          f"Gradient angles, {direction}"))
    return out


def report_section(cfg: dict, found: dict[Run, dict], fig_dir: Path, path: str | Path = OBSERVATIONS) -> tuple[list, dict]:
    """(blocks, summary entry) of the Variants/ablations and Observations sections
    (:mod:`qshift.report.blocks`; the report renders them to Markdown and HTML)."""
    import json

    from .report.blocks import Heading, Para

    summary: dict = {}
    blocks = _variant_blocks(cfg, found, summary) + [Heading(2, "Observations (TCR / REST)")]
    path = Path(path)
    if not path.is_file():
        return blocks + [Para(f"No observations: `{path}` is missing (stage `observe`).", "missing")], summary
    obs = json.loads(path.read_text())
    blocks += _intro_blocks(obs)
    for direction, d in obs["directions"].items():
        blocks += _direction_blocks(direction, d, obs["runs"], fig_dir)
        summary.setdefault("observations", {})[direction] = {"source": d["source"]}
    return blocks, summary
