"""Build corrupted query sets from a dataset's test split, in the dataset's manifest format.

Corruptions touch queries only: image corruptions produce a folder of corrupted test images
(captions unchanged, used as the i2t query set); text corruptions produce a manifest whose
captions are corrupted and whose images are the clean ones (the t2i query set).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from ..data.manifest import image_root, read_manifest, write_manifest
from ..errors import InputError
from ..io import atomic_dir, derive_seed
from .image import corrupt_image
from .text import TEXT_CORRUPTIONS, corrupt_text


def _test_images(doc: dict) -> list[dict]:
    return [im for im in doc["images"] if im["split"] == "test"]


def build_image_queries(manifest: str | Path, out_dir: str | Path, corruption: str, severity: int, seed: int,
                        quality: int = 95, progress: bool = True) -> int:
    from .image import IMAGE_CORRUPTIONS

    IMAGE_CORRUPTIONS.check(corruption)
    manifest = Path(manifest)
    doc = read_manifest(manifest)
    root = image_root(doc, manifest)
    dataset = doc.get("dataset", manifest.parent.name)
    images = _test_images(doc)
    if not images:
        raise InputError(f"manifest {manifest} has no test split to corrupt")
    entries = []
    with atomic_dir(out_dir) as tmp:
        for im in tqdm(images, desc=f"{corruption} s{severity}", unit="img", disable=not progress, leave=False):
            src = root / im.get("filepath", "") / im["filename"]
            try:
                with Image.open(src) as pil:
                    arr = np.asarray(pil.convert("RGB"))
            except (OSError, UnidentifiedImageError) as e:
                raise InputError(f"cannot read image {src}: {e}") from None
            out = corrupt_image(corruption, arr, severity, derive_seed(dataset, im["imgid"], corruption, severity))
            name = f"{Path(im['filename']).stem}.jpg"
            Image.fromarray(out).save(tmp / name, quality=quality)
            entries.append({**im, "filepath": "", "filename": name})
        write_manifest(tmp / "manifest.json", dataset, entries, image_root=".",
                       meta={"source_manifest": os.path.relpath(manifest, out_dir), "corruption": corruption,
                             "severity": severity, "seed": seed, "jpeg_quality": quality, "modality": "image"})
    return len(entries)


def build_text_queries(manifest: str | Path, out: str | Path, corruption: str, level: int, seed: int,
                       progress: bool = True) -> int:
    TEXT_CORRUPTIONS.check(corruption)
    manifest, out = Path(manifest), Path(out)
    doc = read_manifest(manifest)
    dataset = doc.get("dataset", manifest.parent.name)
    images = _test_images(doc)
    if not images:
        raise InputError(f"manifest {manifest} has no test split to corrupt")
    n = 0
    entries = []
    for im in tqdm(images, desc=f"{corruption} l{level}", unit="img", disable=not progress, leave=False):
        sents = []
        for s in im["sentences"]:
            raw = corrupt_text(corruption, s["raw"], level, derive_seed(dataset, s["sentid"], corruption, level))
            sents.append({**s, "raw": raw, "tokens": raw.split(), "clean": s["raw"]})
            n += 1
        entries.append({**im, "sentences": sents})
    # images stay the clean ones: point image_root at the source dataset's image folder
    root = os.path.relpath(image_root(doc, manifest), out.parent)
    write_manifest(out, dataset, entries, image_root=root,
                   meta={"source_manifest": os.path.relpath(manifest, out.parent), "corruption": corruption,
                         "level": level, "word_probability": 0.05 * level, "seed": seed, "modality": "text"})
    return n
