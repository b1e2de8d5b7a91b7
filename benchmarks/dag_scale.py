"""How the workflow scales to the paper's grid: DAG build time and no-op rerun time.

1. Dry run of the largest grid the registries can express today, in a temporary copy of the
   repository: every registered image corruption at severities 1-5, every registered text
   corruption at levels 1-7, every registered TTA method, both directions (target <= 30 s).
   The paper's grid is 2 datasets x 2 models x 9 methods x (16 image types x 5 severities +
   15 text types x 7 levels, plus the clean references); the printout says which parts of it
   the current registries cannot express and what the measured time extrapolates to.
2. Given a finished repository (e.g. the copy a test or `scripts/run.sh` left behind), the
   time of a rerun that has nothing to do, for Snakemake and for DVC (target <= 5 s each).

    python benchmarks/dag_scale.py [FINISHED_REPO] [--repeat 2]

Prints figures; it is not a test.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from qshift.corrupt import IMAGE_CORRUPTIONS, TEXT_CORRUPTIONS  # noqa: E402
from qshift.tta import METHODS  # noqa: E402

TARGET_DRY_RUN_S = 30.0
TARGET_NOOP_S = 5.0
# the paper's grid (docs/benchmarks.md)
PAPER = {"datasets": 2, "models": 2, "methods": 9, "image_types": 16, "severities": 5,
         "text_types": 15, "levels": 7, "directions": 2}
PAPER_TEXT_TYPES = 15  # OCR, CI, CR, CS, CD, SR, RI, RS, RD, IP, Formal, Casual, Passive, Active, Backtrans


def env() -> dict:
    e = dict(os.environ)
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e['PATH']}"
    e["PYTHONPATH"] = str(REPO / "src") + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e["QSHIFT_PROGRESS"] = "0"
    return e


def timed(cmd: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True)
    return time.perf_counter() - t0, proc


def copy_repo(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split("\n")
    for f in files:
        if f and not f.startswith("tests/") and (REPO / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, dest / f)


def grid_params() -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    methods = METHODS.names()
    params["corrupt"]["image"]["names"] = IMAGE_CORRUPTIONS.names()
    params["corrupt"]["image"]["severities"] = [1, 2, 3, 4, 5]
    params["corrupt"]["text"]["names"] = TEXT_CORRUPTIONS.names()
    params["corrupt"]["text"]["levels"] = [1, 2, 3, 4, 5, 6, 7]
    # the sentence-level types join the grid only with a model named (a dry run loads none)
    params["corrupt"]["text"]["models"] = {
        "formal": "prithivida/informal_to_formal_styletransfer", "casual": "prithivida/formal_to_informal_styletransfer",
        "passive": "prithivida/active_to_passive_styletransfer", "active": "prithivida/passive_to_active_styletransfer",
        "backtrans": ["facebook/wmt19-en-de", "facebook/wmt19-de-en"]}
    params["adapt"]["methods"] = methods
    params["adapt"]["directions"] = ["i2t", "t2i"]
    for m in methods:
        params["methods"].setdefault(m, {})
    return params


def job_stats(out: str) -> dict[str, int]:
    table = out[out.index("Job stats:"):] if "Job stats:" in out else ""
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


def verdict(seconds: float, target: float) -> str:
    return f"{seconds:6.2f} s  (target <= {target:.0f} s: {'OK' if seconds <= target else 'OVER'})"


def dry_run(repeat: int) -> None:
    params = grid_params()
    n_img, n_txt = len(params["corrupt"]["image"]["names"]), len(params["corrupt"]["text"]["names"])
    n_methods = len(params["adapt"]["methods"])
    print("== 1. Dry run of the full grid the registries express ==")
    print(f"grid: 1 dataset ({params['benchmark']}) x 1 model ({params['model']['name']}) x {n_methods} methods "
          f"({', '.join(params['adapt']['methods'])})")
    print(f"      x ({n_img} image corruptions x 5 severities [i2t] + {n_txt} text corruptions x 7 levels [t2i]"
          f" + clean i2t/t2i)")
    with tempfile.TemporaryDirectory(prefix="qshift-dag-") as tmp:
        repo = Path(tmp)
        copy_repo(repo)
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        times = []
        for _ in range(repeat):
            seconds, proc = timed(["snakemake", "--dry-run", "--quiet", "rules", "--cores", "1"], repo)
            if proc.returncode != 0:
                print(proc.stdout[-2000:], proc.stderr[-4000:], sep="\n")
                raise SystemExit("snakemake --dry-run failed")
            times.append(seconds)
        stats = job_stats(proc.stdout + proc.stderr)
    total = stats.get("total", 0)
    print(f"jobs: {total} ({', '.join(f'{k} {v}' for k, v in stats.items() if k != 'total')})")
    print(f"snakemake --dry-run: {verdict(min(times), TARGET_DRY_RUN_S)}"
          f"   [runs: {', '.join(f'{t:.2f}' for t in times)} s]")

    p = PAPER
    cells = p["image_types"] * p["severities"] + p["text_types"] * p["levels"]
    paper_adapt = p["datasets"] * p["models"] * p["methods"] * (cells + p["directions"])  # + clean refs
    paper_other = (p["datasets"] * cells  # corrupted query sets
                   + p["datasets"] * p["models"]  # galleries
                   + p["datasets"] + 2)  # prepare per dataset, report(s), all
    paper_jobs = paper_adapt + paper_other
    scale = paper_jobs / max(total, 1)
    print(f"paper grid: {p['datasets']} datasets x {p['models']} models x {p['methods']} methods x "
          f"({p['image_types']} image types x {p['severities']} + {p['text_types']} text types x {p['levels']}"
          f" + 2 clean) = {paper_adapt} adapt jobs, ~{paper_jobs} jobs in all ({scale:.1f}x this DAG)")
    est = min(times) * scale
    print(f"  linear extrapolation of the dry run to the whole paper grid in one DAG: ~{est:.0f} s "
          f"(target <= {TARGET_DRY_RUN_S:.0f} s: {'OK' if est <= TARGET_DRY_RUN_S else 'OVER'}; an estimate, "
          f"not a measurement)")
    per_inv = paper_jobs / (p["datasets"] * p["models"])
    print(f"  the workflow runs one (dataset, model) per invocation: ~{per_inv:.0f} jobs each, "
          f"~{min(times) * per_inv / max(total, 1):.0f} s per dry run (extrapolated)")
    print("not expressible yet with the current registries and workflow:")
    print(f"  - datasets: the workflow runs one `benchmark` per invocation, and only 'builtin' exists "
          f"(paper: COCO and Flickr30k)")
    print(f"  - models: one `model` per invocation, only the trained-here qshift-tiny-clip "
          f"(paper: BLIP ViT-B/16 and ViT-L/16)")
    missing_txt = PAPER_TEXT_TYPES - n_txt
    print(f"  - text corruptions: {n_txt} registered ({', '.join(TEXT_CORRUPTIONS.names())}); "
          f"the paper has {PAPER_TEXT_TYPES} ({missing_txt} missing: word-level SR/RI/RS/RD/IP, sentence-level "
          f"Formal/Casual/Passive/Active/Backtrans)" if missing_txt > 0 else
          f"  - text corruptions: all {n_txt} registered")
    extra = n_img - p["image_types"]
    if extra > 0:
        print(f"  - image corruptions: {n_img} registered, {extra} more than the paper's 16 "
              f"(the grid above includes them)")


def noop(repo: Path, repeat: int) -> None:
    print(f"\n== 2. No-op rerun of a finished pipeline: {repo} ==")
    seconds, proc = timed(["snakemake", "--dry-run", "--cores", "1"], repo)
    if "Nothing to be done" not in proc.stdout + proc.stderr:
        print("snakemake: not measured, the pipeline there is not finished (`snakemake -n` plans jobs)")
    else:
        times = []
        for _ in range(repeat):
            seconds, proc = timed(["snakemake", "--cores", "1"], repo)
            times.append(seconds)
        print(f"snakemake --cores 1 (nothing to do): {verdict(min(times), TARGET_NOOP_S)}"
              f"   [runs: {', '.join(f'{t:.2f}' for t in times)} s]")
    seconds, proc = timed(["dvc", "status"], repo)
    if proc.returncode != 0 or "up to date" not in proc.stdout:
        print(f"dvc: not measured, `dvc status` is not clean there ({seconds:.1f} s); adopt Snakemake's outputs "
              f"with `dvc commit -f` or run `dvc repro` first")
        return
    print(f"dvc status: {verdict(seconds, TARGET_NOOP_S)}")
    times = []
    for _ in range(repeat):
        seconds, proc = timed(["dvc", "repro"], repo)
        if "Running stage" in proc.stdout:
            print("dvc repro ran a stage; the figure below is not a no-op")
        times.append(seconds)
    print(f"dvc repro (nothing to do): {verdict(min(times), TARGET_NOOP_S)}"
          f"   [runs: {', '.join(f'{t:.2f}' for t in times)} s]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("finished_repo", nargs="?", type=Path, help="a repository copy whose pipeline has run")
    ap.add_argument("--repeat", type=int, default=2, help="timed runs per command; the best is reported")
    args = ap.parse_args()
    dry_run(args.repeat)
    if args.finished_repo and not (args.finished_repo / "workflow/Snakefile").is_file():
        raise SystemExit(f"{args.finished_repo}: not a QShift repository (no workflow/Snakefile)")
    if args.finished_repo:
        noop(args.finished_repo.resolve(), args.repeat)
    else:
        print("\n(no-op rerun not measured: pass a finished repository copy as argument)")


if __name__ == "__main__":
    main()
