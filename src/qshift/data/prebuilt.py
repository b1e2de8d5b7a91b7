"""The TCR authors' prebuilt COCO-C / Flickr-C (``datasets.<name>.prebuilt: <folder>``).

With ``prebuilt`` set, the query sets are read from the authors' files instead of being
generated; the outputs (manifest format, paths, results layout) are the ones the corruption
stages write. The layout is what the reference's data loaders and configs read
(github XLearning-SCU/2025-ICLR-TCR, configs/QS/*, data/coco_dataset.py, data/flickr30k_dataset.py):

- image queries: ``<folder>/coco-IP/COCO_IP_<corruption>_<severity>/`` (Flickr30k:
  ``flickr-IP/Flickr30K_IP_<corruption>_<severity>/``), holding the test images under the
  annotation's relative paths (the loader opens ``image_root/ann['image']``); matched here by
  file name, anywhere below that folder;
- caption queries: ``<folder>/coco-TP/annotation_<Aug>/<level>/coco_karpathy_test.json``
  (Flickr30k: ``flickr-TP/.../flickr30k_test.json``), BLIP's annotation format (a list of
  ``{"image", "caption": [...]}``, a caption possibly a list of strings, which the reference's
  ``pre_caption`` joins with spaces). ``<Aug>``: :data:`TEXT_FOLDERS`. The authors made the
  sentence-level types (formal, casual, passive, active, back_trans) once, as level ``1``:
  any level of those reads folder ``1`` (their level never changes them; recorded in the
  manifest as ``prebuilt_level``).

Errors name the path: a missing corruption folder or caption file, a folder whose image count
is not the test split's, a test image missing from it, a caption file whose images or caption
counts differ from the test split.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InputError

# QShift's text corruption -> the authors' annotation folder name (annotation_<name>)
TEXT_FOLDERS = {"ocr": "OcrAug", "char_insert": "RandomCharAug_insert", "char_replace": "RandomCharAug_substitute",
                "char_swap": "RandomCharAug_swap", "char_delete": "RandomCharAug_delete", "synonym_replace": "sr",
                "random_insert": "ri", "random_swap": "rs", "random_delete": "rd", "insert_punct": "ip",
                "formal": "formal", "casual": "casual", "passive": "passive", "active": "active",
                "backtrans": "back_trans"}
SENTENCE_LEVEL_ONLY = ("formal", "casual", "passive", "active", "backtrans")
# dataset kind -> (image folder, image prefix, text folder, caption file)
LAYOUTS = {"coco": ("coco-IP", "COCO_IP", "coco-TP", "coco_karpathy_test.json"),
           "flickr30k": ("flickr-IP", "Flickr30K_IP", "flickr-TP", "flickr30k_test.json")}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def prebuilt_dir(cfg: dict) -> Path | None:
    """The selected dataset's ``prebuilt`` folder, or None."""
    from ..presets import dataset_cfg, dataset_name

    if "benchmarks" not in cfg:
        d, name = cfg.get("datasets", {}).get(cfg.get("benchmark"), {}), cfg.get("benchmark")
    else:
        d, name = dataset_cfg(cfg), dataset_name(cfg)
    value = (d or {}).get("prebuilt")
    if value is None:
        return None
    if name not in LAYOUTS:
        raise ConfigError(f"params: datasets.{name}.prebuilt is set, but the authors' prebuilt sets exist for "
                          f"{', '.join(LAYOUTS)} only")
    return Path(str(value)).expanduser()


def _layout(name: str) -> tuple[str, str, str, str]:
    key = "flickr30k" if "flickr" in name.lower() else "coco"
    return LAYOUTS[key]


def image_folder(root: Path, dataset: str, corruption: str, severity: int) -> Path:
    ip, prefix, _, _ = _layout(dataset)
    return root / ip / f"{prefix}_{corruption}_{severity}"


def caption_file(root: Path, dataset: str, corruption: str, level: int) -> tuple[Path, int]:
    _, _, tp, fname = _layout(dataset)
    lv = 1 if corruption in SENTENCE_LEVEL_ONLY else int(level)
    return root / tp / f"annotation_{TEXT_FOLDERS[corruption]}" / str(lv) / fname, lv


def _check_root(root: Path, dataset: str) -> None:
    if not root.is_dir():
        raise InputError(f"prebuilt folder not found: {root} (datasets.{dataset}.prebuilt)")


def import_image_queries(manifest: str | Path, out_dir: str | Path, corruption: str, severity: int,
                         root: str | Path, seed: int | None = None) -> int:
    """The authors' corrupted test images as a query folder (hard links where possible)."""
    from ..io import atomic_dir
    from .karpathy import _link_or_copy
    from .manifest import read_manifest, write_manifest

    manifest, root = Path(manifest), Path(root)
    doc = read_manifest(manifest)
    dataset = doc.get("dataset", manifest.parent.name)
    _check_root(root, dataset)
    folder = image_folder(root, dataset, corruption, severity)
    if not folder.is_dir():
        raise InputError(f"prebuilt corruption folder not found: {folder} (datasets.{dataset}.prebuilt {root}; "
                         f"expected the authors' layout {folder.parent.name}/{folder.name}/)")
    files: dict[str, Path] = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            if p.name in files:
                raise InputError(f"prebuilt folder {folder} holds two images named {p.name}: {files[p.name]} and {p}")
            files[p.name] = p
    images = [im for im in doc["images"] if im["split"] == "test"]
    if len(files) != len(images):
        raise InputError(f"prebuilt folder {folder} has {len(files)} images, the test split {len(images)} "
                         f"(wrong image count: not this dataset's test split?)")
    missing = [im["filename"] for im in images if im["filename"] not in files]
    if missing:
        raise InputError(f"prebuilt folder {folder} lacks {len(missing)} test images, e.g. {missing[0]}")
    meta = {"source_manifest": os.path.relpath(manifest, out_dir), "corruption": corruption, "severity": severity,
            "seed": seed, "modality": "image", "prebuilt": str(folder)}
    entries = []
    with atomic_dir(out_dir) as tmp:
        for im in images:
            _link_or_copy(files[im["filename"]], tmp / im["filename"])
            entries.append({**im, "filepath": "", "filename": im["filename"]})
        write_manifest(tmp / "manifest.json", dataset, entries, image_root=".", meta=meta)
    return len(entries)


def _caption_text(value: Any, path: Path, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return " ".join(value)  # nlpaug returned a list; the reference's pre_caption joins it
    raise InputError(f"caption file {path}: {where} is neither a string nor a list of strings: {value!r}")


def import_text_queries(manifest: str | Path, out: str | Path, corruption: str, level: int, root: str | Path,
                        seed: int | None = None) -> int:
    """The authors' corrupted test captions as a caption query manifest."""
    from .manifest import image_root, read_manifest, write_manifest

    manifest, out, root = Path(manifest), Path(out), Path(root)
    doc = read_manifest(manifest)
    dataset = doc.get("dataset", manifest.parent.name)
    _check_root(root, dataset)
    if corruption not in TEXT_FOLDERS:
        raise ConfigError(f"text corruption {corruption!r} has no prebuilt set; valid: {', '.join(TEXT_FOLDERS)}")
    path, lv = caption_file(root, dataset, corruption, level)
    if not path.is_file():
        raise InputError(f"prebuilt caption file not found: {path} (datasets.{dataset}.prebuilt {root})")
    try:
        ann = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"prebuilt caption file {path} is not readable JSON: {e}") from None
    images = [im for im in doc["images"] if im["split"] == "test"]
    if not isinstance(ann, list) or len(ann) != len(images):
        n = len(ann) if isinstance(ann, list) else type(ann).__name__
        raise InputError(f"caption file {path} does not match the test split: {n} entries, the test split has "
                         f"{len(images)} images")
    entries = []
    for i, (im, a) in enumerate(zip(images, ann)):
        name = Path(str(a.get("image", "")) if isinstance(a, dict) else "").name
        if name != im["filename"]:
            raise InputError(f"caption file {path} does not match the test split: entry {i} is image {name!r}, "
                             f"the test split's image {i} is {im['filename']!r}")
        caps = a.get("caption")
        if not isinstance(caps, list) or len(caps) < len(im["sentences"]):
            raise InputError(f"caption file {path} does not match the test split: entry {i} ({name}) has "
                             f"{len(caps) if isinstance(caps, list) else 0} captions, the test split "
                             f"{len(im['sentences'])}")
        sents = []
        for j, s in enumerate(im["sentences"]):
            raw = _caption_text(caps[j], path, f"entry {i} caption {j}")
            sents.append({**s, "raw": raw, "tokens": raw.split(), "clean": s["raw"]})
        entries.append({**im, "sentences": sents})
    meta = {"source_manifest": os.path.relpath(manifest, out.parent), "corruption": corruption, "level": level,
            "word_probability": 0.05 * level, "seed": seed, "modality": "text", "prebuilt": str(path),
            "prebuilt_level": lv}
    root_rel = os.path.relpath(image_root(doc, manifest), out.parent)
    write_manifest(out, dataset, entries, image_root=root_rel, meta=meta)
    return sum(len(e["sentences"]) for e in entries)
