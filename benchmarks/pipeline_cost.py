"""The cost budget of a finished pipeline run, from its logs and results (nothing is rerun).

Prints:

1. per stage (Snakemake rule): jobs, total / mean / max job wall time, peak RSS;
2. the adapt stage: job wall time against the adaptation itself (``timing.seconds`` of
   each results file; an adapt job runs every cell of a (method, direction, seed) or of every
   method of a (direction, seed) (params adapt_jobs), so the
   files of its folder are summed: run it on a fresh pipeline, where every cell ran in its
   job) — the overhead (process start, imports, model/gallery/query loading, MLflow) as a
   share of the stage's wall time (target <= 15 %);
3. per method: adaptation seconds as a multiple of ``source`` on the same cells, and as a
   multiple of its floor (the query-tower passes it must make: source 1 forward; entropy
   methods and TCR ``steps`` x (forward + backward) ~ 3 x steps forwards; SAR twice that;
   TCR should stay within 1.3x of its floor);
4. the elapsed time of the whole run, the largest peak RSS, and the run's CPU work: each stage
   logs the CPU seconds of its process and children as its last line (``qshift.cli.log_usage``);
   a job without that line counts its benchmark's ``cpu_time`` or, if larger, its wall time
   (Snakemake samples ``cpu_time`` every 0.5 s for 15 s, then every 30 s). On ``--cores`` cores
   no schedule of these jobs finishes in less than work / cores: that bound over the elapsed
   time is the scheduling's efficiency, and what a wall-time target needs is read off the work
   (5 minutes on 2 cores = 600 core-seconds).

Job wall times and peak RSS come from Snakemake's ``benchmark:`` files
(``logs/benchmarks/<rule>/...tsv``, written by every rule); without them (e.g. a ``dvc
repro`` run) the wall time falls back to the span between a job log's first and last
timestamps, a lower bound that misses process start and imports (a stage that logs one line
has none), and RSS reads n/a.

    python benchmarks/pipeline_cost.py [--root .] [--params params.yaml] [--cores N] [--json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
from collections import defaultdict
from datetime import datetime
from pathlib import Path

FLOOR = {"source": 1.0, "tcr_untrain": 1.0}  # forward-only methods; the rest: steps x (fwd + bwd)
TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
CPU_LOGGED = re.compile(r"qshift\.stage: cpu: ([0-9.]+) s ")  # qshift.cli.CPU_LINE


def floor(method: str, steps: int) -> float:
    """Forward-pass equivalents per batch a method cannot avoid (a backward ~ 2 forwards)."""
    if method in FLOOR:
        return FLOOR[method]
    return steps * 3.0 * (2 if method == "sar" else 1)


def _log_span(path: Path) -> tuple[float, float, float | None] | None:
    """(first, last) timestamp of a stage log (``%(asctime)s`` lines), as POSIX seconds, and the
    CPU seconds its closing line reports (None without one)."""
    stamps, cpu = [], None
    try:
        for line in path.read_text(errors="replace").splitlines():
            m = TIMESTAMP.match(line)
            if m:
                stamps.append(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp())
            c = CPU_LOGGED.search(line)
            if c:
                cpu = float(c.group(1))
    except OSError:
        return None
    return (min(stamps), max(stamps), cpu) if stamps else None


def _bench_row(path: Path) -> dict | None:
    """Snakemake's benchmark TSV: s, h:m:s, max_rss (MiB), ...; the first repeat."""
    try:
        with path.open() as f:
            row = next(csv.DictReader(f, delimiter="\t"))
    except (OSError, StopIteration):
        return None

    def num(key):
        try:
            return float(row.get(key, "NA"))
        except (TypeError, ValueError):
            return None

    return {"wall": num("s"), "rss": num("max_rss"), "cpu": num("cpu_time")}


def collect(root: Path) -> list[dict]:
    """One record per job: stage, key (the log path below the stage, no suffix), wall, rss,
    where the wall time came from, and the log's first/last timestamps."""
    logs, bench = root / "logs", root / "logs" / "benchmarks"
    jobs: dict[tuple[str, str], dict] = {}
    if bench.is_dir():
        for p in sorted(bench.rglob("*.tsv")):
            rel = p.relative_to(bench).with_suffix("")
            row = _bench_row(p)
            if row and row["wall"] is not None:
                jobs[(rel.parts[0], "/".join(rel.parts[1:]))] = {**row, "from": "benchmark"}
    if logs.is_dir():
        for p in sorted(logs.rglob("*.log")):
            rel = p.relative_to(logs).with_suffix("")
            if rel.parts[0] == "benchmarks" or len(rel.parts) < 2:
                continue
            span = _log_span(p)
            job = jobs.setdefault((rel.parts[0], "/".join(rel.parts[1:])), {"wall": None, "rss": None, "cpu": None,
                                                                             "from": "log"})
            if span:
                job["start"], job["end"], job["cpu_logged"] = span
                if job["wall"] is None and span[1] > span[0]:  # a stage that logs once gives no span
                    job["wall"] = span[1] - span[0]
    return [{"stage": s, "key": k, **v} for (s, k), v in sorted(jobs.items())]


def _cell(path: Path) -> tuple[float, str] | None:
    try:
        doc = json.loads(path.read_text())
        return float(doc["timing"]["seconds"]), doc["key"]["method"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def adapt_cells(root: Path, key: str) -> list[tuple[str, float, str]] | None:
    """(cell key, timing.seconds, method) of every results file adapt job ``key`` wrote: a job
    (<dataset>/<model>/<direction>/<method>/seed<seed>, every cell in its folder) or a single cell
    (.../seed<seed>/<corruption>-s<severity>), or a job of every method of a direction
    (<dataset>/<model>/<direction>/seed<seed>: params adapt_jobs: direction); None when it has none."""
    path = root / "results" / key
    if path.with_name(path.name + ".json").is_file():
        files = [path.with_name(path.name + ".json")]
    elif path.is_dir():
        files = sorted(path.glob("*.json"))
    else:  # a direction's job: every method's folder of that seed
        files = sorted(path.parent.glob(f"*/{path.name}/*.json"))
    cells = []
    for f in files:
        got = _cell(f)
        if got is not None:
            cells.append((str(f.relative_to(root / "results").with_suffix("")), *got))
    return cells or None


def _work(job: dict) -> float:
    """CPU seconds of a job: what its log's closing line reports, else the larger of its
    benchmark's (sampled) ``cpu_time`` and its wall time (it held a core throughout)."""
    if job.get("cpu_logged") is not None:
        return job["cpu_logged"]
    return max(job["cpu"] or 0.0, job["wall"])


def budget(root: Path, steps: int, cores: int | None = None) -> dict:
    everything = collect(root)
    jobs = [j for j in everything if j["wall"] is not None]
    untimed = sorted({j["stage"] for j in everything if j["wall"] is None})
    stages: dict[str, dict] = {}
    for j in jobs:
        s = stages.setdefault(j["stage"], {"jobs": 0, "wall": 0.0, "cpu": 0.0, "max": 0.0, "rss": None,
                                           "from": set()})
        s["jobs"] += 1
        s["wall"] += j["wall"]
        s["cpu"] += _work(j)
        s["max"] = max(s["max"], j["wall"])
        s["from"].add(j["from"])
        if j["rss"] is not None:
            s["rss"] = max(s["rss"] or 0.0, j["rss"])
    adapt = {"jobs": 0, "cells": 0, "wall": 0.0, "adapt": 0.0, "missing_results": 0}
    by_cell: dict[str, dict[str, float]] = defaultdict(dict)  # method -> {cell: seconds}
    for j in jobs:
        if j["stage"] != "adapt":
            continue
        got = adapt_cells(root, j["key"])
        if got is None:
            adapt["missing_results"] += 1
            continue
        adapt["jobs"] += 1
        adapt["wall"] += j["wall"]
        for cell, sec, method in got:
            adapt["cells"] += 1
            adapt["adapt"] += sec
            parts = cell.split("/")
            by_cell[method]["/".join(parts[:3] + parts[4:])] = sec  # the cell without the method
    adapt["overhead"] = (adapt["wall"] - adapt["adapt"]) / adapt["wall"] if adapt["wall"] else None
    methods = {}
    src = by_cell.get("source", {})
    for m, cells in sorted(by_cell.items()):
        shared = [c for c in cells if c in src]
        ratio = sum(cells[c] for c in shared) / sum(src[c] for c in shared) if shared and sum(
            src[c] for c in shared) > 0 else None
        fl = floor(m, steps)
        methods[m] = {"cells": len(cells), "seconds": sum(cells.values()), "x_source": ratio, "floor": fl,
                      "x_floor": ratio / fl if ratio is not None else None}
    starts = [j["start"] for j in everything if "start" in j]
    ends = [j["end"] for j in everything if "end" in j]
    rss = [j["rss"] for j in jobs if j["rss"] is not None]
    elapsed = (max(ends) - min(starts)) if starts else None
    cores = cores or os.cpu_count() or 1
    work = sum(_work(j) for j in jobs)
    bound = work / cores
    run = {"cores": cores, "cpu_work": work, "no_cpu_time": sum(j.get("cpu_logged") is None for j in jobs),
           "bound": bound, "efficiency": bound / elapsed if elapsed else None}
    return {"stages": {k: {**v, "from": sorted(v["from"])} for k, v in stages.items()}, "adapt": adapt,
            "methods": methods, "elapsed": elapsed, "run": run,
            "job_wall_total": sum(j["wall"] for j in jobs), "peak_rss": max(rss) if rss else None,
            "n_jobs": len(jobs), "untimed": {"jobs": len(everything) - len(jobs), "stages": untimed}}


def _f(v, fmt: str, width: int) -> str:
    return (format(v, fmt) if v is not None else "n/a").rjust(width)


def show(b: dict, steps: int) -> None:
    if b["untimed"]["jobs"]:
        print(f"{b['untimed']['jobs']} jobs have no wall time (no benchmark file, a single log line): "
              f"{', '.join(b['untimed']['stages'])} - run the pipeline with Snakemake for the full budget")
    if not b["n_jobs"]:
        print("no finished jobs found (run the pipeline first: logs/ and results/ are read)")
        return
    print(f"1. per stage ({b['n_jobs']} jobs)")
    print(f"{'stage':<22}{'jobs':>6}{'wall s':>10}{'mean s':>9}{'max s':>9}{'CPU s':>9}{'peak RSS MiB':>14}  source")
    for name, s in sorted(b["stages"].items(), key=lambda kv: -kv[1]["wall"]):
        print(f"{name:<22}{s['jobs']:>6}{s['wall']:>10.1f}{s['wall'] / s['jobs']:>9.1f}{s['max']:>9.1f}"
              f"{s['cpu']:>9.1f}{_f(s['rss'], '.0f', 14)}  {'+'.join(s['from'])}")
    print(f"{'all jobs':<22}{b['n_jobs']:>6}{b['job_wall_total']:>10.1f}{'':>18}{b['run']['cpu_work']:>9.1f}")
    a = b["adapt"]
    print(f"\n2. adapt stage: {a['jobs']} jobs ({a['cells']} cells), job wall {a['wall']:.1f} s, adaptation (timing.seconds) "
          f"{a['adapt']:.1f} s -> overhead {_f(a['overhead'] and 100 * a['overhead'], '.1f', 0)} % of the "
          f"stage's wall time (target <= 15 %)" + (f"; {a['missing_results']} jobs without a results file"
                                                   if a["missing_results"] else ""))
    print(f"\n3. per method (adaptation seconds; {steps} steps per batch)")
    print(f"{'method':<13}{'cells':>6}{'seconds':>10}{'x source':>10}{'floor':>7}{'x floor':>9}")
    for m, r in b["methods"].items():
        note = "  (target <= 1.3)" if m == "tcr" else ""
        print(f"{m:<13}{r['cells']:>6}{r['seconds']:>10.1f}{_f(r['x_source'], '.2f', 10)}{r['floor']:>7.0f}"
              f"{_f(r['x_floor'], '.2f', 9)}{note}")
    r = b["run"]
    print(f"\n4. run: elapsed {_f(b['elapsed'], '.1f', 0)} s (first to last log line), "
          f"peak RSS of any job {_f(b['peak_rss'], '.0f', 0)} MiB")
    print(f"   CPU work {r['cpu_work']:.1f} core-s" + (f" ({r['no_cpu_time']} jobs without the log's cpu line: "
                                                     f"their sampled cpu_time or wall time)" if r["no_cpu_time"] else "")
          + f": on {r['cores']} cores no schedule finishes under {r['bound']:.1f} s; that bound / the elapsed "
          f"time = scheduling efficiency {_f(r['efficiency'] and 100 * r['efficiency'], '.0f', 0)} %")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=".", help="the pipeline's working directory (holds logs/ and results/)")
    p.add_argument("--params", default=None, help="params file for adapt.steps (default: ROOT/params.yaml)")
    p.add_argument("--cores", type=int, default=None,
                   help="cores the run had, for the work bound (default: this machine's, os.cpu_count())")
    p.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    args = p.parse_args(argv)
    root = Path(args.root)
    steps = 3
    params = Path(args.params) if args.params else root / "params.yaml"
    if params.is_file():
        import yaml

        steps = int(((yaml.safe_load(params.read_text()) or {}).get("adapt") or {}).get("steps", steps))
    b = budget(root, steps, args.cores)
    show(b, steps)
    if args.json:
        print(json.dumps(b))
    return b


if __name__ == "__main__":
    main()
