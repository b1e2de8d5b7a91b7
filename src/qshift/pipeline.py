"""The stage table: the one definition of what each pipeline stage runs, reads and writes.

Both orchestrators come from it:

* **DVC** — ``dvc.yaml`` is generated from :data:`STAGES` for params.yaml's benchmark
  (``python -m qshift.pipeline dvc`` writes it; ``--check`` exits 1 when the file is stale, as
  tests/test_layout.py checks for the committed one). The selected task's stages only (each
  stage's ``when``), and every value DVC cannot read from the file's own keys — what the preset
  sets — written out, its preset key tracked as a parameter. Never edit dvc.yaml by hand; a DVC
  stage refuses to run while it was rendered for other params (qshift.presets.dvc_guard).
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
from .cells import CODE as _ADAPT_CODE
from .errors import ConfigError, QShiftError
from .io import stable_hash, write_text
from .presets import MISSING, dataset_name, get_dotted, lookup
from .tasks import cfg_task, code_files

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

    dvc: tuple[str, ...] | Callable[[dict], tuple[str, ...]]  # (or of the resolved params)
    value: Callable[[dict, dict], Any]


def _method_hparams(cfg: dict, method: str) -> dict:
    """What a method's jobs run with, per direction: class defaults + params overrides (a
    variant's with its base chain), so a no-op override (a default set explicitly) reruns nothing
    and a changed base reruns its variants. Directions: image-text's, plus the grid's own where its
    task is another (``by_direction`` of v2a / a2v / cir then reruns their jobs; image-text keys,
    and so image-text triggers, unchanged)."""
    own = tuple(d.name for d in cfg_task(cfg).directions if d.name not in qc.DIRECTIONS)
    return {str(d): qc.method_hparams(cfg, method, d) for d in (None, *qc.DIRECTIONS, *own)}


def _prebuilt(cfg: dict, wc: dict):
    from .data.prebuilt import prebuilt_dir

    root = prebuilt_dir(cfg)
    return None if root is None else str(root)


DERIVED: dict[str, Derived] = {
    # the datasets entry the benchmark runs on (DVC cannot index datasets by the benchmark: the
    # rendered dvc.yaml names the entry)
    "dataset": Derived(lambda cfg: ("benchmark", f"benchmarks.{cfg['benchmark']}.dataset",
                                    f"datasets.{dataset_name(cfg)}"),
                       lambda cfg, wc: qc.dataset_params(cfg)),
    # the authors' prebuilt query sets, if the dataset names a folder (datasets.<name>.prebuilt)
    "prebuilt": Derived((), _prebuilt),
    "method": Derived(("methods.${item.method}",), lambda cfg, wc: _method_hparams(cfg, wc["method"])),
    # whether this method's jobs measure the gradient-angle probe (observe.grad_angle)
    "grad_angle": Derived(("observe.grad_angle",), lambda cfg, wc: qc.probes_angle(cfg, wc["method"])),
    "stream": Derived(("streams.{side}.${item.stream}",),
                      lambda cfg, wc: ((cfg.get("streams") or {}).get(wc["side"]) or {}).get(wc["stream"])),
    # the video-audio task's user-supplied environmental recordings (a preset key: qshift.va)
    "audio_noise": Derived(("corrupt.audio.noise_dir", "corrupt.audio.bed_rms"),
                           lambda cfg, wc: [get_dotted(cfg, "corrupt.audio.noise_dir"),
                                            get_dotted(cfg, "corrupt.audio.bed_rms")]),
}


# the code of the adapt loop, as repository paths: what every cell's fingerprint hashes
# (qshift.cells.CODE), the adapt and tune stages' DVC deps
ADAPT_CODE = tuple(f"src/qshift/{f}" for f in _ADAPT_CODE)


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
    # whether the pipeline of the resolved params has the stage (None: every pipeline), e.g. a
    # direction's adapt stage only where adapt.directions lists it: dvc.yaml is rendered for the
    # selected benchmark (render_dvc), as Snakemake defines a task's rules only for its grid
    when: Callable[[dict], bool] | None = None
    # matrix entries whose values the resolved params decide beyond one key (written out in dvc.yaml)
    matrix_values: Callable[[dict], dict[str, list]] | None = None
    command_args: Callable[[dict], str] | None = None  # args the resolved params decide (written out)
    key: str = ""  # its STAGES key where two stages share a name (default: the name)
    # DVC deps also list the selected task's code (qshift.tasks.code_files): a stage shared by the
    # tasks whose jobs run their hooks (tune: a task's validation queries and gallery)
    task_code: bool = False


def _runnable_text(cfg: dict) -> dict[str, list]:
    """The text types that can run, where some cannot (Snakemake leaves those out; the report lists them)."""
    from .corrupt.text import available_text_corruptions, not_run_types

    return {"corruption": available_text_corruptions(cfg)} if not_run_types(cfg) else {}


def _used_streams(cfg: dict) -> dict[str, list]:
    """No stream stages where no method runs the streams (streams.methods empty)."""
    return {} if get_dotted(cfg, "streams.methods") else {"stream": []}


def _runs(*directions: str) -> Callable[[dict], bool]:
    """A stage of the pipelines whose grid has one of ``directions``."""
    return lambda cfg: any(d in (get_dotted(cfg, "adapt.directions") or []) for d in directions)


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
              resources={"mem_mb": 2000, "runtime": 60}, when=_runs("i2t", "t2i", "cir"),
              outs=(Out(_dvc_path(qc.IMAGE_QUERIES, corruption="${item.corruption}", severity="${item.severity}")),)),
        Stage("corrupt_text", "stages/corrupt_text.py", "--corruption ${item.corruption} --level ${item.level}",
              corrupt_code, dataset,
              ("seed", "corrupt.text.models", "corrupt.text.prefixes", "corrupt.text.generation", "corrupt.text.filter",
               "prebuilt"),
              matrix={"corruption": "${corrupt.text.names}", "level": "${corrupt.text.levels}"},
              when=_runs("i2t", "t2i", "cir"), matrix_values=_runnable_text,
              outs=(Out(_dvc_path(qc.TEXT_QUERIES, corruption="${item.corruption}", severity="${item.level}")),)),
    ]
    for side, direction, pattern, extra in (("image", "i2t", qc.STREAM_IMAGE_QUERIES, ("corrupt.image.jpeg_quality",)),
                                            ("text", "t2i", qc.STREAM_TEXT_QUERIES, ())):
        stages.append(Stage(
            f"corrupt_stream_{side}", "stages/corrupt_stream.py", f"--direction {direction} --stream ${{item.stream}}",
            corrupt_code + ("src/qshift/streams.py",), dataset, ("seed", *extra, "stream"),
            matrix={"stream": f"${{streams.{side}}}"}, context={"side": side},
            resources={"mem_mb": 2000, "runtime": 60 if side == "image" else 30}, when=_runs(direction),
            matrix_values=_used_streams, outs=(Out(_dvc_path(pattern, stream="${item.stream}")),),
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
        ("src/qshift/cells.py", *ADAPT_CODE),
        (qc.DATASET_DIR, "data/queries/{dataset}", qc.GALLERY, qc.MODEL_DIR, qc.TUNED.replace("{method}", "${item.method}")),
        ("seed", "amp", "adapt.batch_size", "adapt.steps", "adapt.order", "method", "grad_angle"),
        grid=("adapt.clean_methods", f"corrupt.{side}.names", f"corrupt.{side}.{levels}", "streams.methods",
              f"streams.{side}"),
        matrix={"method": "${adapt.methods}", "seed": "${seeds}"},
        resources={"mem_mb": 4000, "runtime": 240, **GPU},  # runtime: every cell of the job
        when=_runs(direction),
        outs=(Out(_dvc_path(folder, direction=direction, method="${item.method}", seed="${item.seed}"),
                  cache=False, persist=True),),
        comment=comment)


def _adapt_cir_stage() -> Stage:
    """Composed image retrieval (qshift.cir): one job per (method, seed) over the image cells
    (corrupted references) and the text cells (corrupted modification texts)."""
    base = _adapt_stage("i2t")
    folder = qc.RESULT.rsplit("/", 1)[0]
    return Stage(
        "adapt_cir", base.script, "--method ${item.method} --direction cir --seed ${item.seed}",
        base.code + code_files("cir"), base.inputs,
        base.params, grid=("adapt.clean_methods", "corrupt.image.names", "corrupt.image.severities",
                           "corrupt.text.names", "corrupt.text.levels", "streams.methods", "streams.cir"),
        matrix=base.matrix, resources=base.resources, when=_runs("cir"),
        outs=(Out(_dvc_path(folder, direction="cir", method="${item.method}", seed="${item.seed}"),
                  cache=False, persist=True),))


def _cir_stream_stage() -> Stage:
    """A composed query stream (params ``streams.cir``; qshift.cir_streams): the image cells' and the
    text cells' corruption settings, as corrupt_images / corrupt_text read them."""
    return Stage("corrupt_stream_cir", "stages/corrupt_stream.py", "--direction cir --stream ${item.stream}",
                 ("src/qshift/corrupt", "src/qshift/streams.py", "src/qshift/cir_streams.py"), (qc.DATASET_DIR,),
                 ("seed", "corrupt.image.jpeg_quality", "corrupt.image.implementation", "corrupt.image.mm_robustness",
                  "corrupt.text.models", "corrupt.text.prefixes", "corrupt.text.generation", "corrupt.text.filter",
                  "stream"), matrix={"stream": "${streams.cir}"}, context={"side": "cir"},
                 resources={"mem_mb": 2000, "runtime": 60}, when=_runs("cir"), matrix_values=_used_streams,
                 outs=(Out(_dvc_path(qc.STREAM_CIR_QUERIES, stream="${item.stream}")),))


def _va_stages() -> list[Stage]:
    """Video-audio retrieval (qshift.va; benchmark builtin-va): the corrupted video / audio query sets
    (one stage per corruption x severity) and streams (stages/corrupt_va.py, clip sets), and one
    adapt job per (direction, method, seed). Snakemake: workflow/rules/va.smk."""
    code = ("src/qshift/va.py", "src/qshift/va_plan.py", "src/qshift/corrupt", "src/qshift/streams.py")
    video = ("seed", "corrupt.image.implementation", "corrupt.image.mm_robustness")
    out = []
    for side, direction, params, pattern in (("video", "v2a", video, qc.VIDEO_QUERIES),
                                             ("audio", "a2v", ("seed", "audio_noise"), qc.AUDIO_QUERIES)):
        out.append(Stage(
            f"corrupt_{side}", "stages/corrupt_va.py",
            f"--side {side} --corruption ${{item.corruption}} --severity ${{item.severity}}", code, (qc.DATASET_DIR,),
            params, grid=(f"corrupt.{side}.names", f"corrupt.{side}.severities"),
            matrix={"corruption": f"${{corrupt.{side}.names}}", "severity": f"${{corrupt.{side}.severities}}"},
            resources={"mem_mb": 2000, "runtime": 60 if side == "video" else 30}, when=_runs(direction),
            outs=(Out(_dvc_path(pattern, corruption="${item.corruption}", severity="${item.severity}")),)))
    for side, direction in (("video", "v2a"), ("audio", "a2v")):
        out.append(Stage(f"corrupt_stream_{side}", "stages/corrupt_va.py", f"--side {side} --stream ${{item.stream}}",
                         code, (qc.DATASET_DIR,), (*video, "audio_noise", "stream"), context={"side": side},
                         matrix={"stream": f"${{streams.{side}}}"}, resources={"mem_mb": 2000, "runtime": 60},
                         when=_runs(direction), matrix_values=_used_streams,
                         outs=(Out(_dvc_path(qc.VA_STREAM_QUERIES, side=side, stream="${item.stream}")),)))
    base = _adapt_stage("i2t")
    folder = qc.RESULT.rsplit("/", 1)[0]
    for direction, side in (("v2a", "video"), ("a2v", "audio")):
        out.append(Stage(
            f"adapt_{direction}", base.script, f"--method ${{item.method}} --direction {direction} --seed ${{item.seed}}",
            base.code + code_files("video-audio"), base.inputs, base.params,
            grid=("adapt.clean_methods", f"corrupt.{side}.names", f"corrupt.{side}.severities", "streams.methods",
                  f"streams.{side}"),
            matrix=base.matrix, resources=base.resources, when=_runs(direction),
            outs=(Out(_dvc_path(folder, direction=direction, method="${item.method}", seed="${item.seed}"),
                      cache=False, persist=True),)))
    return out


GPU = {"gpu": 1, "gpu_model": ""}
# fetching a pretrained source (no training): the pretrain job's resources then
FETCH_RESOURCES = {"mem_mb": 8000, "runtime": 120}


def resources(stage: str) -> dict[str, Any]:
    """A stage's job resources (the rules' ``resources: **qpipe.resources(...)``)."""
    return dict(STAGES[stage].resources)


# a step's cost relative to the others', for tune_priority: two gradients per step (SAR: its
# perturbed point's; REST: the adaptation and source losses' apart, for the decoupling). Measured on
# the default grids: ~4 s per grid point for both, 2.0-2.5 s for the other methods
_TUNE_PASSES = {"sar": 2, "rest": 2}


def tune_priority(cfg: dict, method: str) -> int:
    """Snakemake's ``priority`` of a tune job: its estimated cost, the grid points it runs over the
    tuned directions (times two for SAR and REST, two gradients a step). Longest first: the tune jobs
    all finish before any adapt job starts, and on a 2-core laptop a long job started last leaves one
    core idle (the default run: SAR's 40 s grid began fourth, TCR's 14 s ran alone at the end; with
    the grid points alone, REST's 24 s). A job that tunes nothing: 0."""
    from .tune import grid, tunes

    if not tunes(cfg, method):
        return 0
    points = sum(len(grid(cfg, method, d)) for d in cfg["adapt"]["directions"])
    return points * _TUNE_PASSES.get(qc.base_method(cfg, method), 1)


def adapt_resources(direction: str, n_methods: int) -> dict[str, Any]:
    """An adapt job's resources: the stage's, its runtime (one method's cells) times the methods
    the job runs (params adapt_jobs: direction runs them all in one job)."""
    out = resources(f"adapt_{direction}")
    if "runtime" in out:
        out["runtime"] = out["runtime"] * max(1, n_methods)
    return out


def _drawn_seeds(cfg: dict) -> list[int]:
    """The run seeds that draw their own query sets (params seed_corruptions: every seed but ``seed``)."""
    return [s for s in qc.run_seeds(cfg) if qc.draw_seed(cfg, s) is not None]


def _drawn(base: Stage, pattern: str, **fill: str) -> Stage:
    """``base``'s query sets drawn for another run seed (``--draw-seed``, under ``<kind>-seed<N>/``):
    one stage per (drawn seed, cell), as Snakemake's ``<rule>_drawn`` jobs (qshift.config.DRAWN)."""
    def values(cfg: dict) -> dict[str, list]:
        return {**(base.matrix_values(cfg) if base.matrix_values else {}), "draw": _drawn_seeds(cfg)}

    return Stage(
        f"{base.name}_drawn", base.script, f"{base.args} --draw-seed ${{item.draw}}", base.code, base.inputs,
        base.params, base.grid, (Out(_dvc_path(pattern, draw="${item.draw}", **fill)),),
        matrix={"draw": "${seeds}", **base.matrix}, context=base.context, resources=base.resources,
        when=lambda cfg: (base.when is None or base.when(cfg)) and bool(_drawn_seeds(cfg)), matrix_values=values)


def _drawn_stages(stages: list[Stage]) -> list[Stage]:
    by = {s.name: s for s in stages}
    cell = {"corruption": "${item.corruption}", "severity": "${item.severity}"}
    stream = {"stream": "${item.stream}"}
    return [_drawn(by["corrupt_images"], qc.DRAWN["image"], **cell),
            _drawn(by["corrupt_text"], qc.DRAWN["text"], corruption="${item.corruption}", severity="${item.level}"),
            _drawn(by["corrupt_stream_image"], qc.DRAWN["image-stream"], **stream),
            _drawn(by["corrupt_stream_text"], qc.DRAWN["text-stream"], **stream),
            _drawn(by["corrupt_stream_cir"], qc.DRAWN["cir-stream"], **stream),
            _drawn(by["corrupt_video"], qc.DRAWN["video"], **cell),
            _drawn(by["corrupt_audio"], qc.DRAWN["audio"], **cell),
            _drawn(by["corrupt_stream_video"], qc.DRAWN["va-stream"], side="video", **stream),
            _drawn(by["corrupt_stream_audio"], qc.DRAWN["va-stream"], side="audio", **stream)]


REPORT_OUTS = ("reports/report.md", "reports/report.html", "reports/figures", "reports/summary.json",
               "reports/plots", "reports/tables")


def _stages() -> list[Stage]:
    stages = _main_stages()
    at = next(i for i, s in enumerate(stages) if s.name == "observe")
    return stages[:at] + _drawn_stages(stages) + stages[at:]


def _main_stages() -> list[Stage]:
    nocache = dict(cache=False)
    return [
        Stage("download", "stages/download.py", code=("src/qshift/data/download.py", "src/qshift/data/karpathy.py",
                                                      "src/qshift/data/formats.py", "src/qshift/data/cir_real.py"),
              resources={"mem_mb": 2000, "runtime": 240},
              params=("dataset",), outs=(Out(qc.RAW_DIR),)),
        Stage("prepare", "stages/prepare.py", code=("src/qshift/data",), inputs=(qc.RAW_DIR,),
              resources={"mem_mb": 2000, "runtime": 60, "cpus_per_task": 2},
              params=("seed", "dataset"), outs=(Out(qc.DATASET_DIR),)),
        Stage("examples", "stages/examples.py", "--no-progress", ("src/qshift/corrupt",), (qc.DATASET_DIR,),
              ("seed", "corrupt.text", "corrupt.image.implementation", "corrupt.image.mm_robustness", "report.dir"),
              outs=tuple(Out(f"{qc.EXAMPLES_DIR}/{f}", **nocache)
                         for f in ("contact_sheet.png", "text_examples.md", "examples.json"))),
        Stage("pretrain", "stages/pretrain.py", code=("src/qshift/models",), inputs=(qc.DATASET_DIR,),
              resources={"mem_mb": 4000, "runtime": 60, "cpus_per_task": 2}, when=qc.trains_model,
              params=("seed", "amp", "pretrain", "model.source"),
              outs=(Out(qc.MODEL_DIR), Out("reports/pretrain.json", comment=(
                  "the training figures (strings and numbers): an output, not a DVC metric, so\n"
                  "`dvc metrics show` lists only the numeric reports/metrics.json"), **nocache))),
        # a pretrained source is fetched, not trained: the job reads the model keys only (not the
        # benchmark), so benchmarks sharing a model share it (workflow/rules/model.smk)
        Stage("pretrain", "stages/pretrain.py", key="fetch_model", code=("src/qshift/models",),
              params=("model.name", "model.source", "model.cache_dir"), resources=FETCH_RESOURCES,
              command_args=lambda cfg: qc.model_overrides(cfg).strip(), when=lambda cfg: not qc.trains_model(cfg),
              outs=(Out(qc.MODEL_DIR),)),
        *_query_stages(),
        Stage("encode_gallery", "stages/encode_gallery.py", code=("src/qshift/gallery.py",),
              resources={"mem_mb": 4000, "runtime": 60, **GPU},
              inputs=(qc.DATASET_DIR, qc.MODEL_DIR), params=("model",), outs=(Out(qc.GALLERY),)),
        Stage("tune", "stages/tune.py", "--method ${item.method}",
              # the adapt loop on the validation split's gallery and queries, corrupted in the job
              ("src/qshift/tune.py", "src/qshift/corrupt", *ADAPT_CODE),
              (qc.DATASET_DIR, qc.MODEL_DIR),
              ("seed", "amp", "adapt", "tune", "method"), matrix={"method": "${adapt.methods}"}, task_code=True,
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
STAGES: dict[str, Stage] = {s.key or s.name: s for s in _stages()}


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
# QShift pipeline (DVC). GENERATED from the stage table in src/qshift/pipeline.py and params.yaml's
# benchmark ({benchmark}) — do not edit; regenerate with `python -m qshift.pipeline dvc` after switching
# the benchmark (a stage refuses to run while this file is stale; tests/test_layout.py checks the
# committed one). The same DAG as workflow/Snakefile: same stage CLIs, same outputs, same parameter
# keys (tests/test_pipeline.py::test_snakemake_and_dvc_describe_the_same_dag). Values come from
# params.yaml: `${{key}}` where the file's own key holds the value, a literal where the preset sets it.
#   dvc repro                                  # run what is out of date
#   dvc exp run -S '++methods.tcr.lr=1e-3'     # an experiment with one value changed
#   dvc exp show ; dvc metrics show ; dvc plots show   # reports/metrics.json, reports/plots/
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

_INTERP = re.compile(r"\$\{([A-Za-z_][\w.-]*)\}")


def _literal(value: Any) -> str:
    """A value written into dvc.yaml: a list in flow style (a mapping as its keys), a scalar as is."""
    if isinstance(value, dict):
        value = list(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


@dataclass(frozen=True)
class _Render:
    """What dvc.yaml is rendered for: params.yaml as DVC reads it and the preset's overlay."""

    raw: dict
    resolved: dict
    preset: str | None
    overlay: dict

    @classmethod
    def of(cls, raw: dict) -> "_Render":
        from .presets import apply_preset, overlay_of, preset

        if "benchmarks" not in raw:
            return cls(raw, raw, None, {})
        return cls(raw, apply_preset(raw), raw.get("benchmark"), overlay_of(preset(raw)))

    def value(self, match: re.Match, matrix: bool = False) -> str:
        """A ``${key}`` DVC reads from params.yaml as is, or the resolved value where the preset
        sets it (DVC cannot select ``benchmarks.<benchmark>``); a mapping as a matrix: its keys,
        an absent one an empty matrix (no stages: e.g. a side without streams)."""
        key = match[1]
        raw, value = lookup(self.raw, key), lookup(self.resolved, key)
        if key.startswith("item.") or (raw is not MISSING and raw == value):
            return match[0]
        if value is MISSING and not matrix:
            raise ConfigError(f"params: {key} is not set (dvc.yaml's stages read it); benchmark "
                              f"{self.preset!r} runs a stage that needs it")
        return _literal([] if value is MISSING or value is None else value)

    def params(self, s: Stage) -> list[str]:
        """The stage's DVC params: the file's own keys, and ``benchmarks.<preset>.<key>`` where the
        preset sets (part of) one, so an edited preset reruns what reads it."""
        keys: list[str] = []
        for key in (*s.params, *s.grid):
            dvc = DERIVED[key].dvc if key in DERIVED else (key,)
            for k in (dvc(self.resolved) if callable(dvc) else dvc):
                k = _fill(k, s.context)
                static = k.split(".${", 1)[0]
                found = [k] if lookup(self.raw, static) is not MISSING else []
                hit = self._preset_sets(static)
                if hit is not None:  # a value the preset replaces outright is tracked there only
                    replaced = hit != static or not isinstance(lookup(self.overlay, static), dict)
                    found = [] if replaced and k == static else found
                    found.append(f"benchmarks.{self.preset}.{hit}")
                keys += [f for f in found if f not in keys]
        return keys

    def _preset_sets(self, key: str) -> str | None:
        """The overlay path that sets ``key``: the key itself (or what lies under it), or the
        nearest path above it holding a value that is not a mapping; None where the preset leaves it."""
        if lookup(self.overlay, key) is not MISSING:
            return key
        parts = key.split(".")
        for i in range(len(parts) - 1, 0, -1):
            value = lookup(self.overlay, ".".join(parts[:i]))
            if value is not MISSING and not isinstance(value, dict):
                return ".".join(parts[:i])
        return None


def _comment(text: str, indent: str) -> list[str]:
    return [f"{indent}# {line}" for line in text.splitlines()] if text else []


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


def _dvc_stage(s: Stage, r: _Render) -> list[str]:
    lines = _comment(s.comment, "  ") + [f"  {s.name}:"]
    if s.matrix:
        fixed = s.matrix_values(r.resolved) if s.matrix_values else {}
        lines += ["    matrix:"] + [f"      {k}: " + (_literal(fixed[k]) if k in fixed else
                                                    _INTERP.sub(lambda m: r.value(m, matrix=True), v))
                                    for k, v in s.matrix.items()]
    args = s.command_args(r.resolved) if s.command_args else s.args
    lines.append(f"    cmd: python {s.script}" + (f" {args}" if args else ""))
    code = (*s.code, *(code_files(cfg_task(r.resolved).name) if s.task_code else ()))
    lines += ["    deps:"] + [f"      - {d}" for d in (s.script, *code, *(_dvc_path(p) for p in s.inputs))]
    params = r.params(s)
    if params:
        lines += ["    params:"] + [f"      - {k}" for k in params]
    lines += ["    outs:"] + _dvc_outs(s.outs)
    if s.metrics:
        lines += ["    metrics:"] + _dvc_outs(s.metrics)
    return [_INTERP.sub(r.value, line) for line in lines]


def _selected(resolved: dict) -> list[Stage]:
    return [s for s in STAGES.values() if s.when is None or s.when(resolved)]


def dvc_stages(raw: dict) -> list[Stage]:
    """The stages of the pipeline params.yaml (``raw``, as DVC reads it) selects."""
    return _selected(_Render.of(raw).resolved)


def render_dvc(raw: dict | None = None) -> str:
    """dvc.yaml's text, from :data:`STAGES`, for ``raw`` (default: ./params.yaml): the stages of
    the benchmark it selects, each value DVC cannot take from the file itself written out."""
    if raw is None:
        raw = qc.read_raw_params()
    r = _Render.of(raw)
    lines = HEADER.format(benchmark=raw.get("benchmark", "builtin")).splitlines() + ["stages:"]
    for i, s in enumerate(_selected(r.resolved)):
        lines += ([""] if i else []) + _dvc_stage(s, r)
    plots = _INTERP.sub(r.value, PLOTS)
    return "\n".join(lines) + "\n\n" + plots


def stale_dvc(raw: dict, path: str | Path = DVC_FILE) -> str | None:
    """Why ``path`` is not dvc.yaml as rendered for ``raw`` (``None``: it is): the stages that
    differ, or the first differing line."""
    want = render_dvc(raw)
    try:
        have = Path(path).read_text()
    except OSError:
        return "the file is missing"
    if have == want:
        return None
    names = lambda text: set(re.findall(r"^  (\w+):$", text, re.M))  # noqa: E731
    only_file, only_params = sorted(names(have) - names(want)), sorted(names(want) - names(have))
    if only_file or only_params:
        return (f"it was rendered for other params (stages only in the file: {', '.join(only_file) or '-'}; "
                f"only for params.yaml's benchmark {raw.get('benchmark')!r}: {', '.join(only_params) or '-'})")
    line = next(i for i, (a, b) in enumerate(zip(have.splitlines() + [""], want.splitlines() + [""])) if a != b)
    return f"line {line + 1} differs from the stage table rendered for params.yaml"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m qshift.pipeline", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    dvc = sub.add_parser("dvc", help="write dvc.yaml from the stage table, for params.yaml's benchmark")
    dvc.add_argument("--check", action="store_true", help="only check: exit 1 if dvc.yaml is stale")
    dvc.add_argument("--file", default=DVC_FILE)
    dvc.add_argument("--params", default="params.yaml", help="the params file (default: %(default)s)")
    args = ap.parse_args(argv)
    try:
        raw = qc.read_raw_params(args.params)
        if args.check:
            why = stale_dvc(raw, args.file)
            if why:
                print(f"{args.file} is stale ({why}): regenerate it with `python -m qshift.pipeline dvc`",
                      file=sys.stderr)
                return 1
            print(f"{args.file} is up to date with the stage table and {args.params}")
            return 0
        text = render_dvc(raw)
    except QShiftError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_text(Path(args.file), text)
    print(f"wrote {args.file} ({len(dvc_stages(raw))} stages, benchmark {raw.get('benchmark')!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
