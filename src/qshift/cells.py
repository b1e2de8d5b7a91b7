"""The adapt stage's work: one cell, or every cell of one (method, direction, seed) job.

A *cell* is one run of the grid (:class:`qshift.config.Run`: method, direction, corruption,
severity, seed) and has its own results file, per-query outcomes and MLflow run. The
orchestrators schedule one *job* per (method, direction, seed): it loads the model and the
gallery once and runs the job's cells one after another in one process, so process start,
imports and loading are paid once per job instead of once per cell (issue: job overhead).

Each cell is independent of the others in its job: :func:`qshift.adapt.run_stream` re-seeds
at its start and restores the model to the source weights at its end (``tta.close()``), so a
cell's numbers are the same whether it runs alone or after other cells (tested).

Rerun semantics stay per cell. Every results file records its *fingerprint*: a hash of what
the cell's result depends on — the method and its hyperparameters (tuned values included),
the adapt settings and seeds, the model's source, the stamps (size and modification time) of
its query set, the gallery and the model folder, the tuned file's content, and the code of
the adapt stage (:data:`CODE`, and the task's own files: what dvc.yaml lists as the stage's code). A job runs only the cells whose
results file is missing, unreadable or has another fingerprint, and writes each finished cell
atomically before starting the next, so a killed job keeps the cells it finished. Deleting one
results file reruns exactly that cell (inside its job: the job's process start and model load
are the cost of the coarser granularity).
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

from .config import (GALLERY, MANIFEST, MODEL_DIR, TUNED, Run, check_method, experiment_name, is_stream, is_variant,
                     probes_angle, queries_path, query_set_path, runs, stream_path)
from .errors import ConfigError, InputError
from .results import CLEAN, SCHEMA, run_key

log = logging.getLogger("qshift.stage")

# what the adapt stage's code is: a change reruns every cell. qshift.pipeline lists these files (with
# cells.py and the task's code_files) as the DVC deps of the adapt and tune stages, so a change DVC
# sees is one the fingerprint sees, and the other way round (tests/test_layout.py)
CODE = ("adapt.py", "gallery.py", "streams.py", "outcomes.py", "evaluation.py", "tta")  # gallery: the query loaders


def job_cells(cfg: dict, method: str, direction: str, seed: int) -> list[Run]:
    """The cells of job (method, direction, seed), in the grid's order (clean, corruptions, streams)."""
    return [r for r in runs(cfg, [seed]) if r.method == method and r.direction == direction]


def query_input(cfg: dict, run: Run) -> str:
    """The folder or file a cell's queries come from: a query set or stream (what the orchestrators
    list as its input), or for the clean run the dataset's manifest (the prepare stage publishes
    the dataset folder as a whole, so a rebuilt dataset has a new manifest)."""
    if run.corruption == CLEAN:
        return MANIFEST.format(dataset=run.dataset)
    if is_stream(cfg, run.direction, run.corruption):
        return stream_path(cfg, run.direction, run.corruption, run.seed)
    return query_set_path(cfg, run.direction, run.corruption, run.severity, run.seed)


def stamp(path: str | Path) -> list:
    """(relative path, size, mtime_ns) of a file, or of every file below a folder; [] if missing.
    The same notion of "changed" Snakemake uses (modification times), at the cost of a stat per file."""
    p = Path(path)
    if p.is_file():
        st = p.stat()
        return [[".", st.st_size, st.st_mtime_ns]]
    if not p.is_dir():
        return []
    out = []
    for f in sorted(p.rglob("*")):
        if f.is_file():
            st = f.stat()
            out.append([str(f.relative_to(p)), st.st_size, st.st_mtime_ns])
    return out


def code_hash(stage_file: str | Path | None = None) -> str:
    """Content hash of the adapt stage's code (:data:`CODE` in this package, and the stage CLI)."""
    root = Path(__file__).resolve().parent
    files: list[Path] = []
    for name in CODE:
        p = root / name
        files += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    if stage_file is not None:
        files.append(Path(stage_file))
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(root) if f.is_relative_to(root) else f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def file_hash(path: str | Path) -> str | None:
    p = Path(path)
    return hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.is_file() else None


def fingerprint(cfg: dict, run: Run, base: str, hparams: dict, run_cfg: dict, code: str, shared: dict) -> str:
    """What a cell's result depends on, hashed (see the module docstring). ``shared`` holds the
    job-wide parts computed once (gallery and model stamps, tuned file hash)."""
    from .io import stable_hash

    return stable_hash({"base": base, "hparams": hparams, "run": run_cfg, "project_seed": cfg["seed"],
                        "preprocess": cfg["model"].get("preprocess", "native"), "code": code,
                        "queries": stamp(query_input(cfg, run)), **shared}, n=16)


def job_shared(cfg: dict, run: Run) -> dict:
    model_dir = MODEL_DIR.format(model=run.model)
    return {"gallery": stamp(GALLERY.format(model=run.model, dataset=run.dataset)),
            "model": stamp(model_dir) if Path(model_dir).is_dir() else cfg["model"]["source"],
            "tuned": file_hash(TUNED.format(**run.key))}


def task_code(cfg: dict) -> str:
    """What a cell's fingerprint covers of its task beyond the adapt stage's code: the task's own
    files (``Task.hooks["code"]``) and what its ``code_extra`` hook adds (cir: a combiner
    checkpoint's bytes); empty for image-text, whose fingerprints stay as they were."""
    from .tasks import cfg_task, hook

    task = cfg_task(cfg)
    files = task.hooks.get("code")
    out = "+" + "".join(file_hash(Path(__file__).parent / f) or "-" for f in files) if files else ""
    extra = hook(task.name, "code_extra")
    return out + (extra(cfg) if extra is not None else "")


def is_up_to_date(run: Run, fp: str) -> bool:
    """Whether the cell's results file (and its outcomes) exist, parse and carry fingerprint ``fp``."""
    import json

    path, outcomes = Path(run.result_path), Path(run.outcomes_path)
    if not path.is_file() or not outcomes.is_file():
        return False
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        log.warning(f"adapt: {path}: unreadable ({e}); running the cell again")
        return False
    return isinstance(doc, dict) and doc.get("fingerprint") == fp and doc.get("status") in ("ok", "diverged")


def query_corruptions(direction: str) -> tuple[str, tuple]:
    """(what they are called, their registries): the corruptions a direction's queries take —
    image-text: the query modality's; a task's own through its ``query_corruptions`` hook (cir: image
    or text, qshift.cir_plan; video-audio: the queried side's, qshift.va_plan)."""
    from .corrupt import IMAGE_CORRUPTIONS, TEXT_CORRUPTIONS
    from .tasks import hook

    task_corruptions = hook(direction, "query_corruptions")
    if task_corruptions is not None:
        return task_corruptions(direction)
    registry = IMAGE_CORRUPTIONS if direction == "i2t" else TEXT_CORRUPTIONS
    return registry.kind, (registry,)


def check_cell(cfg: dict, direction: str, corruption: str, severity: int) -> None:
    """A single cell's corruption/severity (the stage's ``--corruption``/``--severity``): the clean
    run or a stream at severity 0, or one of the direction's query corruptions; else ConfigError."""
    from .config import streams
    from .errors import UnknownNameError

    named = streams(cfg, direction)
    if corruption in named or corruption == CLEAN:
        if severity != 0:
            what = "the clean reference run" if corruption == CLEAN else f"stream {corruption!r}"
            raise ConfigError(f"{what} takes --severity 0, got {severity}")
        return
    what, registries = query_corruptions(direction)
    if not any(corruption in r for r in registries):
        raise UnknownNameError(f"{what} or stream for {direction} queries", corruption,
                               [n for r in registries for n in r.names()] + [CLEAN] + sorted(named))


class Job:
    """The model and gallery of one adapt job, loaded once; :meth:`run` adapts one cell with them,
    of any method (each cell starts from the source weights: ``run_stream`` restores them)."""

    def __init__(self, cfg: dict, stage_file: str | Path | None = None, progress: bool = True):
        from .gallery import load_gallery
        from .models import load_model
        from .runtime import pick_device

        self.cfg, self.progress = cfg, progress
        self.device = pick_device(cfg["device"])
        dataset, model_name = cfg["benchmark"], cfg["model"]["name"]
        self.gallery = load_gallery(GALLERY.format(model=model_name, dataset=dataset))
        self.model = load_model(cfg["model"]["source"], self.device, cfg["model"].get("cache_dir"),
                                preprocess=cfg["model"].get("preprocess", "native"))
        from .tasks import cfg_task, hook

        task = cfg_task(cfg)
        job_model = hook(task.name, "job_model")  # cir: the composed encoder, both towers + the combiner
        if job_model is not None:
            self.model = job_model(cfg, self.model)
        self.check_queries = hook(task.name, "check_queries")  # cir: every triplet's target is in the gallery
        if self.gallery["model"] != self.model.name:
            raise ConfigError(f"gallery embeddings were made with model {self.gallery['model']!r}, not "
                              f"{self.model.name!r}; rerun encode_gallery")
        if self.gallery.get("preprocess", "native") != self.model.preprocess:
            raise ConfigError(f"gallery embeddings were made with model.preprocess "
                              f"{self.gallery.get('preprocess', 'native')!r}, not {self.model.preprocess!r}; "
                              f"rerun encode_gallery")
        self.code = code_hash(stage_file) + task_code(cfg)
        self._shared: dict[str, dict] = {}  # per method: its tuned file

    def plan(self, run: Run) -> tuple[dict, dict, dict, str]:
        """(hyperparameters, tuned values applied, run settings, fingerprint) of a cell."""
        from .tta.base import PROBE_KEY
        from .tune import tuned_hparams

        cfg, ad = self.cfg, self.cfg["adapt"]
        hparams, tuned = tuned_hparams(cfg, run.method, run.direction, TUNED.format(**run.key))  # stage tune
        if probes_angle(cfg, run.method):  # an observation (params observe.grad_angle), not a hyperparameter
            hparams[PROBE_KEY] = True
        run_cfg = {"batch_size": ad["batch_size"], "steps": ad["steps"], "seed": run.seed, "amp": cfg["amp"],
                   "model_source": cfg["model"]["source"]}
        if ad.get("order", "seeded") != "seeded":  # recorded only when not the default (params_hash unchanged)
            run_cfg["order"] = ad["order"]
        if tuned:
            run_cfg["tuned"] = tuned
        if run.method not in self._shared:
            self._shared[run.method] = job_shared(cfg, run)
        return hparams, tuned, run_cfg, fingerprint(cfg, run, check_method(cfg, run.method), hparams, run_cfg,
                                                    self.code, self._shared[run.method])

    def run(self, run: Run, plan: tuple[dict, dict, dict, str] | None = None, queries=None) -> dict:
        """Adapt one cell (its queries loaded here unless given); write its outcomes, then its
        results file, then log it to MLflow."""
        from .adapt import run_stream
        from .io import stable_hash, write_json
        from .outcomes import empty_outcomes, write_outcomes
        from .runtime import provenance
        from .stats import check_and_interval
        from .tracking import log_result, sweep_of, tracking_uri

        cfg, ad = self.cfg, self.cfg["adapt"]
        hparams, tuned, run_cfg, fp = plan or self.plan(run)
        base = check_method(cfg, run.method)
        if tuned:
            log.info(f"adapt: {run_key(run.key)}: tuned on the validation split (stage tune): {tuned}")
        queries = load_queries(cfg, run) if queries is None else queries
        if self.check_queries is not None:
            self.check_queries(queries, self.gallery)
        body = run_stream(self.model, base, hparams, run.direction, queries, self.gallery,
                          batch_size=ad["batch_size"], steps=ad["steps"], seed=run.seed,
                          num_workers=cfg["num_workers"], amp=cfg["amp"], progress=self.progress,
                          desc=run_key(run.key), order_kind=ad.get("order", "seeded"))
        outcomes = body.pop("outcomes", None)  # none for a diverged run (no ranks to keep)
        if is_variant(cfg, run.method):
            log.info(f"adapt: {run.method} is a variant of {base}: {body['hparams']}")
        result = {"schema": SCHEMA, "key": run.key, "run_key": run_key(run.key), **body, "run": run_cfg,
                  **({"variant_of": base} if base != run.method else {}),
                  "env": {**provenance(self.device),
                          "params_hash": stable_hash({"hparams": body["hparams"], **run_cfg})},
                  "fingerprint": fp, "finished_at": time.time(),
                  "mlflow": {"logged": False, "run_id": None, "error": "not attempted yet"}}
        out = run.result_path
        if outcomes is not None:
            result["metrics_ci"] = check_and_interval(outcomes, result["metrics"], cfg["seed"], run.key)
        write_outcomes(run.outcomes_path, outcomes if outcomes is not None else empty_outcomes())  # before the JSON
        write_json(out, result)  # the numbers are safe before tracking is attempted
        result["mlflow"] = log_result(result, tracking_uri(cfg), experiment_name(cfg), artifact=out,
                                      sweep=sweep_of(cfg))
        write_json(out, result)
        _log_finished(result, body)
        return result


def load_queries(cfg: dict, run: Run):
    """A cell's query split (the test split of its manifest); a missing or malformed manifest is an
    error naming the file."""
    from .data.manifest import load_split

    from .tasks import hook

    task_load = hook(run.direction, "load_queries")  # cir: triplets (qshift.cir); video-audio: a clip set (qshift.va)
    if task_load is not None:
        return task_load(cfg, run)
    return load_split(queries_path(cfg, run.direction, run.corruption, run.severity, run.seed), "test")


def _log_finished(result: dict, body: dict) -> None:
    if result["mlflow"].get("replaced"):
        log.info(f"adapt: {result['run_key']}: hyperparameters changed, replaced MLflow run "
                 f"{result['mlflow']['replaced']['run_id']} ({result['mlflow']['replaced']['changed']})")
    tracked = "ok" if result["mlflow"]["logged"] else f"NOT logged: {result['mlflow']['error']}"
    if result["status"] == "diverged":
        d = result["diverged"]
        log.warning(f"adapt: {result['run_key']}: DIVERGED at batch {d['batch']} ({d['reason']}, "
                    f"{d['queries_seen']} queries seen); no R@K reported ({body['timing']['seconds']:.1f}s, "
                    f"mlflow {tracked})")
        return
    m = result["metrics"]
    log.info(f"adapt: {result['run_key']}: R@1 {m['R@1']:.2f} R@5 {m['R@5']:.2f} R@10 {m['R@10']:.2f} "
             f"({body['timing']['seconds']:.1f}s, mlflow {tracked})")


def run_job(job: Job, cells: list[Run], force: bool = False) -> dict:
    """Every cell of a job that is not up to date (all with ``force``), one after another.
    Returns counts: run, up_to_date, seconds (the job's adaptation time)."""
    todo, fresh = [], 0
    for run in cells:
        plan = job.plan(run)
        if not force and is_up_to_date(run, plan[3]):
            fresh += 1
            continue
        todo.append((run, plan))
    log.info(f"adapt: {len(cells)} cells, {fresh} up to date, {len(todo)} to run")
    seconds = 0.0
    for i, (run, plan) in enumerate(todo, 1):
        log.info(f"adapt: cell {i}/{len(todo)}: {run_key(run.key)}")
        result = job.run(run, plan)
        seconds += float(result["timing"]["seconds"])
    return {"cells": len(cells), "run": len(todo), "up_to_date": fresh, "seconds": seconds}


def missing_inputs(cfg: dict, cells: list[Run]) -> list[str]:
    """The cells' query inputs that do not exist (named before any work)."""
    return [p for p in dict.fromkeys(query_input(cfg, r) for r in cells) if not Path(p).exists()]


def require_inputs(cfg: dict, cells: list[Run]) -> None:
    missing = missing_inputs(cfg, cells)
    if missing:
        raise InputError(f"{len(missing)} query set(s) of this job are missing (first: {missing[0]}); "
                         f"run the corruption stages first")
