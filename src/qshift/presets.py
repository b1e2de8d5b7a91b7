"""Benchmark presets: the one switch that moves the whole pipeline to another benchmark.

``params.yaml`` has ``benchmark: NAME`` and a ``benchmarks`` mapping. Each entry names its
dataset (an entry of ``datasets``), its *setting* and whatever else it changes (model,
corruption grid, methods on clean queries ...)::

    benchmarks:
      builtin: {dataset: builtin, setting: query-shift}
      coco-c:
        dataset: coco
        setting: query-shift
        model: {name: blip-itm-base-coco, source: "hf-blip:Salesforce/blip-itm-base-coco"}
        corrupt: {image: {severities: [5]}}

Resolution order (:func:`resolve`): the file's keys, then the selected entry deep-merged
over them (mappings merge, lists and scalars replace), then ``--set``/``--config``
overrides. So ``benchmark: coco-c`` in the file or ``snakemake --config benchmark=coco-c``
is the whole switch, and any single value can still be overridden on top.

Settings:

- ``query-shift`` — queries corrupted (the corruption grid), gallery clean;
- ``query-gallery-shift`` — the dataset itself is the new domain: queries and gallery are
  both uncorrupted samples of it, so every method runs on the clean cell only (the paper's
  QGS table).

DVC's templating reads ``params.yaml`` literally and cannot index a mapping by another
parameter (``${benchmarks.${benchmark}}`` is not supported), so ``dvc.yaml`` is rendered for the
selected benchmark (``python -m qshift.pipeline dvc``: its stages, and the preset's values written
out where the file's own keys do not hold them); a DVC stage refuses to run while dvc.yaml was
rendered for other params (:func:`dvc_guard`). Snakemake applies presets itself.
"""

from __future__ import annotations

import copy
import os
from typing import Any

from .errors import ConfigError

SETTINGS = ("query-shift", "query-gallery-shift")
QUERY_SHIFT, QUERY_GALLERY_SHIFT = SETTINGS
# keys of a preset that are not params overlays but describe the benchmark itself
META_KEYS = ("dataset", "setting", "description")


def deep_merge(base: dict, overlay: dict) -> dict:
    """``overlay`` over ``base``: mappings merge recursively, anything else replaces."""
    out = copy.deepcopy(base)
    for k, v in overlay.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def preset(cfg: dict, name: str | None = None) -> dict:
    """The ``benchmarks`` entry of ``name`` (default: the selected benchmark)."""
    name = cfg.get("benchmark") if name is None else name
    table = cfg.get("benchmarks")
    if not isinstance(table, dict) or not table:
        raise ConfigError("params: missing the 'benchmarks' mapping (one entry per benchmark the "
                          "'benchmark' switch can select)")
    if name not in table:
        raise ConfigError(f"params: benchmark {name!r} has no entry under 'benchmarks'; valid: "
                          f"{', '.join(table)}")
    entry = table[name] or {}
    if not isinstance(entry, dict):
        raise ConfigError(f"params: benchmarks.{name} must be a mapping, got {type(entry).__name__}")
    return entry


def overlay_of(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if k not in META_KEYS}


def apply_preset(cfg: dict) -> dict:
    """``cfg`` with the selected benchmark's entry merged over it."""
    return deep_merge(cfg, overlay_of(preset(cfg)))


def dataset_name(cfg: dict) -> str:
    """The ``datasets`` entry the selected benchmark runs on (a params file without a
    ``benchmarks`` table names it by the benchmark switch itself)."""
    if "benchmarks" not in cfg:
        return cfg["benchmark"]
    return preset(cfg).get("dataset", cfg["benchmark"])


def dataset_cfg(cfg: dict) -> dict:
    name = dataset_name(cfg)
    if name not in cfg.get("datasets", {}):
        key = f"benchmarks.{cfg['benchmark']}.dataset" if "benchmarks" in cfg else "benchmark"
        raise ConfigError(f"params: {key} is {name!r}, which has no entry under "
                          f"'datasets'; valid: {', '.join(cfg.get('datasets', {}))}")
    return cfg["datasets"][name]


def setting(cfg: dict) -> str:
    value = preset(cfg).get("setting", QUERY_SHIFT)
    if value not in SETTINGS:
        raise ConfigError(f"params: benchmarks.{cfg['benchmark']}.setting is {value!r}; valid: {', '.join(SETTINGS)}")
    return value


MISSING = object()  # lookup's default: tells an absent key from a null value


def lookup(cfg: dict, dotted: str, default: Any = MISSING) -> Any:
    """``cfg``'s value at a dotted key path (``adapt.batch_size``); ``default`` where it is absent."""
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def get_dotted(cfg: dict, dotted: str) -> Any:
    """``cfg``'s value at a dotted key path; ``None`` where it is absent."""
    return lookup(cfg, dotted, None)


def dvc_guard(raw: dict, resolved: dict, environ: dict | None = None) -> None:
    """Refuse to run a DVC stage whose dvc.yaml was rendered for other params (another benchmark:
    the stage list and the values DVC cannot read from the file differ; ``python -m
    qshift.pipeline dvc`` renders it anew)."""
    environ = os.environ if environ is None else environ
    if "DVC_STAGE" not in environ:
        return
    from pathlib import Path

    from .pipeline import DVC_FILE, stale_dvc

    why = stale_dvc(raw, Path(environ.get("DVC_ROOT") or ".") / DVC_FILE)
    if why:
        raise ConfigError(f"{DVC_FILE} is stale: {why}. Render it for params.yaml (benchmark {resolved.get('benchmark')!r}) with "
                          f"`python -m qshift.pipeline dvc`, then run `dvc repro` again")
