"""params.yaml: loading, overrides, validation, and the experiment grid both orchestrators use.

``params.yaml`` is the single source of every parameter. Stage CLIs read it (plus optional
``--set key=value`` overrides); Snakemake reads it as its configfile and turns any
``--config`` overrides into the same ``--set`` flags; DVC reads it as its params file.
The path patterns below are the one definition of where each stage writes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

from .errors import ConfigError, InputError
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
GALLERY = "data/embeddings/{model}/{dataset}/gallery.pt"
RESULT = "results/{dataset}/{model}/{direction}/{method}/{corruption}-s{severity}.json"
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
    "encode_gallery": "logs/encode_gallery/{model}/{dataset}.log",
    "adapt": "logs/adapt/{dataset}/{model}/{direction}/{method}/{corruption}-s{severity}.log",
    "report": "logs/report/{dataset}.log",
}


def load_params(path: str | Path = DEFAULT_PARAMS, overrides: list[str] | None = None) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"params file not found: {path}")
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise InputError(f"params file {path} is not valid YAML: {e}") from None
    if not isinstance(cfg, dict):
        raise InputError(f"params file {path} must hold a mapping at top level")
    return resolve(cfg, overrides)


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
    if not isinstance(node, dict) or parts[-1] not in node:
        valid = ", ".join(sorted(node)) if isinstance(node, dict) else "(not a mapping)"
        raise ConfigError(f"override {item!r}: unknown key {key!r}; valid here: {valid}")
    node[parts[-1]] = parse_value(raw)


def parse_value(raw: str) -> Any:
    """A YAML value, except that ``1e-3`` is a float (YAML 1.1 would read a string)."""
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def diff_overrides(cfg: dict, base: dict, prefix: str = "") -> list[str]:
    """The ``key=value`` overrides that turn ``base`` into ``cfg`` (used by the Snakefile)."""
    out = []
    for k, v in cfg.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            out += diff_overrides(v, base[k], path + ".")
        elif k not in base or base[k] != v:
            out.append(f"{path}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}")
    return out


# model.source schemes (qshift.models LOADERS; kept here so validating params never imports
# the model libraries — tests/test_presets.py checks the two agree)
MODEL_SCHEMES = ("hf-blip", "hf-clip", "local-dir", "open_clip")


def validate(cfg: dict) -> None:
    from . import presets
    from .corrupt import IMAGE_CORRUPTIONS
    from .corrupt.text import validate_text_params
    from .data.karpathy import validate_dataset, validate_download
    from .tta import METHODS

    for key in ("seed", "benchmark", "datasets", "model", "corrupt", "adapt", "methods"):
        if key not in cfg:
            raise ConfigError(f"params: missing top-level key {key!r}")
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
    if cfg["model"].get("preprocess", "native") not in ("native", "reference"):  # qshift.models.reference
        raise ConfigError(f"params: model.preprocess {cfg['model']['preprocess']!r}; valid: native, reference")
    if not isinstance(cfg["model"].get("cache_dir", ""), str):
        raise ConfigError(f"params: model.cache_dir must be a path, got {cfg['model']['cache_dir']!r}")
    image = cfg["corrupt"]["image"]
    workers = image.get("workers", 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ConfigError(f"params: corrupt.image.workers must be an integer >= 0 (0 = all cores), got {workers!r}")
    quality = image.get("jpeg_quality", 95)
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ConfigError(f"params: corrupt.image.jpeg_quality must be an integer in 1..100, got {quality!r}")
    for m in cfg["adapt"]["methods"]:
        METHODS.check(m)
        if m not in cfg["methods"]:
            raise ConfigError(f"params: method {m!r} is listed in adapt.methods but has no entry under 'methods'")
    for m in cfg["adapt"].get("clean_methods", []):
        if m not in cfg["adapt"]["methods"]:
            raise ConfigError(f"params: adapt.clean_methods has {m!r}, which is not in adapt.methods "
                              f"({', '.join(cfg['adapt']['methods'])})")
    if cfg["adapt"].get("order", "seeded") not in ("seeded", "reference"):  # qshift.adapt.ORDERS
        raise ConfigError(f"params: adapt.order {cfg['adapt']['order']!r}; valid: seeded, reference")
    for d in cfg["adapt"]["directions"]:
        if d not in DIRECTIONS:
            raise ConfigError(f"params: adapt.directions has {d!r}; valid: {', '.join(DIRECTIONS)}")
    for name in cfg["corrupt"]["image"]["names"]:
        IMAGE_CORRUPTIONS.check(name)
    validate_text_params(cfg)
    for s in cfg["corrupt"]["image"]["severities"]:
        if s not in range(1, 6):
            raise ConfigError(f"params: image severity {s!r} not in 1..5")
    for m, hp in cfg["methods"].items():
        for d in (hp or {}).get(BY_DIRECTION, {}) or {}:
            if d not in DIRECTIONS:
                raise ConfigError(f"params: methods.{m}.{BY_DIRECTION} has {d!r}; valid: {', '.join(DIRECTIONS)}")
    validate_streams(cfg)


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
    unknown = set(st) - {"methods", "image", "text"}
    if unknown:
        raise ConfigError(f"params: streams has unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                          f"valid: methods, image, text")
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


def streams(cfg: dict, direction: str) -> dict[str, dict]:
    """The direction's stream definitions (``streams.image`` for i2t, ``streams.text`` for t2i)."""
    side = "image" if direction == "i2t" else "text"
    return dict((cfg.get("streams") or {}).get(side) or {})


def is_stream(cfg: dict, direction: str, corruption: str) -> bool:
    return corruption in streams(cfg, direction)


# methods.<name>.by_direction.<direction>: hyperparameters that differ per query modality,
# e.g. METHODS.md's lr 3e-5 for text queries on BLIP (the coco-c/flickr-c presets set it)
BY_DIRECTION = "by_direction"


def method_hparams(cfg: dict, method: str, direction: str | None = None) -> dict:
    hp = copy.deepcopy(cfg["methods"].get(method) or {})
    per = hp.pop(BY_DIRECTION, None) or {}
    if direction is not None:
        hp.update(per.get(direction) or {})
    return hp


@dataclass(frozen=True)
class Run:
    dataset: str
    model: str
    direction: str
    method: str
    corruption: str
    severity: int

    @property
    def key(self) -> dict:
        return {"benchmark": self.dataset, "dataset": self.dataset, "model": self.model,
                "direction": self.direction, "method": self.method, "corruption": self.corruption,
                "severity": self.severity}

    @property
    def result_path(self) -> str:
        return RESULT.format(**self.key)


def query_cells(cfg: dict, direction: str) -> list[tuple[str, int]]:
    """(corruption, severity) cells of a direction, the clean reference first. Text types
    that cannot run here (a model-based type with no model configured) are left out; the
    report lists them as not run."""
    if direction == "i2t":
        side = cfg["corrupt"]["image"]
        names, levels = side["names"], side["severities"]
    else:
        from .corrupt.text import available_text_corruptions

        names, levels = available_text_corruptions(cfg), cfg["corrupt"]["text"]["levels"]
    return [(CLEAN, 0)] + [(c, int(s)) for c in names for s in levels]


def runs(cfg: dict) -> Iterator[Run]:
    """Every run of the grid: each method on each shifted cell, the methods listed in
    ``adapt.clean_methods`` on clean queries, and ``streams.methods`` on each of the direction's
    streams (``corruption`` = the stream's name, ``severity`` 0)."""
    dataset, model = cfg["benchmark"], cfg["model"]["name"]
    clean_methods = set(cfg["adapt"].get("clean_methods", []))
    stream_methods = set((cfg.get("streams") or {}).get("methods") or [])
    for direction in cfg["adapt"]["directions"]:
        for method in cfg["adapt"]["methods"]:
            for corruption, severity in query_cells(cfg, direction):
                if corruption != CLEAN or method in clean_methods:
                    yield Run(dataset, model, direction, method, corruption, severity)
            if method in stream_methods:
                for name in streams(cfg, direction):
                    yield Run(dataset, model, direction, method, name, 0)


def queries_path(cfg: dict, direction: str, corruption: str, severity: int) -> str:
    """The manifest holding a run's queries (the clean test split for the reference run)."""
    dataset = cfg["benchmark"]
    if corruption == CLEAN:
        return MANIFEST.format(dataset=dataset)
    if is_stream(cfg, direction, corruption):
        return stream_path(cfg, direction, corruption) + ("/manifest.json" if direction == "i2t" else "")
    if direction == "i2t":
        return IMAGE_QUERIES.format(dataset=dataset, corruption=corruption, severity=severity) + "/manifest.json"
    return TEXT_QUERIES.format(dataset=dataset, corruption=corruption, severity=severity)


def stream_path(cfg: dict, direction: str, stream: str) -> str:
    """A stream's output: a folder (image streams) or a manifest (text streams)."""
    pattern = STREAM_IMAGE_QUERIES if direction == "i2t" else STREAM_TEXT_QUERIES
    return pattern.format(dataset=cfg["benchmark"], stream=stream)


def dataset_params(cfg: dict) -> dict:
    """The ``datasets`` entry the selected benchmark runs on."""
    from .presets import dataset_cfg

    d = dataset_cfg(cfg) if "benchmarks" in cfg else cfg["datasets"][cfg["benchmark"]]
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
