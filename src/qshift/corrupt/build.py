"""Build corrupted query sets from a dataset's test split, in the dataset's manifest format.

Corruptions touch queries only: image corruptions produce a folder of corrupted test images
(captions unchanged, used as the i2t query set); text corruptions produce a manifest whose
captions are corrupted and whose images are the clean ones (the t2i query set).

Image queries fan out at two levels. Across jobs: one job per (corruption, severity), and
for big datasets optionally per shard (``shard=(i, n)`` builds every n-th test image from the
i-th into its own folder, ``merge_image_shards`` joins the n folders). Inside a job: a process
pool of ``workers`` over images. Each image's seed is derived from (dataset, image id,
corruption, severity) only, so serial, pooled and sharded builds write identical bytes.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError
from ..progress import tqdm

from ..data.manifest import image_root, read_manifest, write_manifest
from ..errors import ConfigError, InputError
from ..faults import point as fault_point
from ..io import atomic_dir, query_seed
from ..runtime import die_with_parent
from .image import corrupt_image
from .text import TEXT_CORRUPTIONS

log = logging.getLogger("qshift.corrupt")


def _test_images(doc: dict) -> list[dict]:
    return [im for im in doc["images"] if im["split"] == "test"]


# -- image queries ---------------------------------------------------------------------------

@dataclass(frozen=True)
class _ImageTask:
    src: str
    dst: str
    corruption: str
    severity: int
    seed: int
    quality: int
    implementation: str = "imagecorruptions"
    options: tuple = ()  # mm_robustness: its resolved options as sorted (key, value) pairs


def _corrupt_file_mm(task: _ImageTask) -> None:
    """The reference's path: cv2.imread (BGR), the function, cv2.imwrite (JPEG ``quality``)."""
    import cv2

    from .mm_robustness import corrupt_bgr

    bgr = cv2.imread(task.src, cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputError(f"cannot read image {task.src} (OpenCV could not decode it)")
    try:
        out = corrupt_bgr(task.corruption, bgr, task.severity, task.seed, dict(task.options))
    except InputError as e:
        raise InputError(f"image {task.src}: {e}") from None
    if not cv2.imwrite(task.dst, out, [cv2.IMWRITE_JPEG_QUALITY, task.quality]):
        raise InputError(f"cannot write {task.dst}")


def _corrupt_file(task: _ImageTask) -> None:
    """Read, corrupt and save one image (runs in a pool worker or in-process)."""
    if task.implementation == "mm_robustness":
        return _corrupt_file_mm(task)
    try:
        with Image.open(task.src) as pil:
            arr = np.asarray(pil.convert("RGB"))  # gray/palette/RGBA/CMYK files -> RGB (alpha dropped)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
        raise InputError(f"cannot read image {task.src}: {e}") from None
    try:
        out = corrupt_image(task.corruption, arr, task.severity, task.seed)
    except InputError as e:
        raise InputError(f"image {task.src}: {e}") from None
    Image.fromarray(out).save(task.dst, format="JPEG", quality=task.quality)


def _init_worker(parent: int | None = None) -> None:
    """One thread per worker (the pool is the parallelism), glass_blur's kernel loaded, and
    the worker tied to its parent's life."""
    import cv2

    from .image import _library

    if parent is not None:
        die_with_parent(parent)
    cv2.setNumThreads(1)
    _library()


def resolve_workers(workers: int) -> int:
    """``corrupt.image.workers``: a positive count, or 0 for every core this job may use."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ConfigError(f"params: corrupt.image.workers must be an integer >= 0 (0 = all cores), got {workers!r}")
    if workers == 0:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return workers


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` (0 <= i < n) -> (i, n)."""
    i, sep, n = str(text).partition("/")
    try:
        shard = (int(i), int(n))
    except ValueError:
        shard = None
    if not sep or shard is None or not 0 <= shard[0] < shard[1]:
        raise ConfigError(f"shard {text!r} must look like i/n with 0 <= i < n, e.g. 0/4")
    return shard


def shard_dir(out_dir: str | Path, i: int, n: int) -> Path:
    """Where shard i of n of a query folder is built: ``<out_dir>.shards/<i>-of-<n>``."""
    return Path(f"{out_dir}.shards") / f"{i}-of-{n}"


def _output_names(images: Sequence[dict]) -> list[str]:
    """``<stem>.jpg``; if two test images share a stem, every name gets its image id as prefix."""
    stems = [Path(im["filename"]).stem for im in images]
    if len(set(stems)) == len(stems):
        return [f"{s}.jpg" for s in stems]
    return [f"{im['imgid']}-{s}.jpg" for im, s in zip(images, stems)]


def run_image_tasks(tasks: Sequence[_ImageTask], workers: int = 1, desc: str = "", progress: bool = True) -> None:
    """Run tasks serially (workers == 1) or on a spawn-started process pool; stops at the first error."""
    workers = min(resolve_workers(workers), max(1, len(tasks)))
    bar = tqdm(total=len(tasks), desc=desc, unit="img", disable=not progress, leave=False)
    try:
        if workers == 1:
            for task in tasks:
                _corrupt_file(task)
                bar.update()
            return
        import multiprocessing as mp

        # spawn, not fork: the parent may hold threads (torch, OpenMP, tqdm) that fork would copy mid-state
        pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                   initargs=(os.getpid(),))
        try:
            chunk = max(1, min(16, len(tasks) // (workers * 8)))
            for i, _ in enumerate(pool.map(_corrupt_file, tasks, chunksize=chunk)):
                bar.update()
                if i == 0:
                    fault_point("corrupt_images.pool_running")
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()


def build_image_queries(manifest: str | Path, out_dir: str | Path, corruption: str, severity: int, seed: int,
                        quality: int = 95, progress: bool = True, workers: int = 1,
                        shard: tuple[int, int] | None = None, implementation: str = "imagecorruptions",
                        mm_options: dict | None = None, draw: int | None = None) -> int:
    """Corrupt the test images of ``manifest`` into ``out_dir`` (JPEG ``quality`` + manifest.json).

    With ``shard=(i, n)`` only test images i, i+n, i+2n, ... are built (into ``out_dir``, which
    should be ``shard_dir(final, i, n)``); ``merge_image_shards`` then assembles the final
    folder, byte-identical to an unsharded build. ``seed`` is recorded as provenance; each
    image is seeded from (dataset, image id, corruption, severity) and, for a set drawn for
    another run seed (``draw``, params seed_corruptions), that seed (:func:`qshift.io.query_seed`).
    ``implementation`` / ``mm_options``: corrupt.image.implementation and corrupt.image.mm_robustness.
    """
    from . import mm_robustness
    from .image import IMAGE_CORRUPTIONS, check_implementation

    IMAGE_CORRUPTIONS.check(corruption)
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 1 <= severity <= 5:
        raise ConfigError(f"image corruption severity must be an integer in 1..5, got {severity!r}")
    check_implementation({"implementation": implementation, "mm_robustness": mm_options})
    workers = resolve_workers(workers)  # a bad value fails before any work
    if not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ConfigError(f"params: corrupt.image.jpeg_quality must be an integer in 1..100, got {quality!r}")
    manifest = Path(manifest)
    doc = read_manifest(manifest)
    root = image_root(doc, manifest)
    dataset = doc.get("dataset", manifest.parent.name)
    images = _test_images(doc)
    if not images:
        raise InputError(f"manifest {manifest} has no test split to corrupt")
    names = _output_names(images)
    if shard is not None:
        i, n = shard
        if not 0 <= i < n:
            raise ConfigError(f"shard {i}/{n} must satisfy 0 <= i < n")
        images, names = images[i::n], names[i::n]
    meta = {"source_manifest": os.path.relpath(manifest, out_dir), "corruption": corruption, "severity": severity,
            "seed": seed, "jpeg_quality": quality, "modality": "image"}
    if draw is not None:
        meta["draw_seed"] = int(draw)
    options: tuple = ()
    if implementation != "imagecorruptions":  # (the default's manifests stay as they were)
        resolved = mm_robustness.options({"mm_robustness": mm_options}, dataset)
        options = tuple(sorted(resolved.items()))
        meta["implementation"] = {"name": implementation, **resolved}
    if shard is not None:
        meta["shard"] = list(shard)
    entries = []
    with atomic_dir(out_dir) as tmp:
        tasks = []
        for im, name in zip(images, names):
            src = root / im.get("filepath", "") / im["filename"]
            tasks.append(_ImageTask(str(src), str(tmp / name), corruption, int(severity),
                                    query_seed(dataset, im["imgid"], corruption, severity, draw), quality,
                                    implementation, options))
            entries.append({**im, "filepath": "", "filename": name})
        shard_txt = f" shard {shard[0]}/{shard[1]}" if shard else ""
        run_image_tasks(tasks, workers, desc=f"{corruption} s{severity}{shard_txt}", progress=progress)
        write_manifest(tmp / "manifest.json", dataset, entries, image_root=".", meta=meta)
    return len(entries)


def merge_image_shards(shard_dirs: Iterable[str | Path], out_dir: str | Path) -> int:
    """Join the n shard folders of one query set (in shard order 0..n-1) into ``out_dir``.

    Images are hard-linked where the file system allows (no extra space; shards stay valid
    outputs for DVC/Snakemake), copied otherwise. Checks that the shards are 0..n-1 of the
    same n, corruption, severity and quality.
    """
    import shutil

    shard_dirs = [Path(d) for d in shard_dirs]
    docs = [read_manifest(d / "manifest.json") for d in shard_dirs]
    n = len(docs)
    if n == 0:
        raise InputError("merge_image_shards: no shard folders given")
    first = docs[0].get("meta", {})
    for k, (d, doc) in enumerate(zip(shard_dirs, docs)):
        meta = doc.get("meta", {})
        if meta.get("shard") != [k, n]:
            raise InputError(f"shard folder {d} holds shard {meta.get('shard')!r}, expected [{k}, {n}] "
                             f"(pass the {n} shard folders in order 0..{n - 1})")
        for key in ("corruption", "severity", "jpeg_quality", "seed"):
            if meta.get(key) != first.get(key):
                raise InputError(f"shard folder {d}: {key} {meta.get(key)!r} differs from shard 0's {first.get(key)!r}")
    entries, dirs = [], []
    for j in range(max(len(doc["images"]) for doc in docs)):  # undo the i::n striding
        for d, doc in zip(shard_dirs, docs):
            if j < len(doc["images"]):
                entries.append(doc["images"][j])
                dirs.append(d)
    source = os.path.normpath(os.path.join(shard_dirs[0], first["source_manifest"]))
    meta = {k: v for k, v in first.items() if k != "shard"}
    meta["source_manifest"] = os.path.relpath(source, out_dir)
    with atomic_dir(out_dir) as tmp:
        for im, d in zip(entries, dirs):
            src, dst = d / im["filename"], tmp / im["filename"]
            if not src.is_file():
                raise InputError(f"shard folder {d} lists {im['filename']} but the file is missing")
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
        write_manifest(tmp / "manifest.json", docs[0].get("dataset"), entries, image_root=".", meta=meta)
    return len(entries)

def build_text_queries(manifest: str | Path, out: str | Path, corruption: str, level: int, seed: int,
                       progress: bool = True, cfg: dict | None = None, draw: int | None = None) -> int:
    """Corrupt every test caption. ``cfg`` (params) supplies the models, generation settings and
    device of the model-based types, which are generated in batches over all captions at once;
    without a configured model they raise ``ModelNotConfigured`` before any work is done."""
    from . import seq2seq
    from .text import corrupt_texts_info, validate_text_params

    from .text import _check_level

    spec = TEXT_CORRUPTIONS.get(corruption)
    try:
        _check_level(level)  # a bad level is the caller's value, not the manifest's fault
    except InputError as e:
        raise ConfigError(str(e)) from None
    if cfg is not None:
        validate_text_params(cfg)
    if spec.group == "sentence" and seq2seq.model_sources(cfg, corruption) is None:
        raise seq2seq.ModelNotConfigured(corruption)
    manifest, out = Path(manifest), Path(out)
    doc = read_manifest(manifest)
    dataset = doc.get("dataset", manifest.parent.name)
    images = _test_images(doc)
    if not images:
        raise InputError(f"manifest {manifest} has no test split to corrupt")
    sentences = [s for im in images for s in im["sentences"]]
    seeds = [query_seed(dataset, s["sentid"], corruption, level, draw) for s in sentences]
    try:
        texts, filt = corrupt_texts_info(corruption, [s["raw"] for s in sentences], level, seeds, cfg,
                                         progress=progress)
    except InputError as e:
        raise InputError(f"{manifest}: {e}") from None
    corrupted = iter(texts)
    record = iter(zip(filt["tries"], filt["cosine"])) if filt is not None else None
    entries = []
    for im in images:
        sents = []
        for s in im["sentences"]:
            raw = next(corrupted)
            sent = {**s, "raw": raw, "tokens": raw.split(), "clean": s["raw"]}
            if record is not None:  # the semantic filter: draws made, final cosine (null: empty caption)
                tries, cos = next(record)
                sent["filter"] = {"tries": tries, "cosine": None if cos != cos else round(cos, 6)}
            sents.append(sent)
        entries.append({**im, "sentences": sents})
    meta = {"source_manifest": os.path.relpath(manifest, out.parent), "corruption": corruption,
            "level": level, "word_probability": 0.05 * level, "seed": seed, "modality": "text"}
    if draw is not None:
        meta["draw_seed"] = int(draw)
    if spec.group == "sentence":
        meta["seq2seq"] = seq2seq.provenance(cfg, corruption, level)
    if filt is not None:
        meta["filter"] = filt["summary"]
        f = filt["summary"]
        log.info("corrupt_text %s l%d: semantic filter %s (min cosine %s, <= %d draws): %d captions, %d never "
                 "reached the threshold (kept the last draw), %.2f draws per caption", corruption, level, f["model"],
                 f["min_cosine"], f["max_tries"], f["n_filtered"], f["never_reached"], f["mean_tries"] or 0.0)
    # images stay the clean ones: point image_root at the source dataset's image folder
    root = os.path.relpath(image_root(doc, manifest), out.parent)
    write_manifest(out, dataset, entries, image_root=root, meta=meta)
    return len(texts)
