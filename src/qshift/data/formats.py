"""The annotation formats of the query-gallery-shift and ReID benchmarks (beside Karpathy's).

Each reader turns one benchmark's own annotation file into the list of test entries the
download and prepare stages share (:class:`qshift.data.karpathy.AnnImage`): the image's path
as the annotations write it, its captions, and — where the benchmark has them — the NoCaps
domain, the person identity, the URL an image is fetched from. Nothing is normalised here;
:func:`~qshift.data.manifest.load_split` does that when the manifest is read.

* ``nocaps`` — ``nocaps_val_4500_captions.json`` (nocaps.org, COCO-style): ``images[]`` with
  ``id``, ``file_name``, ``domain`` (``in-domain`` / ``near-domain`` / ``out-domain``),
  ``open_images_id`` and ``coco_url``; ``annotations[]`` with ``image_id`` and ``caption``
  (10 per image). ``datasets.<name>.domain`` keeps one domain (the per-domain presets).
* ``pedes`` — CUHK-PEDES's ``reid_raw.json`` and ICFG-PEDES's ``ICFG-PEDES.json``: a list of
  ``{"split", "id", "file_path", "captions"}``; the ``test`` split, as the text-based person
  ReID literature evaluates it (CUHK-PEDES: 1,000 identities, 3,074 images, 6,156 captions;
  ICFG-PEDES: 1,000 identities, 19,848 images, one caption each). ``file_path`` is relative to
  the image folder (``imgs/``) and is kept as it is (basenames repeat across sub-folders).
* ``fashion-gen`` — the Fashion-Gen release's ``fashiongen_256_256_validation.h5`` (or
  ``_train``): datasets ``input_image`` (N x 256 x 256 x 3 uint8), ``input_description`` and
  ``input_productID``, one row per product image (several poses per product). The download
  stage writes the rows it keeps as PNG files (lossless: the h5 holds decoded pixels) and a
  BLIP-style caption file; ``images_per_product`` (default 1: the first pose in file order)
  keeps one image per product, so no two gallery items share one description.
"""

from __future__ import annotations

import logging
import os
import posixpath
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import ConfigError, InputError
from ..io import read_json, write_json

log = logging.getLogger("qshift.download")

NOCAPS_DOMAINS = ("in-domain", "near-domain", "out-domain")
PEDES_SPLIT = "test"
FASHION_KEYS = ("input_image", "input_description", "input_productID")


def _bad(path: Path, msg: str) -> InputError:
    return InputError(f"malformed annotation file {path}: {msg}")


def clean_relative(path: Path, where: str, value: Any) -> str:
    """An annotation's relative image path, checked to stay inside the image folder."""
    if not isinstance(value, str) or not value.strip():
        raise _bad(path, f"{where} must be a non-empty string, got {value!r}")
    rel = value.replace("\\", "/").strip()
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if rel.startswith("/") or ".." in parts or not parts:
        raise _bad(path, f"{where} {value!r} must be a relative path inside the image folder (no '/' start, no '..')")
    return "/".join(parts)


# -- NoCaps -----------------------------------------------------------------------------------
def read_nocaps(path: Path, captions_per_image: int | None, domain: str | None, make) -> tuple[list, int]:
    """(entries of ``domain`` (all when None), number of images in the whole file)."""
    doc = read_json(path, "NoCaps annotation file")
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) or not isinstance(
            doc.get("annotations"), list):
        raise _bad(path, "expected the NoCaps (COCO-style) layout: an object with lists 'images' and 'annotations' "
                         "(nocaps_val_4500_captions.json; the image-info file without captions cannot be evaluated)")
    caps: dict[Any, list[str]] = {}
    for i, a in enumerate(doc["annotations"]):
        if not isinstance(a, dict) or "image_id" not in a or not isinstance(a.get("caption"), str):
            raise _bad(path, f"annotations[{i}] needs keys 'image_id' and 'caption' (a string)")
        caps.setdefault(a["image_id"], []).append(a["caption"])
    out = []
    for i, im in enumerate(doc["images"]):
        if not isinstance(im, dict) or "id" not in im or not isinstance(im.get("file_name"), str):
            raise _bad(path, f"images[{i}] needs keys 'id' and 'file_name' (a string)")
        dom = im.get("domain")
        if dom not in NOCAPS_DOMAINS:
            raise _bad(path, f"images[{i}].domain is {dom!r}; valid: {', '.join(NOCAPS_DOMAINS)}")
        if im["id"] not in caps:
            raise _bad(path, f"images[{i}] (id {im['id']!r}, {im['file_name']}) has no caption in 'annotations'")
        if domain is not None and dom != domain:
            continue
        url = im.get("coco_url")
        entry = make(clean_relative(path, f"images[{i}].file_name", im["file_name"]), caps[im["id"]])
        entry.domain, entry.url = dom, url if isinstance(url, str) and url else None
        entry.source_id = im.get("open_images_id")
        out.append(entry)
    if not out:
        raise _bad(path, f"no images of domain {domain!r}" if domain else "no images")
    for e in out:
        if captions_per_image is not None:
            e.captions = e.captions[:captions_per_image]
    return out, len(doc["images"])


def fetch_each(entries: list, dest: Path, url_of: Callable[[Any], str | None], fetch_one: Callable[[str, Path], None],
               workers: int, progress: bool) -> dict[str, str]:
    """Fetch every entry's image into ``dest/<stored name>`` (several at once); returns
    {stored name: why it failed} for the images that could not be fetched (after retries)."""
    from concurrent.futures import ThreadPoolExecutor

    from ..progress import tqdm
    from .download import DownloadError

    failed: dict[str, str] = {}

    def one(e) -> tuple[str, str | None]:
        url = url_of(e)
        if not url:
            return e.stored, "no URL in the annotations (coco_url) and no datasets.<name>.images.url prefix"
        try:
            fetch_one(url, dest / e.stored)
        except (DownloadError, InputError, OSError) as err:
            return e.stored, str(err)
        return e.stored, None

    dest.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for name, why in tqdm(pool.map(one, entries), total=len(entries), desc="fetch images", unit="image",
                              disable=not progress, leave=False):
            if why is not None:
                failed[name] = why
    return failed


# -- CUHK-PEDES / ICFG-PEDES ------------------------------------------------------------------
def read_pedes(path: Path, captions_per_image: int | None, make) -> list:
    """The test split of a ``reid_raw.json`` / ``ICFG-PEDES.json``."""
    doc = read_json(path, "ReID annotation file")
    if not isinstance(doc, list):
        raise _bad(path, "expected a list of {'split', 'id', 'file_path', 'captions'} entries (CUHK-PEDES "
                         "reid_raw.json, ICFG-PEDES.json)")
    out, splits = [], set()
    for i, e in enumerate(doc):
        if not isinstance(e, dict) or not {"split", "id", "file_path", "captions"} <= set(e):
            raise _bad(path, f"[{i}] needs keys 'split', 'id', 'file_path' and 'captions'")
        splits.add(str(e["split"]))
        if e["split"] != PEDES_SPLIT:
            continue
        if isinstance(e["id"], bool) or not isinstance(e["id"], (int, str)):
            raise _bad(path, f"[{i}].id must be an integer or string, got {e['id']!r}")
        caps = e["captions"]
        if not isinstance(caps, list) or not caps or not all(isinstance(c, str) for c in caps):
            raise _bad(path, f"[{i}].captions must be a non-empty list of strings")
        entry = make(clean_relative(path, f"[{i}].file_path", e["file_path"]), list(caps))
        entry.identity = e["id"]
        entry.stored = entry.image
        out.append(entry)
    if not out:
        raise _bad(path, f"no entries in the {PEDES_SPLIT!r} split (splits present: {sorted(splits)})")
    seen: dict[str, int] = {}
    for k, e in enumerate(out):
        if e.stored in seen:
            raise _bad(path, f"the test image {e.stored!r} is listed twice")
        seen[e.stored] = k
        if captions_per_image is not None:
            e.captions = e.captions[:captions_per_image]
    return out


def suffix_matcher(needed: set[str]) -> Callable[[str], str | None]:
    """A member/file path -> the needed relative path it holds, matching on whole trailing path
    components (so ``CUHK-PEDES/imgs/cam_a/001.jpg`` holds ``cam_a/001.jpg``), else None."""
    depth = max((n.count("/") + 1 for n in needed), default=1)

    def match(name: str) -> str | None:
        parts = name.replace("\\", "/").split("/")
        for k in range(1, min(depth, len(parts)) + 1):
            cand = "/".join(parts[-k:])
            if cand in needed:
                return cand
        return None

    return match


def collect_relative(folder: Path, needed: set[str], out: Path, link: Callable[[Path, Path], None],
                     progress: bool) -> set[str]:
    """Link/copy the needed relative paths found under ``folder`` into ``out`` (same layout)."""
    from ..progress import tqdm

    match = suffix_matcher(needed)
    found: dict[str, Path] = {}
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for f in sorted(files):
            p = Path(root) / f
            rel = match(p.relative_to(folder).as_posix())
            if rel is not None and rel not in found and p.is_file() and not p.is_symlink():
                found[rel] = p
    out.mkdir(parents=True, exist_ok=True)
    for rel, p in tqdm(sorted(found.items()), desc=f"copy {folder.name}", unit="file", disable=not progress,
                       leave=False):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        link(p, out / rel)
    return set(found)


# -- Fashion-Gen ------------------------------------------------------------------------------
def _decode(value: Any) -> str:
    if hasattr(value, "tolist"):
        value = value.tolist()
    while isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin-1")  # the release's descriptions are not all UTF-8
    return str(value)


def convert_fashion_gen(h5_path: Path, out_images: Path, out_json: Path, images_per_product: int | None,
                        progress: bool) -> int:
    """Rows of a Fashion-Gen h5 -> ``out_images/<product>_<row>.png`` + a BLIP-style caption file
    ``[{"image", "caption", "product_id"}]``; returns the number of rows in the file."""
    try:
        import h5py
    except ImportError:
        raise ConfigError("Fashion-Gen's h5 release needs the h5py package (pip install h5py; it is in "
                          "requirements.txt)") from None
    from PIL import Image

    from ..progress import tqdm

    try:
        fh = h5py.File(h5_path, "r")
    except OSError as e:
        raise InputError(f"cannot read Fashion-Gen file {h5_path} as HDF5: {e}") from None
    with fh:
        missing = [k for k in FASHION_KEYS if k not in fh]
        if missing:
            raise _bad(h5_path, f"missing dataset(s) {', '.join(missing)} (present: {', '.join(sorted(fh))}); "
                                f"expected fashiongen_256_256_validation.h5 / _train.h5")
        images, descs, pids = (fh[k] for k in FASHION_KEYS)
        n = len(images)
        if len(descs) != n or len(pids) != n:
            raise _bad(h5_path, f"input_image has {n} rows, input_description {len(descs)}, "
                                f"input_productID {len(pids)}")
        per: dict[str, int] = {}
        out_images.mkdir(parents=True, exist_ok=True)
        entries = []
        for i in tqdm(range(n), desc=f"convert {h5_path.name}", unit="image", disable=not progress, leave=False):
            pid = _decode(pids[i])
            if images_per_product is not None and per.get(pid, 0) >= images_per_product:
                continue
            per[pid] = per.get(pid, 0) + 1
            desc = _decode(descs[i]).strip()
            if not desc:
                raise _bad(h5_path, f"row {i} (product {pid}) has an empty input_description")
            arr = images[i]
            if arr.ndim != 3 or arr.shape[2] != 3:
                raise _bad(h5_path, f"input_image row {i} has shape {arr.shape}, expected H x W x 3")
            name = f"{pid}_{i}.png"
            Image.fromarray(arr.astype("uint8"), "RGB").save(out_images / name)
            entries.append({"image": name, "caption": [desc], "product_id": pid})
    if not entries:
        raise _bad(h5_path, "no rows")
    write_json(out_json, entries)
    log.info("fashion-gen: %d of %d rows kept (%s image(s) per product)", len(entries), n,
             images_per_product if images_per_product is not None else "every")
    return n


def stored_name(image: str) -> str:
    return posixpath.basename(image.replace("\\", "/"))


def check_images_per_product(where: str, v: Any) -> None:
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
        raise ConfigError(f"params: {where}.images_per_product must be a positive integer or null (every row), "
                          f"got {v!r}")


def check_domain(where: str, v: Any) -> None:
    if v is not None and v not in NOCAPS_DOMAINS:
        raise ConfigError(f"params: {where}.domain is {v!r}; valid: {', '.join(NOCAPS_DOMAINS)} (or null: all)")


def nocaps_url(entry, images_src: Mapping[str, Any]) -> str | None:
    """Where one NoCaps image is fetched from: ``images.url`` + file name when set (a mirror of
    the image folder), else the annotation's own ``coco_url``."""
    base = images_src.get("url") if isinstance(images_src, Mapping) else None
    if base:
        return base.rstrip("/") + "/" + entry.stored
    return entry.url
