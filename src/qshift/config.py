"""params.yaml: loading, overrides, validation, and the experiment grid both orchestrators use.

``params.yaml`` is the single source of every parameter. Stage CLIs read it (plus optional
``--set key=value`` overrides); Snakemake reads it as its configfile and turns any
``--config`` overrides into the same ``--set`` flags; DVC reads it as its params file.
The path patterns below are the one definition of where each stage writes.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

from .errors import ConfigError, InputError
from .method_catalog import coerce_hparam, registered_methods
from .results import CLEAN, DIRECTIONS

DEFAULT_PARAMS = "params.yaml"

# -- the one definition of every path the pipeline writes -----------------------------------
RAW_DIR = "data/raw/{dataset}"  # the download stage's output (annotations/, images/, download.json)
DATASET_DIR = "data/{dataset}"
MANIFEST = "data/{dataset}/manifest.json"
MODEL_DIR = "models/{model}"
IMAGE_QUERIES = "data/queries/{dataset}/image/{corruption}-s{severity}"  # folder: images + manifest.json
TEXT_QUERIES = "data/queries/{dataset}/text/{corruption}-s{severity}.json"  # a manifest
# multi-domain query streams (qshift.streams): same formats, their own folders
STREAM_IMAGE_QUERIES = "data/queries/{dataset}/image-stream/{stream}"  # folder: images + manifest.json
STREAM_TEXT_QUERIES = "data/queries/{dataset}/text-stream/{stream}.json"  # a manifest
STREAM_CIR_QUERIES = "data/queries/{dataset}/cir-stream/{stream}"  # folder: references + manifest.json (qshift.cir_streams)
# the video-audio task's clip sets (qshift.va): the corrupted modality only, {side} video | audio
VIDEO_QUERIES = "data/queries/{dataset}/video/{corruption}-s{severity}"  # folder: clips.json + frames.npy
AUDIO_QUERIES = "data/queries/{dataset}/audio/{corruption}-s{severity}"  # folder: clips.json + audio.npy
VA_STREAM_QUERIES = "data/queries/{dataset}/{side}-stream/{stream}"
# with `seed_corruptions: true`, a run seed other than the project's reads query sets drawn
# with that seed (qshift.corrupt.build, `draw`): the same formats under <kind>-seed<N>/
DRAWN = {"image": "data/queries/{dataset}/image-seed{draw}/{corruption}-s{severity}",
         "text": "data/queries/{dataset}/text-seed{draw}/{corruption}-s{severity}.json",
         "image-stream": "data/queries/{dataset}/image-stream-seed{draw}/{stream}",
         "text-stream": "data/queries/{dataset}/text-stream-seed{draw}/{stream}.json",
         "cir-stream": "data/queries/{dataset}/cir-stream-seed{draw}/{stream}",
         "video": "data/queries/{dataset}/video-seed{draw}/{corruption}-s{severity}",
         "audio": "data/queries/{dataset}/audio-seed{draw}/{corruption}-s{severity}",
         "va-stream": "data/queries/{dataset}/{side}-stream-seed{draw}/{stream}"}
GALLERY = "data/embeddings/{model}/{dataset}/gallery.pt"
# one folder per adaptation seed (params `seeds`): the seeds of one grid coexist
RESULT = "results/{dataset}/{model}/{direction}/{method}/seed{seed}/{corruption}-s{severity}.json"
# per-query outcomes beside each results file (qshift.outcomes), written by the same job
OUTCOMES = "results/{dataset}/{model}/{direction}/{method}/seed{seed}/{corruption}-s{severity}.npz"
TUNED = "results/{dataset}/{model}/tuned/{method}.json"  # stage tune: one file per method of adapt.methods
# every stage mirrors its log here (Snakemake's `log:` directives name the same files)
EXAMPLES_DIR = "{report}/corruptions"  # contact sheet + text examples (stage `examples`)
LOGS = {
    "download": "logs/download/{dataset}.log",
    "prepare": "logs/prepare/{dataset}.log",
    "examples": "logs/examples/{dataset}.log",
    "pretrain": "logs/pretrain/{model}.log",
    "corrupt_images": "logs/corrupt_images/{dataset}/{corruption}-s{severity}.log",
    "corrupt_text": "logs/corrupt_text/{dataset}/{corruption}-s{severity}.log",
    "corrupt_stream": "logs/corrupt_stream/{dataset}/{side}/{stream}.log",
    # the video-audio task's query sets (qshift.va; stages/corrupt_va.py)
    "corrupt_video": "logs/corrupt_video/{dataset}/{corruption}-s{severity}.log",
    "corrupt_audio": "logs/corrupt_audio/{dataset}/{corruption}-s{severity}.log",
    "corrupt_video_drawn": "logs/corrupt_video/{dataset}/seed{draw}/{corruption}-s{severity}.log",
    "corrupt_audio_drawn": "logs/corrupt_audio/{dataset}/seed{draw}/{corruption}-s{severity}.log",
    # the same stages drawing with another seed (seed_corruptions)
    "corrupt_images_drawn": "logs/corrupt_images/{dataset}/seed{draw}/{corruption}-s{severity}.log",
    "corrupt_text_drawn": "logs/corrupt_text/{dataset}/seed{draw}/{corruption}-s{severity}.log",
    "corrupt_stream_drawn": "logs/corrupt_stream/{dataset}/{side}/seed{draw}/{stream}.log",
    "encode_gallery": "logs/encode_gallery/{model}/{dataset}.log",
    "adapt": "logs/adapt/{dataset}/{model}/{direction}/{method}/seed{seed}/{corruption}-s{severity}.log",
    # one adapt job: every cell of (method, direction, seed) in one process (qshift.cells)
    "adapt_job": "logs/adapt/{dataset}/{model}/{direction}/{method}/seed{seed}.log",
    # a job of every method (adapt_jobs: direction)
    "adapt_direction_job": "logs/adapt/{dataset}/{model}/{direction}/seed{seed}.log",
    "report": "logs/report/{dataset}.log",
    "observe": "logs/observe/{dataset}.log",
    "tune": "logs/tune/{dataset}/{model}/{method}.log",
}


# Snakemake resolves `--config` overrides once (benchmark preset + overrides) into a file and
# points every job at it through this variable, so job commands stay the same whatever the
# overrides (no rerun of everything) and each job reruns only when the keys it reads change.
PARAMS_ENV = "QSHIFT_PARAMS"
RESOLVED_KEY = "_resolved"  # present (with provenance) in such a file: presets already applied


def default_params_path() -> str:
    return os.environ.get(PARAMS_ENV) or DEFAULT_PARAMS


def read_raw_params(path: str | Path = DEFAULT_PARAMS) -> dict:
    """The params file as written (no preset applied): what DVC reads."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"params file not found: {path}")
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise InputError(f"params file {path} is not valid YAML: {e}") from None
    if not isinstance(cfg, dict):
        raise InputError(f"params file {path} must hold a mapping at top level")
    return cfg


def load_params(path: str | Path = DEFAULT_PARAMS, overrides: list[str] | None = None) -> dict:
    cfg = read_raw_params(path)
    if cfg.get(RESOLVED_KEY):  # written by write_resolved: presets and overrides already applied
        cfg = copy.deepcopy(cfg)
        for item in overrides or []:
            apply_override(cfg, item)
        validate(cfg)
    else:
        cfg = resolve(cfg, overrides)
    register_caches(cfg)
    return cfg


def write_resolved(cfg: dict, overrides: list[str], folder: str | Path = ".snakemake/qshift") -> Path:
    """Write resolved params (see PARAMS_ENV) to ``folder/params-<hash>.yaml``; returns the path.
    The name is a hash of the content, so concurrent writers (SLURM nodes re-reading the
    Snakefile) write the same bytes to the same name."""
    from .io import stable_hash, write_text

    doc = {**copy.deepcopy(cfg), RESOLVED_KEY: {"from": DEFAULT_PARAMS, "overrides": list(overrides)}}
    path = Path(folder) / f"params-{stable_hash(doc)}.yaml"
    if not path.is_file():
        write_text(path, "# resolved by the Snakefile: params.yaml + benchmark preset + --config overrides\n"
                   + yaml.safe_dump(doc, sort_keys=False))
    return path


def parse_set(value: Any) -> list[str]:
    """``snakemake --config set='a.b=1 c.d=[x, y]'``: Snakemake takes no dotted keys, so dotted
    overrides come as one string (split like a shell line: quote values with spaces) or a
    YAML list of ``key=value`` strings."""
    import shlex

    if value is None or value == "":
        return []
    if isinstance(value, str):
        try:
            items = shlex.split(value)
        except ValueError as e:
            raise ConfigError(f"--config set={value!r}: {e}") from None
    elif isinstance(value, list):
        items = [str(v) for v in value]
    else:
        raise ConfigError(f"--config set={value!r} must be a string of key=value overrides, e.g. "
                          f"set='adapt.batch_size=32 methods.tcr.lr=1e-3'")
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--config set: {item!r} must look like key.path=value")
    return items


def register_caches(cfg: dict) -> None:
    """The configured caches (which may lie outside the project) are output roots too: the
    atomic writers may replace folders QShift wrote there (qshift.io.check_replaceable)."""
    from .io import register_output_root

    for section in ("download", "model"):
        cache = (cfg.get(section) or {}).get("cache_dir")
        if isinstance(cache, str) and cache:
            register_output_root(cache)


def resolve(raw: dict, overrides: list[str] | None = None) -> dict:
    """The effective params: the file, the selected benchmark's preset over it, then the
    overrides (a ``benchmark=...`` override selects the preset first). See qshift.presets."""
    from . import presets

    overrides = list(overrides or [])
    switch = [o for o in overrides if o.partition("=")[0].strip() == "benchmark"]
    cfg = copy.deepcopy(raw)
    for item in switch:
        apply_override(cfg, item)
    if "benchmarks" in cfg:
        cfg = presets.apply_preset(cfg)
    for item in overrides:
        if item not in switch:
            apply_override(cfg, item)
    validate(cfg)
    presets.dvc_guard(raw, cfg)
    return cfg


def apply_override(cfg: dict, item: str) -> None:
    """``a.b.c=value`` with a YAML value; the key path must already exist in params."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like key.path=value")
    parts = key.split(".")
    node = cfg
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"override {item!r}: unknown key {'.'.join(parts[:i + 1])!r}")
        node = node[part]
    valid = _settable(cfg, parts[:-1], node)
    if parts[-1] not in valid:
        shown = ", ".join(sorted(valid)) if isinstance(node, dict) else "(not a mapping)"
        raise ConfigError(f"override {item!r}: unknown key {key!r}; valid here: {shown}")
    node[parts[-1]] = parse_value(raw)


def _settable(cfg: dict, path: list[str], node: Any) -> set[str]:
    """The keys an override may set under ``path``: the keys there, and under ``methods.<name>``
    also the method's hyperparameters (their defaults live on its class, not in params)."""
    if not isinstance(node, dict):
        return set()
    keys = set(node)
    if len(path) == 2 and path[0] == "methods":
        METHODS = registered_methods()
        try:
            keys |= set(METHODS.get(base_method(cfg, path[1])).defaults)
        except ConfigError:
            pass  # an unknown method: validation names it
    return keys


def parse_value(raw: str) -> Any:
    """A YAML value, except that ``1e-3`` is a float (YAML 1.1 would read a string)."""
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _retype(value: Any) -> Any:
    """Snakemake parses nested ``--config`` values with YAML's BaseLoader (every scalar a
    string: ``'datasets={builtin: {n_train: 500}}'`` gives ``'500'``); give them YAML types."""
    if isinstance(value, dict):
        return {k: _retype(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_retype(v) for v in value]
    if isinstance(value, str):
        try:
            return parse_value(value)
        except yaml.YAMLError:
            return value
    return value


def diff_overrides(cfg: dict, base: dict, prefix: str = "") -> list[str]:
    """The ``key=value`` overrides that turn ``base`` into ``cfg`` (used by the Snakefile on
    Snakemake's config: values are re-typed as YAML, see :func:`_retype`)."""
    out = []
    for k, v in cfg.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            out += diff_overrides(v, base[k], path + ".")
            continue
        if k in base and base[k] == v:
            continue
        if not (isinstance(v, str) and isinstance(base.get(k), str)):  # a string stays a string
            v = _retype(v)
        if k not in base or base[k] != v:
            out.append(f"{path}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}")
    return out


# model.source schemes (qshift.models LOADERS; kept here so validating params never imports
# the model libraries — tests/test_presets.py checks the two agree)
MODEL_SCHEMES = ("cav-mae", "hf-blip", "hf-clip", "irra", "local-dir", "open_clip")


# names that become path components (models/<model>, data/<dataset>, results/.../<method>/...)
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]*")


def check_name(what: str, name: Any) -> str:
    """``name`` as a safe path component: ``[a-z0-9][a-z0-9._-]*`` without ``..``."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise ConfigError(f"params: {what} {name!r} is not a valid name: use lower-case letters, digits, '.', '_' "
                          f"and '-', starting with a letter or digit (no '/', no '..', not empty)")
    return name


def _check_rel_dir(what: str, value: Any) -> None:
    parts = Path(value).parts if isinstance(value, str) and value else ()
    if not parts or Path(value).is_absolute() or ".." in parts or value.strip() in (".", "./"):
        raise ConfigError(f"params: {what} {value!r} must be a relative folder inside the project "
                          f"(e.g. 'reports'), without '..'")


def validate_names(cfg: dict) -> None:
    """Every name that becomes a path, checked before any work (a bad one could name a folder
    outside the outputs: ``model.name=..`` would make models/.. the model folder)."""
    check_name("benchmark", cfg.get("benchmark"))
    for name in cfg.get("benchmarks") or {}:
        check_name("benchmarks entry", name)
    for name in cfg.get("datasets") or {}:
        check_name("datasets entry", name)
    if not isinstance(cfg.get("model"), dict):
        raise ConfigError("params: model must be a mapping with keys name, source, ...")
    check_name("model.name", cfg["model"].get("name"))
    for name in cfg.get("methods") or {}:
        check_name("methods entry", name)
    for key in ("methods", "clean_methods"):
        for name in (cfg.get("adapt") or {}).get(key) or []:
            check_name(f"adapt.{key} entry", name)
    # stream names: qshift.streams.validate_stream (a stricter rule: a-z, 0-9 and _)
    side_cfg = (cfg.get("corrupt") or {})
    for side, key in (("image", "names"), ("text", "names")):
        for name in ((side_cfg.get(side) or {}).get(key)) or []:
            check_name(f"corrupt.{side}.names entry", name)
    if isinstance(cfg.get("mlflow"), dict) and "experiment" in cfg["mlflow"]:
        template = cfg["mlflow"]["experiment"]
        try:
            exp = str(template).format(benchmark=cfg.get("benchmark"))
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(f"params: mlflow.experiment {template!r} may only use {{benchmark}} ({e})") from None
        check_name("mlflow.experiment", exp)
    if isinstance(cfg.get("report"), dict) and "dir" in cfg["report"]:
        _check_rel_dir("report.dir", cfg["report"]["dir"])


def _int_param(cfg: dict, dotted: str, minimum: int, required: bool = True) -> None:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            if required:
                raise ConfigError(f"params: missing key {dotted!r}")
            return
        node = node[part]
    if isinstance(node, bool) or not isinstance(node, int) or node < minimum:
        raise ConfigError(f"params: {dotted} must be an integer >= {minimum}, got {node!r}")


# Snakemake's adapt job granularity (params adapt_jobs): one job per direction (every method) or
# per method (x direction); the seed is a dimension of both
ADAPT_JOBS = ("direction", "method")
# pretrain's named choices, the default (a recipe without the key) first; torch-free copies of
# qshift.models.train.MATMUL / OPTIMIZERS and qshift.models.muon.PRECISIONS (tests/test_pretrain.py)
PRETRAIN_CHOICES = {"matmul": ("fp32", "fast"), "optimizer": ("adamw", "muon"), "muon_precision": ("fp32", "bf16")}


def adapt_job_methods(cfg: dict) -> list[list[str]]:
    """The methods each adapt job of a direction runs: one list of every method
    (``adapt_jobs: direction``) or one list per method (``method``)."""
    methods = list(cfg["adapt"]["methods"])
    return [methods] if cfg.get("adapt_jobs", "method") == "direction" else [[m] for m in methods]


def adapt_job_log(dataset: str, model: str, direction: str, methods: list[str], seed) -> str:
    """An adapt job's log: under the method's folder for a one-method job, else the direction's."""
    where = dict(dataset=dataset, model=model, direction=direction, seed=seed)
    if len(methods) == 1:
        return LOGS["adapt_job"].format(**where, method=methods[0])
    return LOGS["adapt_direction_job"].format(**where)


def validate_run_params(cfg: dict) -> None:
    """The numbers every run reads, typed before any job (a batch size of 0 or 1.5 would
    otherwise fail inside a job with a traceback)."""
    _int_param(cfg, "seed", 0)
    run_seeds(cfg)
    if not isinstance(cfg.get("seed_corruptions", False), bool):
        raise ConfigError(f"params: seed_corruptions must be true or false, got {cfg['seed_corruptions']!r}")
    _int_param(cfg, "adapt.batch_size", 1)
    _int_param(cfg, "adapt.steps", 1)
    _int_param(cfg, "model.batch_size", 1, required=False)
    _int_param(cfg, "num_workers", 0, required=False)
    _int_param(cfg, "threads", 0, required=False)
    _int_param(cfg, "query_cache_mb", 0, required=False)
    from .runtime import check_cpu_kernels

    check_cpu_kernels(cfg.get("cpu_kernels", "native"))
    if cfg.get("adapt_jobs", "method") not in ADAPT_JOBS:
        raise ConfigError(f"params: adapt_jobs is {cfg['adapt_jobs']!r}; valid: {', '.join(ADAPT_JOBS)}")
    _int_param(cfg, "pretrain.steps", 1, required=False)
    _int_param(cfg, "pretrain.batch_size", 1, required=False)
    pre = cfg.get("pretrain") if isinstance(cfg.get("pretrain"), dict) else {}
    for key, choices in PRETRAIN_CHOICES.items():
        if pre.get(key, choices[0]) not in choices:
            raise ConfigError(f"params: pretrain.{key} is {pre[key]!r}; valid: {', '.join(choices)}")
    for key in ("trim_text", "fused_optimizer"):
        if not isinstance(pre.get(key, False), bool):
            raise ConfigError(f"params: pretrain.{key} must be true or false, got {pre[key]!r}")
    if "amp" in cfg and not isinstance(cfg["amp"], bool):
        raise ConfigError(f"params: amp must be true or false, got {cfg['amp']!r}")


def validate(cfg: dict) -> None:
    from . import presets
    from .corrupt import IMAGE_CORRUPTIONS
    from .corrupt.image import check_implementation
    from .corrupt.text import validate_text_params
    from .data.karpathy import validate_dataset, validate_download
    METHODS = registered_methods()

    for key in ("seed", "benchmark", "datasets", "model", "corrupt", "adapt", "methods"):
        if key not in cfg:
            raise ConfigError(f"params: missing top-level key {key!r}")
    validate_names(cfg)
    validate_run_params(cfg)
    if "benchmarks" in cfg:
        presets.preset(cfg)
        presets.setting(cfg)
        presets.dataset_cfg(cfg)
    elif cfg["benchmark"] not in cfg["datasets"]:
        raise ConfigError(f"params: benchmark {cfg['benchmark']!r} has no entry under 'datasets'; "
                          f"valid: {', '.join(cfg['datasets'])}")
    for name, d in cfg["datasets"].items():
        validate_dataset(name, d)
    if "download" in cfg:
        validate_download(cfg["download"])
    scheme = str(cfg["model"].get("source", "")).partition(":")[0]
    if scheme not in MODEL_SCHEMES:
        raise ConfigError(f"params: model.source {cfg['model'].get('source')!r} must look like SCHEME:IDENTIFIER; "
                          f"schemes: {', '.join(MODEL_SCHEMES)}")
    if cfg["model"].get("preprocess", "native") not in ("native", "reference", "targetpad"):  # models.reference
        raise ConfigError(f"params: model.preprocess {cfg['model']['preprocess']!r}; valid: native, reference, "
                          f"targetpad")
    if not isinstance(cfg["model"].get("cache_dir", ""), str):
        raise ConfigError(f"params: model.cache_dir must be a path, got {cfg['model']['cache_dir']!r}")
    image = cfg["corrupt"]["image"]
    workers = image.get("workers", 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ConfigError(f"params: corrupt.image.workers must be an integer >= 0 (0 = all cores), got {workers!r}")
    quality = image.get("jpeg_quality", 95)
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ConfigError(f"params: corrupt.image.jpeg_quality must be an integer in 1..100, got {quality!r}")
    check_implementation(image)  # corrupt.image.implementation / .mm_robustness
    validate_variants(cfg)
    for m in cfg["adapt"]["methods"]:
        if not is_variant(cfg, m):
            METHODS.check(m)
        if m not in cfg["methods"]:
            raise ConfigError(f"params: method {m!r} is listed in adapt.methods but has no entry under 'methods'")
    for m in cfg["adapt"].get("clean_methods", []):
        if m not in cfg["adapt"]["methods"]:
            raise ConfigError(f"params: adapt.clean_methods has {m!r}, which is not in adapt.methods "
                              f"({', '.join(cfg['adapt']['methods'])})")
    if cfg["adapt"].get("order", "seeded") not in ("seeded", "reference"):  # qshift.adapt.ORDERS
        raise ConfigError(f"params: adapt.order {cfg['adapt']['order']!r}; valid: seeded, reference")
    from .tasks import all_directions, validate_tasks

    for d in cfg["adapt"]["directions"]:
        if d not in all_directions():
            raise ConfigError(f"params: adapt.directions has {d!r}; valid: {', '.join(all_directions())}")
    validate_tasks(cfg)  # one task per grid, on a dataset of that task (qshift.tasks)
    for name in cfg["corrupt"]["image"]["names"]:
        IMAGE_CORRUPTIONS.check(name)
    validate_text_params(cfg)
    for s in cfg["corrupt"]["image"]["severities"]:
        if s not in range(1, 6):
            raise ConfigError(f"params: image severity {s!r} not in 1..5")
    for m, hp in cfg["methods"].items():
        for d in (hp or {}).get(BY_DIRECTION, {}) or {}:
            if d not in all_directions():
                raise ConfigError(f"params: methods.{m}.{BY_DIRECTION} has {d!r}; valid: {', '.join(all_directions())}")
    validate_streams(cfg)
    validate_observe(cfg)
    validate_method_hparams(cfg)
    from .tune import validate_tune

    validate_tune(cfg)
    if cfg.get("seed_corruptions") and any(s != cfg["seed"] for s in run_seeds(cfg)):
        from .data.prebuilt import prebuilt_dir

        if prebuilt_dir(cfg) is not None:
            raise ConfigError("params: seed_corruptions: true draws the corruptions anew for each run seed, but "
                              "the benchmark's query sets are the authors' prebuilt ones (datasets.<name>.prebuilt), "
                              "a single draw; set seed_corruptions: false")


# hyperparameters that must be positive / non-negative whatever the method
POSITIVE_HPARAMS = ("lr", "tau", "queue_size", "queue_batches", "topk")
NONNEGATIVE_HPARAMS = ("weight_decay",)


def validate_method_hparams(cfg: dict) -> None:
    """Every method of the grid: its hyperparameters (per direction) typed as the method's
    defaults, and sign-checked, before any job (``lr=-1`` or ``lr=abc`` would otherwise
    fail, or silently run, inside a job)."""
    METHODS = registered_methods()

    grid = list(cfg["adapt"]["methods"]) + list((cfg.get("streams") or {}).get("methods") or [])
    for m in dict.fromkeys(grid):
        base = METHODS.get(base_method(cfg, m))
        for d in cfg["adapt"]["directions"]:
            hp = method_hparams(cfg, m, d)
            check_known_hparams(cfg, m, base, hp)
            for k, v in hp.items():
                try:
                    v = coerce_hparam(base.name, k, v, base.defaults[k])
                except ConfigError as e:
                    raise ConfigError(f"params: methods.{m}.{k} ({d}): {e}") from None
                number = isinstance(v, (int, float)) and not isinstance(v, bool)
                if k in POSITIVE_HPARAMS and number and not v > 0:
                    raise ConfigError(f"params: methods.{m}.{k} must be > 0, got {v!r}")
                if k in NONNEGATIVE_HPARAMS and number and not v >= 0:
                    raise ConfigError(f"params: methods.{m}.{k} must be >= 0, got {v!r}")


def validate_streams(cfg: dict) -> None:
    """The optional ``streams`` section: methods within adapt.methods, valid stream definitions
    whose names cannot be mistaken for a corruption (they share the results path pattern)."""
    from .corrupt import IMAGE_CORRUPTIONS, TEXT_CORRUPTIONS
    from .streams import SIDES, validate_stream

    st = cfg.get("streams")
    if st is None:
        return
    if not isinstance(st, dict):
        raise ConfigError("params: streams must be a mapping with keys methods, image, text")
    unknown = set(st) - {"methods", "image", "text", "video", "audio", "cir"}  # video, audio: qshift.va; cir: qshift.cir_streams
    if unknown:
        raise ConfigError(f"params: streams has unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                          f"valid: methods, image, text, video, audio, cir")
    methods = st.get("methods") or []
    if not isinstance(methods, list):
        raise ConfigError("params: streams.methods must be a list")
    for m in methods:
        if m not in cfg["adapt"]["methods"]:
            raise ConfigError(f"params: streams.methods has {m!r}, which is not in adapt.methods "
                              f"({', '.join(cfg['adapt']['methods'])}); add it there or drop it from "
                              f"streams.methods")
    reserved = {CLEAN, *IMAGE_CORRUPTIONS.names(), *TEXT_CORRUPTIONS.names()}
    for direction, (side, _) in SIDES.items():
        defs = st.get(side) or {}
        if not isinstance(defs, dict):
            raise ConfigError(f"params: streams.{side} must be a mapping of stream name -> definition")
        for name, spec in defs.items():
            validate_stream(name, spec, direction, reserved)


def validate_observe(cfg: dict) -> None:
    """``observe.grad_angle``: methods (or variants' bases) whose adapt jobs record the gradient angle."""
    ob = cfg.get("observe")
    if ob is None:
        return
    angle = ob.get("grad_angle") if isinstance(ob, dict) else None
    if not isinstance(angle, list):
        raise ConfigError(f"params: observe.grad_angle must be a list of methods, got {angle!r}")
    for m in angle:
        if m not in cfg["methods"]:
            raise ConfigError(f"params: observe.grad_angle has {m!r}, which has no entry under 'methods'; "
                              f"valid: {', '.join(cfg['methods'])}")


def probes_angle(cfg: dict, method: str) -> bool:
    """Whether a method's adapt jobs record the gradient-angle probe (itself or its base listed)."""
    listed = set(((cfg.get("observe") or {}).get("grad_angle")) or [])
    return method in listed or (is_variant(cfg, method) and base_method(cfg, method) in listed)


def streams(cfg: dict, direction: str) -> dict[str, dict]:
    """The direction's stream definitions: ``streams.<side>`` of its one query side (qshift.tasks:
    i2t image, t2i text, v2a video, a2v audio); a direction whose queries have two sides (cir)
    reads ``streams.<direction>`` (qshift.cir_streams: domains of both sides in one stream)."""
    from .tasks import direction as task_direction

    sides = task_direction(direction).sides
    key = sides[0] if len(sides) == 1 else direction
    return dict((cfg.get("streams") or {}).get(key) or {})


def is_stream(cfg: dict, direction: str, corruption: str) -> bool:
    return corruption in streams(cfg, direction)


# methods.<name>.by_direction.<direction>: hyperparameters that differ per query modality,
# e.g. docs/methods.md's lr 3e-5 for text queries on BLIP (the coco-c/flickr-c presets set it)
BY_DIRECTION = "by_direction"


def method_hparams(cfg: dict, method: str, direction: str | None = None) -> dict:
    """The hyperparameters a method entry runs with: the method class's ``defaults`` (where they
    live, once), then the entry's overrides, then its ``by_direction`` ones. A variant (an entry
    with ``method: BASE``) starts from its base's (resolved the same way), then its own values,
    then its own ``by_direction``."""
    hp = copy.deepcopy(cfg["methods"].get(method) or {})
    base = hp.pop(VARIANT_KEY, None)
    per = hp.pop(BY_DIRECTION, None) or {}
    if direction is not None:
        hp.update(per.get(direction) or {})
    if base is not None:
        base_method(cfg, method)  # refuses unknown bases and cycles
        return {**method_hparams(cfg, base, direction), **hp}
    return {**class_defaults(method), **hp}


def class_defaults(method: str) -> dict:
    """A registered method's ``defaults`` ({} for a name that is not one: validation reports it)."""
    METHODS = registered_methods()

    return copy.deepcopy(METHODS.get(method).defaults) if method in METHODS else {}


# -- method variants: methods.<variant>: {method: <base>, <hp overrides>...} ---------------------
VARIANT_KEY = "method"
# '.' is refused: DVC params and --set/--config key paths are dotted (methods.<name>.lr)
VARIANT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")


def is_variant(cfg: dict, method: str) -> bool:
    return isinstance(cfg["methods"].get(method), dict) and VARIANT_KEY in cfg["methods"][method]


def base_method(cfg: dict, method: str) -> str:
    """The registered method a methods entry builds (itself unless it is a variant; a variant
    of a variant resolves through the chain)."""
    METHODS = registered_methods()

    seen = [method]
    name = method
    while is_variant(cfg, name):
        name = cfg["methods"][name][VARIANT_KEY]
        if not isinstance(name, str):
            raise ConfigError(f"params: methods.{seen[-1]}.{VARIANT_KEY} must be a method name, got {name!r}; "
                              f"valid: {', '.join(METHODS.names())}")
        if name in seen:
            raise ConfigError(f"params: method variant {method!r} has a cycle: {' -> '.join(seen + [name])}")
        seen.append(name)
    if len(seen) == 1:
        return METHODS.check(name)
    if name not in METHODS:
        via = f" (via {' -> '.join(seen)})" if len(seen) > 2 else ""
        raise ConfigError(f"params: methods.{seen[-2]}.{VARIANT_KEY} is {name!r}, not a method{via}; "
                          f"valid: {', '.join(METHODS.names())}")
    return name


def check_method(cfg: dict, method: str) -> str:
    """A method or variant name given on a command line -> its base; unknown: the valid names."""
    from .errors import UnknownNameError
    METHODS = registered_methods()

    if method in METHODS or is_variant(cfg, method):
        return base_method(cfg, method)
    variants = [m for m in cfg["methods"] if is_variant(cfg, m)]
    raise UnknownNameError("method", method, METHODS.names() + variants)


def validate_variants(cfg: dict) -> None:
    """Every variant entry: a valid name, a resolvable base, only the base's hyperparameters."""
    METHODS = registered_methods()

    if not isinstance(cfg["methods"], dict):
        raise ConfigError("params: methods must be a mapping of method name -> hyperparameters")
    for name, entry in cfg["methods"].items():
        if not is_variant(cfg, name):
            continue
        if name in METHODS:
            raise ConfigError(f"params: methods.{name} names a base ({VARIANT_KEY}: {entry[VARIANT_KEY]!r}), but "
                              f"{name!r} is a built-in method; give the variant another name")
        if not VARIANT_NAME.fullmatch(str(name)):
            raise ConfigError(f"params: method variant name {name!r} must match {VARIANT_NAME.pattern} "
                              f"(lowercase letters, digits, '_' and '-')")
        base = METHODS.get(base_method(cfg, name))
        for d in (None, *DIRECTIONS):  # every variant, listed in the grid or not
            check_known_hparams(cfg, name, base, method_hparams(cfg, name, d))


def check_known_hparams(cfg: dict, name: str, base, hp: dict) -> None:
    """The one check that ``methods.<name>`` sets only hyperparameters its (base) method has."""
    unknown = sorted(set(hp) - set(base.defaults))
    if not unknown:
        return
    valid = ", ".join(sorted(base.defaults)) or "(none)"
    if is_variant(cfg, name):
        raise ConfigError(f"params: methods.{name} (a variant of {base.name!r}) sets unknown hyperparameter(s) "
                          f"{', '.join(unknown)}; valid: {valid}")
    raise ConfigError(f"params: methods.{name} has unknown hyperparameter(s) {', '.join(unknown)} for method "
                      f"{base.name!r}; valid: {valid}")


def run_seeds(cfg: dict) -> list[int]:
    """The adaptation seeds (params ``seeds``, default ``[seed]``): a grid dimension. A run's
    seed sets its stream order and torch's RNG; ``seed`` itself stays the project's seed (the
    built-in data, pretraining, the corruption draws, the streams' domain assignment, tuning,
    the bootstrap), so adding a seed to the list adds only that seed's adapt jobs."""
    seeds = cfg.get("seeds")
    if seeds is None:
        return [cfg["seed"]]
    if not isinstance(seeds, list) or not seeds:
        raise ConfigError(f"params: seeds must be a non-empty list of integers >= 0, got {seeds!r}")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ConfigError(f"params: seeds: {s!r} is not an integer >= 0 (seeds: {seeds!r})")
    dup = sorted({s for s in seeds if seeds.count(s) > 1})
    if dup:
        raise ConfigError(f"params: seeds lists {', '.join(map(str, dup))} more than once (seeds: {seeds!r})")
    return list(seeds)


def draw_seed(cfg: dict, seed: int | None) -> int | None:
    """The seed a run's corrupted queries are drawn with, when not the project's: ``seed`` itself
    under ``seed_corruptions: true`` (for every run seed but ``seed``), else None (the one
    standard draw of every query set)."""
    if seed is None or not cfg.get("seed_corruptions", False) or int(seed) == int(cfg["seed"]):
        return None
    return int(seed)


def check_draw(cfg: dict, draw: int | None) -> int | None:
    """A query stage's ``--draw-seed``: a run seed of ``seeds`` other than ``seed``, under
    ``seed_corruptions: true`` (ConfigError otherwise, naming the valid values)."""
    if draw is None:
        return None
    others = [s for s in run_seeds(cfg) if s != cfg["seed"]]
    if not cfg.get("seed_corruptions", False):
        raise ConfigError(f"--draw-seed {draw}: params seed_corruptions is false (every run seed reads the one "
                          f"standard draw); set it to true to draw the corruptions per seed")
    if draw not in others:
        raise ConfigError(f"--draw-seed {draw} is not a run seed other than the project's seed {cfg['seed']}; "
                          f"valid: {', '.join(map(str, others)) or '(none: seeds lists only the project seed)'}")
    return int(draw)


def primary_seed(cfg: dict) -> int:
    """The seed whose runs the report's main tables show (the first of ``seeds``)."""
    return run_seeds(cfg)[0]


@dataclass(frozen=True)
class Run:
    dataset: str
    model: str
    direction: str
    method: str
    corruption: str
    severity: int
    seed: int

    @property
    def key(self) -> dict:
        return {"benchmark": self.dataset, "dataset": self.dataset, "model": self.model,
                "direction": self.direction, "method": self.method, "corruption": self.corruption,
                "severity": self.severity, "seed": self.seed}

    @property
    def result_path(self) -> str:
        return RESULT.format(**self.key)

    @property
    def outcomes_path(self) -> str:
        return OUTCOMES.format(**self.key)


def query_cells(cfg: dict, direction: str) -> list[tuple[str, int]]:
    """(corruption, severity) cells of a direction, the clean reference first. Text types
    that cannot run here (a model-based type with no model configured) are left out; the
    report lists them as not run."""
    from .tasks import hook

    task_cells = hook(direction, "query_cells")  # video-audio: corrupt.video / corrupt.audio (qshift.va)
    if task_cells is not None:
        return task_cells(cfg, direction)
    if direction == "cir":  # composed queries: the image cells (reference) then the text cells (modification)
        image = query_cells(cfg, "i2t")
        return image + [c for c in query_cells(cfg, "t2i") if c[0] != CLEAN]
    if direction == "i2t":
        side = cfg["corrupt"]["image"]
        names, levels = side["names"], side["severities"]
    else:
        from .corrupt.text import available_text_corruptions

        names, levels = available_text_corruptions(cfg), cfg["corrupt"]["text"]["levels"]
    return [(CLEAN, 0)] + [(c, int(s)) for c in names for s in levels]


def runs(cfg: dict, seeds: list[int] | None = None) -> Iterator[Run]:
    """Every run of the grid: each method on each shifted cell, the methods listed in
    ``adapt.clean_methods`` on clean queries, and ``streams.methods`` on each of the direction's
    streams (``corruption`` = the stream's name, ``severity`` 0) — once per seed of ``seeds``
    (default: every seed of params ``seeds``)."""
    dataset, model = cfg["benchmark"], cfg["model"]["name"]
    clean_methods = set(cfg["adapt"].get("clean_methods", []))
    stream_methods = set((cfg.get("streams") or {}).get("methods") or [])
    for seed in (run_seeds(cfg) if seeds is None else seeds):
        for direction in cfg["adapt"]["directions"]:
            for method in cfg["adapt"]["methods"]:
                for corruption, severity in query_cells(cfg, direction):
                    if corruption != CLEAN or method in clean_methods:
                        yield Run(dataset, model, direction, method, corruption, severity, seed)
                if method in stream_methods:
                    for name in streams(cfg, direction):
                        yield Run(dataset, model, direction, method, name, 0, seed)


def query_set_path(cfg: dict, direction: str, corruption: str, severity: int, seed: int | None = None) -> str:
    """The output of the stage that builds a corrupted query set (a folder for images, a
    manifest for text), drawn for run seed ``seed`` (:func:`draw_seed`)."""
    from .tasks import hook

    task_path = hook(direction, "query_set_path")  # video-audio: clip sets (qshift.va)
    if task_path is not None:
        return task_path(cfg, direction, corruption, severity, seed)
    dataset, draw = cfg["benchmark"], draw_seed(cfg, seed)
    if direction == "cir":  # a corrupted reference image (the i2t set) or modification text (the t2i set)
        direction = "i2t" if cir_side(corruption) == "image" else "t2i"
    if draw is not None:
        return DRAWN["image" if direction == "i2t" else "text"].format(
            dataset=dataset, draw=draw, corruption=corruption, severity=severity)
    pattern = IMAGE_QUERIES if direction == "i2t" else TEXT_QUERIES
    return pattern.format(dataset=dataset, corruption=corruption, severity=severity)


def queries_path(cfg: dict, direction: str, corruption: str, severity: int, seed: int | None = None) -> str:
    """The manifest holding a run's queries (the clean test split for the reference run)."""
    from .tasks import hook

    task_path = hook(direction, "queries_path")  # video-audio: a clip set's clips.json (qshift.va)
    if task_path is not None:
        return task_path(cfg, direction, corruption, severity, seed)
    if corruption == CLEAN:
        return MANIFEST.format(dataset=cfg["benchmark"])
    if is_stream(cfg, direction, corruption):
        return stream_path(cfg, direction, corruption, seed) + ("/manifest.json" if direction in ("i2t", "cir")
                                                                 else "")
    if direction == "cir":
        direction = "i2t" if cir_side(corruption) == "image" else "t2i"
    return query_set_path(cfg, direction, corruption, severity, seed) + ("/manifest.json" if direction == "i2t"
                                                                         else "")


def cir_side(corruption: str) -> str:
    """Which part of a composed query a cell corrupts: ``image`` (the reference) or ``text``."""
    from .corrupt import IMAGE_CORRUPTIONS, TEXT_CORRUPTIONS
    from .errors import UnknownNameError

    if corruption in IMAGE_CORRUPTIONS:
        return "image"
    if corruption in TEXT_CORRUPTIONS:
        return "text"
    raise UnknownNameError("image or text corruption for cir queries", corruption,
                           IMAGE_CORRUPTIONS.names() + TEXT_CORRUPTIONS.names())


def stream_path(cfg: dict, direction: str, stream: str, seed: int | None = None) -> str:
    """A stream's output: a folder (image streams) or a manifest (text streams)."""
    from .tasks import hook

    task_path = hook(direction, "stream_path")  # video-audio: a clip set folder (qshift.va)
    if task_path is not None:
        return task_path(cfg, direction, stream, seed)
    draw = draw_seed(cfg, seed)
    if draw is not None:
        return DRAWN["image-stream" if direction == "i2t" else "text-stream"].format(
            dataset=cfg["benchmark"], draw=draw, stream=stream)
    pattern = STREAM_IMAGE_QUERIES if direction == "i2t" else STREAM_TEXT_QUERIES
    return pattern.format(dataset=cfg["benchmark"], stream=stream)


def dataset_params(cfg: dict) -> dict:
    """The ``datasets`` entry the selected benchmark runs on."""
    from .presets import dataset_cfg

    d = dataset_cfg(cfg)
    return {k: v for k, v in d.items() if k != "prebuilt"}  # prebuilt: the query stages' (qshift.data.prebuilt)


def trains_model(cfg: dict) -> bool:
    """Whether the pretrain stage trains the model (the built-in CLIP saved at MODEL_DIR) or
    only fetches a pretrained one into model.cache_dir and records it."""
    return cfg["model"]["source"] == "local-dir:" + MODEL_DIR.format(model=cfg["model"]["name"])


def model_overrides(cfg: dict) -> str:
    """``--set`` flags that give a stage exactly this model (and nothing about the benchmark)."""
    import shlex

    model = cfg["model"]
    flags = [f"model.{k}={model[k]}" for k in ("name", "source", "cache_dir") if k in model]
    return "".join(f" --set {shlex.quote(flag)}" for flag in flags)


def experiment_name(cfg: dict) -> str:
    return cfg["mlflow"]["experiment"].format(benchmark=cfg["benchmark"])
