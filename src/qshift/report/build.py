"""The report as a list of sections, each a list of blocks; written as report.md and report.html.

:func:`build_report` collects the grid's runs (:func:`~qshift.report.inputs.collect`), replays
unlogged results to MLflow, plots the figures and assembles the sections below; the same
blocks render the Markdown and the HTML (:mod:`qshift.report.blocks`). The new report set
(report.md, report.html, summary.json, figures/) is built in a staging folder and swapped in
(:mod:`qshift.reportset`): a report run killed halfway leaves the previous one as it was.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .. import faults, paper, reportset, stats
from ..config import EXAMPLES_DIR, MODEL_DIR, TUNED, Run, run_seeds
from ..corrupt.text import not_run_types
from ..io import write_json, write_text
from .blocks import Block, Bullets, Details, Figure, Heading, Para, Table, html_only, markdown, md_only, page
from .inputs import _clean_methods, _fmt, cell_label, collect, independent_r1, query_provenance, sequential_curves
from .figures import plot_bars, plot_forgetting, plot_heatmap, plot_online, plot_severity
from .tables import (avg_note, delta_block, delta_table, direction_table, forgetting_block, forgetting_table,
                     group_tables, metric_block, mixed_domain_block, paper_block, paper_comparison, stream_tables,
                     streams_block)

DIRECTION_TITLE = {"i2t": "Image-to-text retrieval (image queries corrupted)",
                   "t2i": "Text-to-image retrieval (caption queries corrupted)"}
METRICS = ("R@1", "R@5", "R@10")


def direction_ks(name: str) -> tuple[int, ...]:
    from ..tasks import recall_ks

    return recall_ks(name)


def direction_title(name: str) -> str:
    """Another task's direction (qshift.tasks), e.g. cir: composed image retrieval."""
    from ..tasks import direction

    return direction(name).title
SUBSET_METRICS = ("R_subset@1", "R_subset@2", "R_subset@3")  # CIRR (qshift.cir.subset_mask)
GROUP_NOTE = ("FashionIQ convention: each category (dress, shirt, toptee) is ranked against its own gallery; "
              "R@10 / R@50 per category and their unweighted mean (the tables below), beside R@K over all queries.")
IDENTITY_NOTE = ("Identity-level matching (person re-identification): a query's hit is any gallery image of "
                 "the same identity within K; **mAP** over every relevant gallery item, as ReID papers report.")

STREAMS_NOTE = ("Multi-domain query streams (params `streams`): **mixed** — each query's domain is drawn at random "
                "from the stream's set, so every batch mixes shifts (REST's multi-distribution shift); "
                "**sequential** — the domains arrive one after another in equal blocks. A cell reads "
                "*R@1 in the stream / the same method adapted to each domain alone* (its independent runs, "
                "weighted by the stream's queries per domain) and the difference (< 0: the stream lost accuracy).")
SEQUENTIAL_NOTE = ("Sequential streams: each domain's mean R@1 in the stream against the same method adapted to that "
                   "domain alone (gap < 0: the stream lost accuracy there).")
LEGEND_NOTE = ("Second line of a cell: the difference to `source` (the reference row); **Clean**: uncorrupted queries; "
               "underlined: best in its column.")
SEVERITY_NOT_PLOTTED = "R@1 against severity: not plotted — the grid has a single severity for this direction."


@dataclass
class Grid:
    """What the report reads: the first seed's runs (every table), the other seeds' and the failures."""

    cfg: dict
    fig_dir: Path
    found: dict = field(default_factory=dict)
    missing: list = field(default_factory=list)
    diverged: dict = field(default_factory=dict)
    other_diverged: dict = field(default_factory=dict)
    by_seed: dict = field(default_factory=dict)
    seeds: list = field(default_factory=list)


def gather(cfg: dict, fig_dir: Path) -> Grid:
    g = Grid(cfg, fig_dir, seeds=run_seeds(cfg))
    g.found, g.missing = collect(cfg, g.diverged)  # the first seed's runs: every table below
    g.by_seed = {g.seeds[0]: g.found}
    for seed in g.seeds[1:]:  # the other seeds: the Seeds section, the failures list, MLflow
        g.by_seed[seed], seed_missing = collect(cfg, g.other_diverged, [seed])
        g.missing += seed_missing
    return g


def _sync(g: Grid) -> dict:
    from ..tracking import sync_sweep

    everything = {r: d for f in g.by_seed.values() for r, d in f.items()}
    return sync_sweep(g.cfg, {**everything, **g.diverged, **g.other_diverged})  # diverged runs too (FAILED)


# -- the head: title, intro, source model, hyperparameters ---------------------------------------------------

def _intro(cfg: dict, seeds: list[int], bracket: str) -> str:
    return ("Recall@1 (%) of each method on each query shift; **Avg** is the plain mean over the corruption "
            f"columns ({bracket}: the difference to `source`); **Clean** is the same method on uncorrupted "
            f"queries, the reference (run for {_clean_methods(cfg)}). Each run adapts online over the whole query stream "
            f"(batch {cfg['adapt']['batch_size']}, {cfg['adapt']['steps']} steps per batch, "
            + (f"seed {seeds[0]})." if len(seeds) == 1 else
               f"seed {seeds[0]}, the first of seeds {', '.join(map(str, seeds))}: across seeds, see Seeds)."))


def head_section(cfg: dict, seeds: list[int], title: str) -> list[Block]:
    """The title and the intro (the Markdown's Avg carries its Δ in brackets, the HTML's on a second line)."""
    return [Heading(1, title), md_only(Para(_intro(cfg, seeds, "in brackets"))),
            html_only(Para(_intro(cfg, seeds, "second line of a cell")))]


def source_model_section(cfg: dict) -> list[Block]:
    fetched = Path(MODEL_DIR.format(model=cfg["model"]["name"])) / "model.json"  # a pretrained source
    pre = fetched if fetched.is_file() else Path("reports/pretrain.json")
    if not pre.is_file():
        return []
    p = json.loads(pre.read_text())
    if p.get("summary"):  # a task's own training figures (video-audio: src/qshift/models/tiny_va.py)
        line = f"`{p.get('model')}` {p['summary']}"
    elif p.get("trained", True):
        line = f"`{p.get('model')}` trained for {p.get('steps')} steps ({p.get('train_seconds')} s on {p.get('device')})."
        if "combiner_val_trained_R@1" in p:  # cir: the CLIP has no image-text test split; its combiner's figures
            line += (f" Its combiner trained for {p.get('combiner_steps')} steps: composed val R@1 "
                     f"{_fmt(p.get('combiner_val_trained_R@1'))} (zero-shot sum {_fmt(p.get('combiner_val_sum_R@1'))}).")
        if "combiner_val_trained_R@1" not in p or "test_i2t_R@1" in p:
            line += f" Clean test R@1: i2t {_fmt(p.get('test_i2t_R@1'))}, t2i {_fmt(p.get('test_t2i_R@1'))}."
    else:
        line = f"`{p.get('model')}`: pretrained `{p.get('source')}` ({p.get('parameters'):,} parameters), not trained here."
    return [Heading(2, "Source model"), Para(line)]


def tuning_section(cfg: dict, summary: dict) -> list[Block]:
    from ..tune import TUNING_COLUMNS, merge_docs, tuning_summary

    tuned = [Path(TUNED.format(dataset=cfg["benchmark"], model=cfg["model"]["name"], method=m))  # stage tune
             for m in cfg["adapt"]["methods"]]
    doc = merge_docs([json.loads(t.read_text()) for t in tuned if t.is_file()])
    if doc is None:
        return []
    summary["tuned"] = doc.get("best", {})
    text, rows = tuning_summary(doc)
    return [Heading(2, "Hyperparameters"), Para(text)] + ([] if rows is None else [Table.grid(TUNING_COLUMNS, rows, 3)])


# -- per direction: the numbers --------------------------------------------------------------------------------

@dataclass
class Direction:
    """One direction's tables, intervals, streams and figure paths."""

    name: str
    tables: dict
    unc: dict
    figs: dict
    has_severity: bool = False
    seq: dict = field(default_factory=dict)
    reference: dict = field(default_factory=dict)
    streams: dict = field(default_factory=dict)
    matched: list = field(default_factory=list)

    @property
    def ci(self) -> bool:
        return stats.has_intervals(self.unc)


def direction_summary(tables: dict, unc: dict) -> dict:
    """summary.json's per-method numbers of one direction."""
    r1 = tables["R@1"]
    return {m: {"avg_r1": row["Avg"], "clean_r1": row["Clean"],
                "cells_r1": {c: row[c] for c in r1["columns"] if c not in ("Avg", "Clean")},
                **({"diverged": r1["diverged"][m]} if m in r1["diverged"] else {}),
                **({"avg_excludes": r1["avg_excludes"][m]} if m in r1["avg_excludes"] else {}),
                **stats.summary_companions(unc).get(m, {})}
            for m, row in r1["rows"].items()}


def measure(g: Grid, direction: str, summary: dict) -> Direction:
    """Tables, intervals and streams of one direction (summary.json updated), and its figures."""
    cfg, found = g.cfg, g.found
    identity = any("mAP" in (doc.get("metrics") or {}) for r, doc in found.items() if r.direction == direction)
    extra = tuple(f"R@{k}" for k in direction_ks(direction) if f"R@{k}" not in METRICS)  # cir: R@50 (qshift.tasks)
    extra += tuple(k for k in SUBSET_METRICS if any(k in (doc.get("metrics") or {}) for r, doc in found.items()
                                                    if r.direction == direction))  # CIRR's Recall_subset@K
    tables = {k: direction_table(cfg, direction, found, k, g.diverged)
              for k in METRICS + (("mAP",) if identity else ()) + extra}
    tables.update(group_tables(cfg, direction, found, ("R@10", "R@50"), g.diverged))  # FashionIQ's categories
    unc = stats.direction_intervals(cfg, direction, found)  # bootstrap intervals (qshift.stats)
    summary["directions"][direction] = direction_summary(tables, unc)
    figs = {k: g.fig_dir / f"{direction}_{k}.png" for k in ("r1", "online", "heatmap", "severity", "forgetting")}
    d = Direction(direction, tables, unc, figs)
    plot_bars(tables["R@1"], f"R@1 per query shift — {direction}", figs["r1"],
              errors=stats.error_bars(tables["R@1"], unc))
    plot_heatmap(tables["R@1"], f"R@1, method x shift — {direction} (second line: Δ to source)", figs["heatmap"])
    plot_online(cfg, direction, found, figs["online"])
    d.has_severity = plot_severity(cfg, direction, found, figs["severity"])
    d.seq, d.reference = sequential_curves(found, direction), independent_r1(found, direction)
    d.streams = stream_tables(cfg, direction, found, d.reference)
    d.matched = stats.matched_streams(cfg, direction, found, d.streams)  # same queries, by query id
    if d.matched:
        summary.setdefault("streams_matched", {})[direction] = d.matched
        d.reference = {**d.reference, **{m: {**d.reference.get(m, {}), **v}
                                         for m, v in stats.matched_reference(d.matched).items()}}
    if d.streams:
        summary.setdefault("streams", {})[direction] = streams_summary(d.streams)
    if d.seq:
        plot_forgetting(d.seq, figs["forgetting"], f"Sequential streams — {direction}", dict(d.reference))
    return d


def streams_summary(st_tables: dict) -> dict:
    return {name: {"kind": t["kind"], "domains": t["domains"],
                   "methods": {m: {"r1": row["r1"], "alone_r1": row["alone"],
                                   "by_domain": {d: {"r1": c["r1"], "alone_r1": c["alone"]}
                                                 for d, c in row["by_domain"].items()}}
                               for m, row in t["rows"].items()}}
            for name, t in st_tables.items()}


# -- per direction: the blocks ----------------------------------------------------------------------------------

def results_blocks(d: Direction) -> list[Block]:
    """The R@K tables. Markdown: R@1 (with intervals when there are), Δ to source; HTML: R@1,
    R@5, R@10 with a Δ line per cell, the interval tables under R@1."""
    r1, unc, ci = d.tables["R@1"], d.unc, d.ci
    delta = delta_table(r1)
    md = [Table.grid(*stats.ci_rows(r1, unc)) if ci else metric_block(r1)]
    md += [Para(avg_note(r1))] if avg_note(r1) else []
    if delta is not None and delta["rows"]:
        md += [Para("Δ R@1 to `source`, per cell:"), Table.grid(*stats.delta_rows(unc)) if ci else delta_block(delta)]
    md += [Para(stats.note(unc))] if ci else []
    h: list[Block] = []
    for k in METRICS:
        h += [Heading(3, f"{k} (%)"), metric_block(d.tables[k], html=True)]
        h += [Para(avg_note(d.tables[k]), "note")] if avg_note(d.tables[k]) else []
        if k == "R@1" and ci:
            h += [Heading(3, "R@1 with 95% intervals; paired Δ to source"), Table.grid(*stats.ci_rows(r1, unc)),
                  Table.grid(*stats.delta_rows(unc)), Para(stats.note(unc), "note")]
    noted = False
    for k in (k for k in d.tables if k.startswith(("R@", "R_subset@")) and k not in METRICS):  # cir: R@50, ...
        if " " in k and not noted:  # FashionIQ's per-category tables (tables.group_tables) follow
            md, h, noted = md + [Para(GROUP_NOTE)], h + [Para(GROUP_NOTE, "note")], True
        md += [Para(f"{k} (%):"), metric_block(d.tables[k])]
        h += [Heading(3, f"{k} (%)"), metric_block(d.tables[k], html=True)]
    if "mAP" in d.tables:  # identity-level datasets (ReID): mAP beside R@K, in both renderings
        md += [Para(IDENTITY_NOTE), Para("mAP (%):"), metric_block(d.tables["mAP"])]
        h += [Heading(3, "mAP (%)"), Para(IDENTITY_NOTE, "note"), metric_block(d.tables["mAP"], html=True)]
    missing = stats.missing_note(unc)
    return ([Heading(2, DIRECTION_TITLE.get(d.name) or direction_title(d.name)), md_only(*md), html_only(*h)]
            + ([Para(missing, "missing")] if missing else []) + [html_only(Para(LEGEND_NOTE, "note"))])


def paper_blocks(g: Grid, direction: str, summary: dict) -> list[Block]:
    """The paper's numbers beside ours, where the queries came from, and a check of the Base row."""
    cmp = paper_comparison(g.cfg, direction, g.found)
    out: list[Block] = [html_only(Heading(3, "Paper reference")), Para(cmp["note"], "note")]
    if cmp["rows"]:
        out += [md_only(paper_block(cmp)), html_only(paper_block(cmp, html=True))]
    prov_line, prov = query_provenance(g.cfg, direction)
    if prov_line:
        out += [Para(prov_line, "note")]
        summary.setdefault("query_provenance", {})[direction] = prov
    flags = paper.base_deviations(cmp["rows"])
    if flags:
        out += [Para(f"**Check the set-up:** the reproduced Base (`source`, no adaptation) deviates from the paper's "
                     f"by more than {paper.BASE_TOLERANCE:g} R@1 point in " + ", ".join(
                         f"{f['column']} ({_fmt(f['ours'])} vs {_fmt(f['paper'])}, {f['gap']:+.1f})" for f in flags)
                     + " — data, weights or preprocessing differ from the paper's.", "missing")]
        summary.setdefault("base_deviations", {})[direction] = flags
    return out


def figure_blocks(d: Direction) -> list[Block]:
    f, n = d.figs, d.name
    return [html_only(Heading(3, "Figures")), Figure(f["r1"], f"figures/{n}_r1.png", "R@1 per shift", f"R@1 per shift, {n}"),
            Figure(f["heatmap"], f"figures/{n}_heatmap.png", "R@1 heatmap", f"R@1 heatmap, {n}"),
            Figure(f["severity"], f"figures/{n}_severity.png", "R@1 against severity", f"R@1 against severity, {n}")
            if d.has_severity else Para(SEVERITY_NOT_PLOTTED, "note"),
            Figure(f["online"], f"figures/{n}_online.png", "Online R@1", f"Online R@1, {n}")]


def stream_blocks(d: Direction) -> list[Block]:
    """Streams against the independent runs; per domain for mixed streams; the matched comparison."""
    if not d.streams:
        return []
    out: list[Block] = [Heading(3, f"Streams — {d.name}"), Para(STREAMS_NOTE, "note"), streams_block(d.streams)]
    for name, t in d.streams.items():
        if t["kind"] == "mixed" and t["rows"]:
            out += [Para(f"Mixed stream `{name}`, per domain:"), mixed_domain_block(t)]
    if d.matched:
        out += [Para(stats.MATCHED_NOTE, "note"), Table.grid(*stats.matched_rows(d.matched))]
    return out


def sequential_blocks(d: Direction) -> list[Block]:
    """Each domain segment of a sequential stream (with per-query outcomes the matched table
    above is the exact comparison; batch segments show drift)."""
    if not d.seq:
        return []
    forget = forgetting_table(d.seq, None if d.matched else dict(d.reference))
    return [html_only(Heading(3, "Sequential streams")),
            Para(stats.SEGMENTS_NOTE if d.matched else SEQUENTIAL_NOTE, "note"), forgetting_block(forget),
            Figure(d.figs["forgetting"], f"figures/{d.name}_forgetting.png", "Forgetting", f"Forgetting, {d.name}")]


def seed_blocks(g: Grid, direction: str, summary: dict) -> list[Block]:
    if len(g.seeds) < 2:
        return []
    across = stats.seed_summary(g.cfg, direction, g.by_seed)
    summary.setdefault("seeds", {})[direction] = {
        m: {"per_seed": {str(k): v for k, v in row["per_seed"].items()}, "n_seeds": row["n"],
            "avg_r1_mean": row["mean"], "avg_r1_mean_lo": row["lo"], "avg_r1_mean_hi": row["hi"],
            **({"delta_to_source": row["delta"]} if row["delta"] else {})}
        for m, row in across["rows"].items()}
    return [Heading(3, f"Seeds — {direction}"), Para(stats.SEEDS_NOTE, "note"), Table.grid(*stats.seed_rows(across))]


def folded_blocks(d: Direction) -> list[Block]:
    """The Markdown's R@5 and R@10, folded (the HTML shows them with R@1)."""
    return [md_only(Details("R@5 and R@10", [Para("R@5"), metric_block(d.tables["R@5"]),
                                             Para("R@10"), metric_block(d.tables["R@10"])]))]


def skipped_blocks(found: dict[Run, dict], direction: str) -> list[Block]:
    counters: dict = defaultdict(dict)
    for r, doc in found.items():
        if r.direction == direction and doc.get("counters", {}).get("skipped_steps"):
            where = r.corruption if doc.get("stream") else cell_label(r.corruption, r.severity, True)
            counters[r.method][where] = doc["counters"]["skipped_steps"]
    if not counters:
        return []
    return [Para("Skipped optimisation steps (empty selection or non-finite loss): " +
                 "; ".join(f"{m}: " + ", ".join(f"{c} {n}" for c, n in d.items()) for m, d in counters.items()),
                 "note")]


def direction_section(g: Grid, direction: str, summary: dict) -> list[Block]:
    d = measure(g, direction, summary)
    return (results_blocks(d) + paper_blocks(g, direction, summary) + figure_blocks(d) + stream_blocks(d)
            + sequential_blocks(d) + seed_blocks(g, direction, summary) + folded_blocks(d)
            + skipped_blocks(g.found, direction))


# -- the tail: corruption examples, failures, MLflow --------------------------------------------------------------

def examples_section(cfg: dict, out_dir: Path) -> list[Block]:
    ex_dir = Path(EXAMPLES_DIR.format(report=cfg["report"]["dir"]))
    if not (ex_dir / "contact_sheet.png").is_file():
        return []
    rel = os.path.relpath(ex_dir, out_dir)
    return [Heading(2, "Corruption examples"),
            Figure(ex_dir / "contact_sheet.png", f"{rel}/contact_sheet.png", "Contact sheet",
                   "Image corruptions by severity"),
            Para(f"Text corruptions by type and level: [{rel}/text_examples.md]({rel}/text_examples.md)")]


def _safe_uri(uri: str) -> str:
    """A tracking URI without credentials (user:password@host)."""
    if "://" in uri and "@" in uri.split("://", 1)[1].split("/", 1)[0]:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return uri


def tracking_blocks(sync: dict | None) -> list[Block]:
    """What was replayed to MLflow and what still fails (the "Not run / failed" section)."""
    if sync is None:
        return [Para("MLflow: replay not attempted (report built without tracking).")]
    items: list = []
    if sync["replayed"]:
        items.append("replayed now (not logged when they ran; the results files are unchanged): " +
                     ", ".join(f"`{r.result_path}`" for r, _ in sync["replayed"]))
    if sync["failing"]:
        items.append(("still not logged (numbers above are from the results files; the next report run retries):",
                      [f"`{r.result_path}`: {err}" for r, err in sync["failing"]]))
    if sync.get("error"):
        items.append(f"sweep bookkeeping failed: {sync['error']}")
    if not sync["replayed"] and not sync["failing"] and not sync.get("error"):
        items.append("every finished run is logged.")
    lead = f"MLflow (`{_safe_uri(sync['uri'])}`, experiment `{sync['experiment']}`, sweep `{sync['sweep']}`):"
    return [Bullets(items, lead=lead)]


def failures_section(cfg: dict, missing: list, sync: dict | None, summary: dict) -> list[Block]:
    out: list[Block] = [Heading(2, "Not run / failed")]
    skipped_types = not_run_types(cfg)
    if skipped_types:
        out += [Bullets([f"text corruption `{n}`: {why}" for n, why in skipped_types.items()], cls="missing")]
        summary["not_run_types"] = skipped_types
    if missing:
        out += [Bullets([f"`{r.result_path}`: {why}" for r, why in missing], cls="missing")]
    else:
        out += [Para("Every run of the grid finished.", "ok")]
    return out + tracking_blocks(sync)


def finish_summary(summary: dict, g: Grid, sync: dict | None) -> None:
    summary["missing"] = [{"run": r.result_path, "reason": why} for r, why in g.missing]
    if g.diverged or g.other_diverged:
        summary["diverged"] = [{"run": r.result_path, **doc["diverged"]} for r, doc in
                               sorted({**g.diverged, **g.other_diverged}.items(), key=lambda kv: kv[0].result_path)]
    if sync is not None:
        summary["mlflow"] = {"replayed": len(sync["replayed"]), "failing": len(sync["failing"])}


def build_report(cfg: dict, out_dir: str | Path = "reports", track: bool = True) -> dict:
    """Write report.md, report.html, summary.json and figures/; returns the summary.

    ``track``: replay unlogged results to MLflow and keep the sweep's parent run up to date
    (never modifies a results file); False builds the report from the files alone.
    """
    from ..observations import report_section  # variants/ablations and the papers' observations

    out_dir = Path(out_dir)
    stage = reportset.staging(out_dir)  # the new set is built here, then swapped in
    g = gather(cfg, stage / "figures")
    sync = _sync(g) if track else None
    summary: dict = {"benchmark": cfg["benchmark"], "model": cfg["model"]["name"], "directions": {}}
    title = f"QShift report — {cfg['benchmark']} / {cfg['model']['name']}"
    blocks = head_section(cfg, g.seeds, title) + source_model_section(cfg) + tuning_section(cfg, summary)
    for direction in cfg["adapt"]["directions"]:
        blocks += direction_section(g, direction, summary)
    obs_blocks, obs_summary = report_section(cfg, g.found, g.fig_dir)
    blocks += obs_blocks
    summary.update(obs_summary)
    faults.point("report:after_figures")  # tests: a kill here must leave the previous report as it was
    blocks += examples_section(cfg, out_dir) + failures_section(cfg, g.missing, sync, summary)
    finish_summary(summary, g, sync)
    write_text(stage / "report.md", markdown(blocks))
    write_text(stage / "report.html", page(title, blocks))
    write_json(stage / "summary.json", summary)
    reportset.swap_in(stage, out_dir)
    return summary
