"""The stage table: the one definition of what each pipeline stage runs, reads and writes.

Both orchestrators come from it:

* **DVC** — ``dvc.yaml`` is generated from :data:`STAGES` (``python -m qshift.pipeline dvc``
  writes it; ``--check`` exits 1 when the committed file is stale, as tests/test_layout.py
  checks). Never edit dvc.yaml by hand.
* **Snakemake** — every rule's rerun trigger, ``params: cfg=``, is :func:`param_hash` of the
  same stage's :attr:`Stage.params`; the rules' paths come from :mod:`qshift.config`'s path
  table, as the stage table's do.

A stage's parameters are dotted keys of the resolved params (``adapt.batch_size``), optionally
with a wildcard (``methods.{method}``), or one of the :data:`DERIVED` names for what a key path
cannot say (the selected dataset's entry, a method variant's base chain). ``grid`` keys list the
stage's cells (corruption names, severities, streams): DVC must track them as parameters, while
a Snakemake job declares its cells as outputs, so for Snakemake they are not part of the hash —
adding a severity schedules the new cells, it does not restart finished ones.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import config as qc
from .io import stable_hash, write_text
from .presets import get_dotted

DVC_FILE = "dvc.yaml"
# DVC's spelling of the wildcards a path pattern or key may contain
DVC_VARS = {"dataset": "${benchmark}", "model": "${model.name}", "report": "${report.dir}"}


@dataclass(frozen=True)
class Out:
    path: str
    cache: bool = True
    persist: bool = False
    comment: str = ""


@dataclass(frozen=True)
class Derived:
    """A parameter no single key path names: its DVC keys and its value for a Snakemake job."""

    dvc: tuple[str, ...]
    value: Callable[[dict, dict], Any]


def _method_hparams(cfg: dict, method: str) -> dict:
    """What a method's jobs run with, per direction: class defaults + params overrides (a
    variant's with its base chain), so a no-op override (a default set explicitly) reruns nothing
    and a changed base reruns its variants. Directions: image-text's, plus the grid's own where its
    task is another (``by_direction`` of v2a / a2v / cir then reruns their jobs; image-text keys,
    and so image-text triggers, unchanged)."""
    from .tasks import cfg_task

    own = tuple(d.name for d in cfg_task(cfg).directions if d.name not in qc.DIRECTIONS)
    return {str(d): qc.method_hparams(cfg, method, d) for d in (None, *qc.DIRECTIONS, *own)}


def _prebuilt(cfg: dict, wc: dict):
    from .data.prebuilt import prebuilt_dir

    root = prebuilt_dir(cfg)
    return None if root is None else str(root)


DERIVED: dict[str, Derived] = {
    # the datasets entry the benchmark runs on (DVC cannot index datasets by the benchmark)
    "dataset": Derived(("benchmark", "benchmarks", "datasets"), lambda cfg, wc: qc.dataset_params(cfg)),
    # the authors' prebuilt query sets, if the dataset names a folder (datasets.<name>.prebuilt)
    "prebuilt": Derived((), _prebuilt),
    "method": Derived(("methods.${item.method}",), lambda cfg, wc: _method_hparams(cfg, wc["method"])),
    # whether this method's jobs measure the gradient-angle probe (observe.grad_angle)
    "grad_angle": Derived(("observe.grad_angle",), lambda cfg, wc: qc.probes_angle(cfg, wc["method"])),
    "stream": Derived(("streams.{side}.${item.stream}",),
                      lambda cfg, wc: ((cfg.get("streams") or {}).get(wc["side"]) or {}).get(wc["stream"])),
    # the video-audio task's user-supplied environmental recordings (a preset key: qshift.va)
    "audio_noise": Derived((), lambda cfg, wc: [get_dotted(cfg, "corrupt.audio.noise_dir"),
                                                get_dotted(cfg, "corrupt.audio.bed_rms")]),
}


@dataclass(frozen=True)
class Stage:
    name: str
    script: str
    args: str = ""  # the command line after the script, DVC's ${item.x} for matrix values
    code: tuple[str, ...] = ()  # library code the stage runs (DVC deps; Snakemake: the rule's code)
    inputs: tuple[str, ...] = ()  # data it reads: path patterns of qshift.config
    params: tuple[str, ...] = ()  # what it reads from the params: the rerun trigger
    grid: tuple[str, ...] = ()  # params that list its cells (DVC params; Snakemake outputs)
    outs: tuple[Out, ...] = ()
    metrics: tuple[Out, ...] = ()
    matrix: dict[str, str] = field(default_factory=dict)
    comment: str = ""
    context: dict[str, str] = field(default_factory=dict)  # fixed wildcards (e.g. side=image)
    # a job's resources (Snakemake `resources:`; the SLURM profile turns them into sbatch flags):
    # mem_mb, runtime (minutes), gpu (one GPU per job under SLURM, --gpus=1; ignored by local runs),
    # gpu_model ("" = any GPU; slurm/config.yaml's `set-resources` pins one per site)
    resources: dict[str, Any] = field(default_factory=lambda: {"mem_mb": 2000, "runtime": 30})
    # False: a Snakemake-only stage, left out of dvc.yaml (DVC's stage list is fixed, so stages of
    # another task, e.g. adapt_cir, cannot depend on the benchmark there; qshift.presets.dvc_guard)
    dvc: bool = True


def _fill(text: str, values: dict[str, Any]) -> str:
    """``{name}`` placeholders replaced (DVC's own ``${...}`` left alone)."""
    return re.sub(r"(?<!\$)\{(\w+)\}", lambda m: str(values[m[1]]) if m[1] in values else m[0], text)


def _dvc_path(pattern: str, **extra: str) -> str:
    return _fill(pattern, {**DVC_VARS, **extra})


def _query_stages() -> list[Stage]:
    corrupt_code = ("src/qshift/corrupt",)
    dataset = (qc.DATASET_DIR,)
    stages = [
        Stage("corrupt_images", "stages/corrupt_images.py", "--corruption ${item.corruption} --severity ${item.severity}",
              corrupt_code, dataset,
              ("seed", "corrupt.image.jpeg_quality", "corrupt.image.implementation", "corrupt.image.mm_robustness",
               "prebuilt"),
              matrix={"corruption": "${corrupt.image.names}", "severity": "${corrupt.image.severities}"},
              resources={"mem_mb": 2000, "runtime": 60},
              outs=(Out(_dvc_path(qc.IMAGE_QUERIES, corruption="${item.corruption}", severity="${item.severity}")),)),
        Stage("corrupt_text", "stages/corrupt_text.py", "--corruption ${item.corruption} --level ${item.level}",
              corrupt_code, dataset,
              ("seed", "corrupt.text.models", "corrupt.text.prefixes", "corrupt.text.generation", "corrupt.text.filter",
               "prebuilt"),
              matrix={"corruption": "${corrupt.text.names}", "level": "${corrupt.text.levels}"},
              outs=(Out(_dvc_path(qc.TEXT_QUERIES, corruption="${item.corruption}", severity="${item.level}")),)),
    ]
    for side, direction, pattern, extra in (("image", "i2t", qc.STREAM_IMAGE_QUERIES, ("corrupt.image.jpeg_quality",)),
                                            ("text", "t2i", qc.STREAM_TEXT_QUERIES, ())):
        stages.append(Stage(
            f"corrupt_stream_{side}", "stages/corrupt_stream.py", f"--direction {direction} --stream ${{item.stream}}",
            corrupt_code + ("src/qshift/streams.py",), dataset, ("seed", *extra, "stream"),
            matrix={"stream": f"${{streams.{side}}}"}, context={"side": side},
            resources={"mem_mb": 2000, "runtime": 60 if side == "image" else 30},
            outs=(Out(_dvc_path(pattern, stream="${item.stream}")),),
            comment="multi-domain query streams (params `streams`), one stage per stream" if side == "image" else ""))
    return stages


def _adapt_stage(direction: str) -> Stage:
    side = "image" if direction == "i2t" else "text"
    levels = "severities" if side == "image" else "levels"
    folder = qc.RESULT.rsplit("/", 1)[0]
    comment = ("online test-time adaptation: one stage per (method, direction, seed), as Snakemake's jobs\n"
               "under params adapt_jobs: method. The stage runs every cell of the grid for it (clean for\n"
               "adapt.clean_methods, each corruption x severity, the direction's streams for streams.methods)\n"
               "into its results folder; `persist: true` keeps the folder's files when DVC reruns the stage,\n"
               "and the stage skips the cells that are up to date (src/qshift/cells.py: same fingerprint), so\n"
               "a new severity or one deleted results file runs just those cells.") if direction == "i2t" else ""
    return Stage(
        f"adapt_{direction}", "stages/adapt.py", f"--method ${{item.method}} --direction {direction} --seed ${{item.seed}}",
        ("src/qshift/cells.py", "src/qshift/tta", "src/qshift/adapt.py", "src/qshift/streams.py"),
        (qc.DATASET_DIR, "data/queries/{dataset}", qc.GALLERY, qc.MODEL_DIR, qc.TUNED.replace("{method}", "${item.method}")),
        ("seed", "amp", "adapt.batch_size", "adapt.steps", "adapt.order", "method", "grad_angle"),
        grid=("adapt.clean_methods", f"corrupt.{side}.names", f"corrupt.{side}.{levels}", "streams.methods",
              f"streams.{side}"),
        matrix={"method": "${adapt.methods}", "seed": "${seeds}"},
        resources={"mem_mb": 4000, "runtime": 240, **GPU},  # runtime: every cell of the job
        outs=(Out(_dvc_path(folder, direction=direction, method="${item.method}", seed="${item.seed}"),
                  cache=False, persist=True),),
        comment=comment)


def _adapt_cir_stage() -> Stage:
    """Composed image retrieval (qshift.cir): one job per (method, seed) over the image cells
    (corrupted references) and the text cells (corrupted modification texts). Snakemake only."""
    base = _adapt_stage("i2t")
    folder = qc.RESULT.rsplit("/", 1)[0]
    return Stage(
        "adapt_cir", base.script, "--method ${item.method} --direction cir --seed ${item.seed}",
        base.code + ("src/qshift/cir.py", "src/qshift/tasks.py", "src/qshift/models/composed.py"), base.inputs,
        base.params, grid=("adapt.clean_methods", "corrupt.image.names", "corrupt.image.severities",
                           "corrupt.text.names", "corrupt.text.levels", "streams.methods"),
        # (streams.cir, the preset's composed streams, has no top-level default: the grid keys are DVC's)
        matrix=base.matrix, resources=base.resources, dvc=False,
        outs=(Out(_dvc_path(folder, direction="cir", method="${item.method}", seed="${item.seed}"),
                  cache=False, persist=True),))


def _cir_stream_stage() -> Stage:
    """A composed query stream (params ``streams.cir``; qshift.cir_streams): the image cells' and the
    text cells' corruption settings, as corrupt_images / corrupt_text read them. Snakemake only."""
    return Stage("corrupt_stream_cir", "stages/corrupt_stream.py", "--direction cir --stream ${item.stream}",
                 ("src/qshift/corrupt", "src/qshift/streams.py", "src/qshift/cir_streams.py"), (qc.DATASET_DIR,),
                 ("seed", "corrupt.image.jpeg_quality", "corrupt.image.implementation", "corrupt.image.mm_robustness",
                  "corrupt.text.models", "corrupt.text.prefixes", "corrupt.text.generation", "corrupt.text.filter",
                  "stream"), context={"side": "cir"}, resources={"mem_mb": 2000, "runtime": 60}, dvc=False)


def _va_stages() -> list[Stage]:
    """Video-audio retrieval (qshift.va; benchmark builtin-va): the corrupted video / audio query sets
    and streams (stages/corrupt_va.py, clip sets) and one adapt job per (direction, method, seed).
    Snakemake only (workflow/rules/va.smk); dvc_guard refuses the task under DVC."""
    code = ("src/qshift/va.py", "src/qshift/corrupt", "src/qshift/streams.py")
    video = ("seed", "corrupt.image.implementation", "corrupt.image.mm_robustness")
    out = [Stage("corrupt_video", "stages/corrupt_va.py", "--side video", code, (qc.DATASET_DIR,), video,
                 resources={"mem_mb": 2000, "runtime": 60}, dvc=False),
           Stage("corrupt_audio", "stages/corrupt_va.py", "--side audio", code, (qc.DATASET_DIR,),
                 ("seed", "audio_noise"), resources={"mem_mb": 2000, "runtime": 30}, dvc=False)]
    for side in ("video", "audio"):
        out.append(Stage(f"corrupt_stream_{side}", "stages/corrupt_va.py", f"--side {side} --stream ${{item.stream}}",
                         code, (qc.DATASET_DIR,), (*video, "audio_noise", "stream"), context={"side": side},
                         resources={"mem_mb": 2000, "runtime": 60}, dvc=False))
    base = _adapt_stage("i2t")
    folder = qc.RESULT.rsplit("/", 1)[0]
    for direction in ("v2a", "a2v"):
        out.append(Stage(
            f"adapt_{direction}", base.script, f"--method ${{item.method}} --direction {direction} --seed ${{item.seed}}",
            base.code + ("src/qshift/va.py", "src/qshift/tasks.py", "src/qshift/models/video_audio.py",
                         "src/qshift/models/tiny_va.py"), base.inputs, base.params, matrix=base.matrix,
            resources=base.resources, dvc=False,
            outs=(Out(_dvc_path(folder, direction=direction, method="${item.method}", seed="${item.seed}"),
                      cache=False, persist=True),)))
    return out


GPU = {"gpu": 1, "gpu_model": ""}
# fetching a pretrained source (no training): the pretrain job's resources then
FETCH_RESOURCES = {"mem_mb": 8000, "runtime": 120}


def resources(stage: str) -> dict[str, Any]:
    """A stage's job resources (the rules' ``resources: **qpipe.resources(...)``)."""
    return dict(STAGES[stage].resources)


def adapt_resources(direction: str, n_methods: int) -> dict[str, Any]:
    """An adapt job's resources: the stage's, its runtime (one method's cells) times the methods
    the job runs (params adapt_jobs: direction runs them all in one job)."""
    out = resources(f"adapt_{direction}")
    if "runtime" in out:
        out["runtime"] = out["runtime"] * max(1, n_methods)
    return out


REPORT_OUTS = ("reports/report.md", "reports/report.html", "reports/figures", "reports/summary.json",
               "reports/plots", "reports/tables")


def _stages() -> list[Stage]:
    nocache = dict(cache=False)
    return [
        Stage("download", "stages/download.py", code=("src/qshift/data/download.py", "src/qshift/data/karpathy.py",
                                                      "src/qshift/data/formats.py", "src/qshift/data/cir_real.py"),
              resources={"mem_mb": 2000, "runtime": 240},
              params=("dataset",), outs=(Out(qc.RAW_DIR),)),
        Stage("prepare", "stages/prepare.py", code=("src/qshift/data",), inputs=(qc.RAW_DIR,),
              resources={"mem_mb": 2000, "runtime": 60},
              params=("seed", "dataset"), outs=(Out(qc.DATASET_DIR),)),
        Stage("examples", "stages/examples.py", "--no-progress", ("src/qshift/corrupt",), (qc.DATASET_DIR,),
              ("seed", "corrupt.text", "corrupt.image.implementation", "corrupt.image.mm_robustness", "report.dir"),
              outs=tuple(Out(f"{qc.EXAMPLES_DIR}/{f}", **nocache)
                         for f in ("contact_sheet.png", "text_examples.md", "examples.json"))),
        Stage("pretrain", "stages/pretrain.py", code=("src/qshift/models",), inputs=(qc.DATASET_DIR,),
              resources={"mem_mb": 4000, "runtime": 60, "cpus_per_task": 2},
              params=("seed", "amp", "pretrain", "model.source"),
              outs=(Out(qc.MODEL_DIR), Out("reports/pretrain.json", comment=(
                  "the training figures (strings and numbers): an output, not a DVC metric, so\n"
                  "`dvc metrics show` lists only the numeric reports/metrics.json"), **nocache))),
        *_query_stages(),
        Stage("encode_gallery", "stages/encode_gallery.py", code=("src/qshift/gallery.py",),
              resources={"mem_mb": 4000, "runtime": 60, **GPU},
              inputs=(qc.DATASET_DIR, qc.MODEL_DIR), params=("model",), outs=(Out(qc.GALLERY),)),
        Stage("tune", "stages/tune.py", "--method ${item.method}",
              ("src/qshift/tune.py", "src/qshift/tta", "src/qshift/adapt.py"), (qc.DATASET_DIR, qc.MODEL_DIR),
              ("seed", "amp", "adapt", "tune", "method"), matrix={"method": "${adapt.methods}"},
              resources={"mem_mb": 4000, "runtime": 60, **GPU},
              outs=(Out(qc.TUNED.replace("{method}", "${item.method}"), **nocache),),
              comment="hyperparameter selection on the validation split (src/qshift/tune.py), one stage per method;\n"
                      "its adapt stages read tuned/<method>.json"),
        _adapt_stage("i2t"),
        _adapt_stage("t2i"),
        _adapt_cir_stage(),
        _cir_stream_stage(),
        *_va_stages(),
        Stage("observe", "stages/observe.py", code=("src/qshift/observations.py",),
              resources={"mem_mb": 2000, "runtime": 15},
              inputs=("results/{dataset}/{model}",), params=("adapt", "streams", "observe"),
              outs=(Out("reports/observations.json", **nocache),),
              comment="the papers' observations from the results files (cheap), feeding the report"),
        Stage("report", "stages/report.py",
              code=(REPORT_CODE, "src/qshift/observations.py", "src/qshift/report_export.py", "src/qshift/paper.py",
                    "src/qshift/tracking.py"),
              inputs=("reports/observations.json", "results/{dataset}/{model}", "reports/pretrain.json"),
              params=("seeds", "adapt", "corrupt", "streams", "report"),
              outs=tuple(Out(p, **nocache) for p in REPORT_OUTS),
              metrics=(Out("reports/metrics.json", comment=(
                  "numbers only (dvc metrics show / dvc exp show); reports/summary.json keeps the full summary"),
                  **nocache),)),
    ]


REPORT_CODE = "src/qshift/report"  # the report package
STAGES: dict[str, Stage] = {s.name: s for s in _stages()}


# -- Snakemake: a job's rerun trigger ------------------------------------------------------------
def param_values(cfg: dict, stage: str, **wildcards: Any) -> dict[str, Any]:
    """What a job of ``stage`` reads from the resolved params (its :attr:`Stage.params`)."""
    s = STAGES[stage]
    wc = {**s.context, **wildcards}
    out = {}
    for key in s.params:
        out[key] = DERIVED[key].value(cfg, wc) if key in DERIVED else get_dotted(cfg, _fill(key, wc))
    return out


def param_hash(cfg: dict, stage: str, **wildcards: Any) -> str:
    """A Snakemake rule's ``params: cfg=``: the hash of :func:`param_values` (same keys as dvc.yaml's)."""
    return stable_hash(param_values(cfg, stage, **wildcards))


# -- DVC: dvc.yaml, generated --------------------------------------------------------------------
HEADER = """\
# QShift pipeline (DVC). GENERATED from the stage table in src/qshift/pipeline.py — do not edit;
# regenerate with `python -m qshift.pipeline dvc` (tests/test_layout.py fails when this file is
# stale). The same DAG as workflow/Snakefile: same stage CLIs, same outputs, same parameter keys
# (tests/test_pipeline.py::test_snakemake_and_dvc_describe_the_same_dag). Every value comes from params.yaml.
#   dvc repro                                  # run what is out of date
#   dvc exp run -S '++methods.tcr.lr=1e-3'     # an experiment with one value changed
#   dvc exp show ; dvc metrics show ; dvc plots show   # reports/metrics.json, reports/plots/
# The image-text task's stages only: the composed image retrieval task (benchmark builtin-cir,
# stage adapt_cir) and the video-audio task (benchmark builtin-va: corrupt_video, corrupt_audio,
# adapt_v2a, adapt_a2v) run under Snakemake, since a DVC stage list cannot depend on the benchmark.
"""

PLOTS = """\
# `dvc plots show` / `dvc plots diff`: written by the report stage (src/qshift/report_export.py)
plots:
  - reports/plots/r1:
      template: bar_horizontal
      x: avg_r1
      y: method
      title: R@1 (%) averaged over the corruption cells, per method
  - reports/plots/online:
      x: queries
      y: ${adapt.methods}
      title: Cumulative R@1 (%) along the query stream (mean over the corruption cells)
"""


def _comment(text: str, indent: str) -> list[str]:
    return [f"{indent}# {line}" for line in text.splitlines()] if text else []


def _dvc_params(s: Stage) -> list[str]:
    keys: list[str] = []
    for key in (*s.params, *s.grid):
        for k in (DERIVED[key].dvc if key in DERIVED else (key,)):
            k = _fill(k, s.context)
            if k not in keys:
                keys.append(k)
    return keys


def _dvc_outs(outs: tuple[Out, ...]) -> list[str]:
    lines = []
    for o in outs:
        lines += _comment(o.comment, "      ")
        path = _dvc_path(o.path)
        if o.cache and not o.persist:
            lines.append(f"      - {path}")
            continue
        lines.append(f"      - {path}:")
        lines += ["          cache: false"] if not o.cache else []
        lines += ["          persist: true"] if o.persist else []
    return lines


def _dvc_stage(s: Stage) -> list[str]:
    lines = _comment(s.comment, "  ") + [f"  {s.name}:"]
    if s.matrix:
        lines += ["    matrix:"] + [f"      {k}: {v}" for k, v in s.matrix.items()]
    lines.append(f"    cmd: python {s.script}" + (f" {s.args}" if s.args else ""))
    lines += ["    deps:"] + [f"      - {d}" for d in (s.script, *s.code, *(_dvc_path(p) for p in s.inputs))]
    params = _dvc_params(s)
    if params:
        lines += ["    params:"] + [f"      - {k}" for k in params]
    lines += ["    outs:"] + _dvc_outs(s.outs)
    if s.metrics:
        lines += ["    metrics:"] + _dvc_outs(s.metrics)
    return lines


def render_dvc() -> str:
    """dvc.yaml's text, from :data:`STAGES`."""
    lines = HEADER.splitlines() + ["stages:"]
    for i, s in enumerate(st for st in STAGES.values() if st.dvc):
        lines += ([""] if i else []) + _dvc_stage(s)
    return "\n".join(lines) + "\n\n" + PLOTS


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m qshift.pipeline", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    dvc = sub.add_parser("dvc", help="write dvc.yaml from the stage table")
    dvc.add_argument("--check", action="store_true", help="only check: exit 1 if dvc.yaml is stale")
    dvc.add_argument("--file", default=DVC_FILE)
    args = ap.parse_args(argv)
    text = render_dvc()
    path = Path(args.file)
    if args.check:
        if not path.exists() or path.read_text() != text:
            print(f"{path} is stale: regenerate it with `python -m qshift.pipeline dvc`", file=sys.stderr)
            return 1
        print(f"{path} is up to date with the stage table")
        return 0
    write_text(path, text)
    print(f"wrote {path} ({sum(st.dvc for st in STAGES.values())} stages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
