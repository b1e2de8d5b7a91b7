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
parameter (``${benchmarks.${benchmark}}`` is not supported), so under ``dvc repro`` a preset
that changes a key ``dvc.yaml`` interpolates is refused with the exact lines to copy into the
file's top level (:func:`dvc_guard`). Snakemake applies presets itself.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import yaml

from .errors import ConfigError

SETTINGS = ("query-shift", "query-gallery-shift")
QUERY_SHIFT, QUERY_GALLERY_SHIFT = SETTINGS
# keys of a preset that are not params overlays but describe the benchmark itself
META_KEYS = ("dataset", "setting", "description")
# keys dvc.yaml interpolates (paths and matrices): DVC cannot follow a preset that changes them
DVC_KEYS = ("model.name", "corrupt.image.names", "corrupt.image.severities", "corrupt.text.names",
            "corrupt.text.levels", "adapt.methods", "adapt.clean_methods", "adapt.directions", "seeds")


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
    """The ``datasets`` entry the selected benchmark runs on."""
    return preset(cfg).get("dataset", cfg["benchmark"])


def dataset_cfg(cfg: dict) -> dict:
    name = dataset_name(cfg)
    if name not in cfg.get("datasets", {}):
        raise ConfigError(f"params: benchmarks.{cfg['benchmark']}.dataset is {name!r}, which has no entry under "
                          f"'datasets'; valid: {', '.join(cfg.get('datasets', {}))}")
    return cfg["datasets"][name]


def setting(cfg: dict) -> str:
    value = preset(cfg).get("setting", QUERY_SHIFT)
    if value not in SETTINGS:
        raise ConfigError(f"params: benchmarks.{cfg['benchmark']}.setting is {value!r}; valid: {', '.join(SETTINGS)}")
    return value


def get_dotted(cfg: dict, dotted: str) -> Any:
    """``cfg``'s value at a dotted key path (``adapt.batch_size``); ``None`` where it is absent."""
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def dvc_guard(raw: dict, resolved: dict, environ: dict | None = None) -> None:
    """Refuse to run a DVC stage whose DAG (read literally from params.yaml) disagrees with
    the resolved params — the stage would compute something the DAG does not describe — or
    lists a text type that cannot run (the matrix cannot skip it)."""
    environ = os.environ if environ is None else environ
    if "DVC_STAGE" not in environ:
        return
    from .corrupt.text import not_run_types

    from .config import draw_seed, run_seeds
    from .tasks import is_cir

    if is_cir(resolved):
        raise ConfigError(f"benchmark {resolved.get('benchmark')!r} is a composed image retrieval (cir) benchmark: "
                          f"dvc.yaml holds the image-text stages only (its stage list cannot depend on the "
                          f"benchmark); run it with Snakemake: snakemake --cores 2 --config "
                          f"benchmark={resolved.get('benchmark')}")
    from .tasks import cfg_task

    if cfg_task(resolved).name == "video-audio":
        raise ConfigError(f"benchmark {resolved.get('benchmark')!r} is a video-audio retrieval benchmark: dvc.yaml "
                          f"holds the image-text stages only (its stage list cannot depend on the benchmark); run "
                          f"it with Snakemake: snakemake --cores 2 --config benchmark={resolved.get('benchmark')}")
    if resolved.get("seed_corruptions") and any(draw_seed(resolved, s) is not None for s in run_seeds(resolved)):
        raise ConfigError("seed_corruptions: true needs query sets drawn per run seed, which dvc.yaml (a fixed "
                          "stage list) has no stages for; run the pipeline with Snakemake (`snakemake --cores 2`), "
                          "or set seed_corruptions: false under DVC")
    skipped = not_run_types(resolved)  # dvc.yaml's matrix runs every listed text type
    if skipped:
        raise ConfigError("dvc.yaml runs every name in corrupt.text.names, but these cannot run: "
                          + "; ".join(f"{n}: {why}" for n, why in skipped.items())
                          + ". Configure their models or remove them from corrupt.text.names "
                            "(Snakemake leaves them out and the report lists them as not run).")
    diffs = [(k, get_dotted(raw, k), get_dotted(resolved, k)) for k in DVC_KEYS
             if get_dotted(raw, k) != get_dotted(resolved, k)]
    if not diffs:
        return
    lines = "\n".join(f"  {k}: {yaml.safe_dump(new, default_flow_style=True).strip().removesuffix('...').strip()}"
                      f"   # now {yaml.safe_dump(old, default_flow_style=True).strip().removesuffix('...').strip()}"
                      for k, old, new in diffs)
    raise ConfigError(
        f"benchmark {resolved.get('benchmark')!r} changes keys that dvc.yaml reads literally, and DVC's templating "
        f"cannot select them by the 'benchmark' switch. Set them at the top level of params.yaml (or run the "
        f"pipeline with `snakemake --config benchmark={resolved.get('benchmark')}`, which applies presets):\n{lines}")
