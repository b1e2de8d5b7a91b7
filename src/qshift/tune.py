"""Honest hyperparameter selection: stage ``tune`` (params ``tune``).

For each method of ``tune.methods`` (within ``adapt.methods``) and each direction, a small grid
— ``tune.lr``, and ``tune.tau`` for the entropy methods (tent, eata, sar, read, deyo) — is
evaluated on the **validation split** of the dataset (``datasets.builtin.n_val``; never the
test split: the gallery is the validation split's own, encoded here by the frozen source model)
under **validation-only corruptions** that the reported grid never uses:

- images: ``gaussian_blur``, ``spatter``, ``saturate`` (imagecorruptions' four extra types minus
  ``speckle_noise``, which COCO-C reports) at ``tune.image.severity``;
- text: ``tune.text.corruptions`` at ``tune.text.level`` — (type, level) cells the reported
  grid does not run (default ``char_insert`` and ``char_delete`` at level 2: the built-in grid
  reports ``ocr`` and ``char_replace`` at level 2; the paper presets report level 7 only).
  Char/word types only (no seq2seq model needed).

Another task brings its own validation split through two hooks (``tune_gallery``, ``tune_queries``;
:mod:`qshift.tasks`): video-audio tunes on its ``val`` clips under ``tune.video`` (v2a: image
corruptions per frame, default ``gaussian_blur``, ``spatter``) and ``tune.audio`` (a2v: READ's
audio types the grid does not report, e.g. ``wind``, ``thunder``), at one severity each.

A reported image type, or a reported (text type, level) cell (``corrupt.*`` or a stream's
domain), in ``tune`` is refused before any work.

The score of a setting is its mean R@1 over the validation corruptions; the best (ties: the
earlier grid point) per method and direction is written to ``config.TUNED``, which the adapt
stage reads. The params' own value is always a candidate, so tuning never does worse on the
validation split than the paper's hyperparameters. All grid points run in one process, model
and validation gallery loaded once. ``tune.enabled: false`` (the paper presets) writes a file
that changes nothing: the adapt stage runs the params' hyperparameters.
"""

from __future__ import annotations

import dataclasses
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np

from .errors import ConfigError
from .method_catalog import registered_methods

ENTROPY_METHODS = ("tent", "eata", "sar", "read", "deyo")
SCHEMA = 1


def validate_tune(cfg: dict) -> None:
    """Errors name the key, the bad value and the valid choices."""
    from .corrupt import IMAGE_CORRUPTIONS, TEXT_CORRUPTIONS

    t = cfg.get("tune")
    if t is None:
        return
    if not isinstance(t, dict):
        raise ConfigError("params: tune must be a mapping (enabled, methods, lr, tau, image, text)")
    if not isinstance(t.get("enabled", False), bool):
        raise ConfigError(f"params: tune.enabled must be true or false, got {t.get('enabled')!r}")
    METHODS = registered_methods()

    for m in t.get("methods") or []:  # methods not in adapt.methods are simply not tuned
        if m not in METHODS.names():
            raise ConfigError(f"params: tune.methods has {m!r}; valid: {', '.join(METHODS.names())}")
    for key in ("lr", "tau"):
        vals = t.get(key) or []
        if not isinstance(vals, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                                                 for v in vals):
            raise ConfigError(f"params: tune.{key} must be a list of positive numbers, got {vals!r}")
    # images: validation-only TYPES (never reported); text: (type, level) CELLS never reported
    reported_img = set(cfg["corrupt"]["image"]["names"])
    reported_txt = {(c, int(lv)) for c in cfg["corrupt"]["text"]["names"] for lv in cfg["corrupt"]["text"]["levels"]}
    for spec in ((cfg.get("streams") or {}).get("image") or {}).values():
        reported_img |= set(spec.get("corruptions", []))
    for spec in ((cfg.get("streams") or {}).get("text") or {}).values():
        reported_txt |= {(c, int(lv)) for c in spec.get("corruptions", []) for lv in spec.get("levels", [])}
    img, txt = t.get("image") or {}, t.get("text") or {}
    for c in img.get("corruptions") or []:
        IMAGE_CORRUPTIONS.check(c)
        if c in reported_img:
            raise ConfigError(f"params: tune.image.corruptions has {c!r}, which the reported grid uses "
                              f"(corrupt.image.names or a stream); tuning on it would select on the test "
                              f"corruptions — use validation-only types, e.g. gaussian_blur, spatter, saturate")
    if img.get("corruptions") and img.get("severity") not in range(1, 6):
        raise ConfigError(f"params: tune.image.severity is {img.get('severity')!r}; valid: 1..5")
    cpi = txt.get("captions_per_image")
    if cpi is not None and (isinstance(cpi, bool) or not isinstance(cpi, int) or cpi < 1):
        raise ConfigError(f"params: tune.text.captions_per_image must be an integer >= 1 or null (all), got {cpi!r}")
    if txt.get("corruptions") and txt.get("level") not in range(1, 8):
        raise ConfigError(f"params: tune.text.level is {txt.get('level')!r}; valid: 1..7")
    for c in txt.get("corruptions") or []:
        TEXT_CORRUPTIONS.check(c)
        if (c, int(txt["level"])) in reported_txt:
            raise ConfigError(f"params: tune.text has {c!r} at level {txt['level']}, a cell the reported grid uses "
                              f"(corrupt.text or a stream); pick a type or level the grid does not report")
    if t.get("text", {}).get("corruptions"):
        from .corrupt.text import TEXT_CORRUPTIONS as T

        for c in t["text"]["corruptions"]:
            if T.get(c).group == "sentence":
                raise ConfigError(f"params: tune.text.corruptions has sentence-level type {c!r}; "
                                  f"use a char or word type")


def enabled(cfg: dict) -> bool:
    return bool((cfg.get("tune") or {}).get("enabled", False))


def grid(cfg: dict, method: str, direction: str) -> list[dict]:
    """The candidate settings of a method: the params' own value first, then lr (x tau)."""
    from .config import method_hparams

    t = cfg["tune"]
    hp = method_hparams(cfg, method, direction)
    axes = {}
    if "lr" in hp and t.get("lr"):
        axes["lr"] = list(t["lr"])
    if method in ENTROPY_METHODS and "tau" in hp and t.get("tau"):
        axes["tau"] = list(t["tau"])
    if not axes:
        return []
    default = {k: hp[k] for k in axes}
    points = [default] + [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]
    unique = []
    for p in points:
        if all(not np.isclose([p[k] for k in axes], [q[k] for k in axes]).all() for q in unique):
            unique.append(p)
    return unique


def _corruptions(cfg: dict, direction: str) -> tuple[list[str], int]:
    side = cfg["tune"].get("image" if direction == "i2t" else "text") or {}
    return list(side.get("corruptions") or []), int(side.get("severity" if direction == "i2t" else "level") or 0)


def corrupt_image_files(dataset: str, ids, paths, corruption: str, severity: int, out: Path) -> list[Path]:
    """Each distinct image of (``ids``, ``paths``) corrupted once into ``out`` (``<id>.jpg``), seeded
    per image as a reported image cell is; one path per entry (an image several queries share
    is written once)."""
    from PIL import Image

    from .corrupt import corrupt_image
    from .io import derive_seed

    out.mkdir(parents=True, exist_ok=True)
    done: dict[int, Path] = {}
    for imgid, src in zip((int(i) for i in ids), paths):
        if imgid not in done:
            with Image.open(src) as pil:
                arr = np.asarray(pil.convert("RGB"))
            img = corrupt_image(corruption, arr, severity, derive_seed(dataset, imgid, corruption, severity))
            done[imgid] = out / f"{imgid}.jpg"
            Image.fromarray(img).save(done[imgid], quality=95)
    return [done[int(i)] for i in ids]


def validation_queries(manifest: Path, direction: str, corruption: str, severity: int, workdir: Path, split=None,
                       captions_per_image: int | None = None):
    """The validation split's queries under one corruption (images in ``workdir``), seeded like
    the reported sets (``derive_seed(dataset, id, corruption, severity)``)."""
    from .corrupt.text import corrupt_texts
    from .data.manifest import load_split, normalize_caption, read_manifest
    from .io import derive_seed

    split = split or load_split(manifest, "val")
    if direction == "i2t":
        paths = corrupt_image_files(split.dataset, split.image_ids, split.image_paths, corruption, severity,
                                    workdir / f"{corruption}-s{severity}")
        return dataclasses.replace(split, image_paths=paths)
    doc = read_manifest(manifest)
    raws = [s["raw"] for im in doc["images"] if im["split"] == "val" for s in im["sentences"]]
    keep = np.arange(len(raws))
    if captions_per_image:  # the first N captions of each image: a cheaper t2i stream
        rank = np.zeros(len(raws), dtype=np.int64)
        for i in range(1, len(raws)):
            rank[i] = rank[i - 1] + 1 if split.txt2img[i] == split.txt2img[i - 1] else 0
        keep = np.flatnonzero(rank < captions_per_image)
    sentids = split.sentids[keep]
    seeds = [derive_seed(split.dataset, int(sid), corruption, severity) for sid in sentids]
    texts = corrupt_texts(corruption, [raws[i] for i in keep], severity, seeds)
    return dataclasses.replace(split, sentids=sentids, txt2img=split.txt2img[keep],
                               captions=[normalize_caption(t) for t in texts])


def tunes(cfg: dict, method: str) -> bool:
    """Whether the tune stage tunes ``method`` (tuning on, and the method in tune.methods and the grid)."""
    return enabled(cfg) and method in (cfg["tune"].get("methods") or []) and method in cfg["adapt"]["methods"]


def run_tune(cfg: dict, model, manifest: str | Path, log=None, progress: bool = False,
             only: list[str] | None = None) -> dict:
    """Evaluate every grid point (of the methods in ``only``, default all); returns the tuned
    document (the stage writes one per method: config.TUNED)."""
    import torch

    from .adapt import run_stream
    from .config import method_hparams
    from .data.manifest import load_split
    from .gallery import encode_all
    from .tasks import cfg_task, hook

    validate_tune(cfg)
    doc = {"schema": SCHEMA, "enabled": enabled(cfg), "split": "val", "best": {}, "table": [], "seconds": 0.0}
    if not doc["enabled"] or (only is not None and not any(tunes(cfg, m) for m in only)):
        return doc
    t0 = time.perf_counter()
    manifest = Path(manifest)
    ad = cfg["adapt"]
    task_gallery = hook(cfg_task(cfg).name, "tune_gallery")  # another task's validation split (video-audio)
    if task_gallery is not None:
        gallery, info = task_gallery(cfg, model, progress)
        split = None
    else:
        split = load_split(manifest, "val")
        with torch.no_grad():
            image = encode_all(model, "image", split, ad["batch_size"], desc="val gallery images")
            text = encode_all(model, "text", split, ad["batch_size"], desc="val gallery captions")
        gallery = {"image": image, "text": text, "image_owner": torch.as_tensor(split.image_owner),
                   "text_owner": torch.as_tensor(split.image_owner[split.txt2img])}
        if split.owner_kind != "image":
            gallery["owner"] = split.owner_kind
        cpi = (cfg["tune"].get("text") or {}).get("captions_per_image")
        info = dict(n_images=split.n_images, n_captions=split.n_captions, corruptions={},
                    t2i_queries=split.n_images * cpi if cpi else split.n_captions)
    methods = [m for m in cfg["tune"].get("methods") or [] if tunes(cfg, m) and (only is None or m in only)]
    doc.update(info)
    doc.setdefault("corruptions", {})
    with tempfile.TemporaryDirectory(prefix="qshift-tune-") as tmp:
        for direction in ad["directions"]:
            task_queries = hook(direction, "tune_queries")  # {cell label: queries}, e.g. spatter-s3
            if task_queries is not None:
                sets = task_queries(cfg, direction, Path(tmp), progress)
                labels = list(sets)
            else:
                names, sev = _corruptions(cfg, direction)
                labels = [f"{c}-s{sev}" for c in names]
            if not labels:
                continue
            doc["corruptions"][direction] = labels
            if task_queries is None:
                cpi = (cfg["tune"].get("text") or {}).get("captions_per_image")
                sets = {c: validation_queries(manifest, direction, c, sev, Path(tmp), split, cpi) for c in names}
            for method in methods:
                points = grid(cfg, method, direction)
                scores = []
                for p in points:
                    hp = {**method_hparams(cfg, method, direction), **p}
                    r1 = {c: run_stream(model, method, hp, direction, q, gallery, batch_size=ad["batch_size"],
                                        steps=ad["steps"], seed=cfg["seed"], progress=progress)["metrics"]["R@1"]
                          for c, q in sets.items()}
                    mean = sum(r1.values()) / len(r1)
                    scores.append(mean)
                    doc["table"].append({"direction": direction, "method": method, **p, "r1": r1, "mean_r1": mean,
                                         "default": p == points[0]})
                    if log:
                        log.info(f"tune {direction} {method} {p}: val R@1 {mean:.2f}")
                if points:
                    best = int(np.argmax(scores))  # first maximum: the earlier grid point
                    doc["best"].setdefault(method, {})[direction] = {**points[best], "mean_r1": scores[best],
                                                                     "default_r1": scores[0]}
    doc["seconds"] = time.perf_counter() - t0
    return doc


def tuned_hparams(cfg: dict, method: str, direction: str, path: str | Path | None) -> tuple[dict, dict]:
    """(hyperparameters for an adapt run, the tuned values applied): the params' own, with the
    tuned values over them when tuning is on and the file has them for (method, direction)."""
    from .config import method_hparams
    from .io import read_json

    hp = method_hparams(cfg, method, direction)
    if not enabled(cfg) or path is None:
        return hp, {}
    doc = read_json(path, "tuned hyperparameters (stage tune)")
    best = ((doc.get("best") or {}).get(method) or {}).get(direction) or {}
    applied = {k: v for k, v in best.items() if k in hp}
    hp.update(applied)
    return hp, applied


def merge_docs(docs: list[dict]) -> dict | None:
    """The per-method tuned documents as one (the report's tuning table)."""
    docs = [d for d in docs if isinstance(d, dict)]
    if not docs:
        return None
    tuned = [d for d in docs if d.get("table")] or docs
    out = {**tuned[0], "best": {}, "table": [], "seconds": 0.0}
    for d in docs:
        out["best"].update(d.get("best") or {})
        out["table"] += d.get("table") or []
        out["seconds"] += d.get("seconds") or 0.0
    out["enabled"] = any(d.get("enabled") for d in docs)
    return out


TUNING_COLUMNS = ["Direction", "Method", "Chosen", "Val R@1 (chosen)", "Val R@1 (params' value)"]


def tuning_summary(doc: dict) -> tuple[str, list[list[str]] | None]:
    """The report's tuning section as data: (its sentence, rows under :data:`TUNING_COLUMNS`;
    None when tuning is off). The sentence is Markdown inline text."""
    if not doc.get("enabled"):
        return "Hyperparameters: the params' values (tuning off: `tune.enabled: false`).", None
    corruptions = "; ".join(f"{d}: " + ", ".join(v) for d, v in doc.get("corruptions", {}).items())
    split = doc.get("split_desc") or (f"{doc.get('n_images')} images / {doc.get('n_captions')} captions; "
                                      f"t2i tuning queries: {doc.get('t2i_queries', doc.get('n_captions'))}")
    text = (f"Selected on the **validation split** ({split}) "
            f"under validation-only corruptions ({corruptions}), "
            f"never on the test split or a reported corruption; mean validation R@1 over those corruptions "
            f"(tuning took {doc.get('seconds', 0):.0f} s).")
    rows = []
    for method, per in doc.get("best", {}).items():
        for direction, b in per.items():
            chosen = ", ".join(f"{k} {v:g}" for k, v in b.items() if k not in ("mean_r1", "default_r1"))
            rows.append([direction, method, chosen, f"{b['mean_r1']:.1f}", f"{b['default_r1']:.1f}"])
    return text, rows
