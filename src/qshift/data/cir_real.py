"""The real composed image retrieval (CIR) benchmarks: CIRR and FashionIQ, in QShift's CIR layout.

Both benchmarks ship annotation files and image lists; the images come separately. The
download stage (:func:`download_cir`) fetches/copies the annotation files and the split's
images into ``data/raw/<benchmark>/`` (resumable, sha256-checked downloads and safe archive
extraction: :mod:`qshift.data.download`); the prepare stage (:func:`prepare_cir`) writes the
same two manifests the built-in CIR benchmark has (:mod:`qshift.data.builtin_cir`), so the
``corrupt_*``, ``encode_gallery`` and ``adapt_cir`` stages run on them unchanged:

- ``manifest.json`` — split ``test`` (see *Splits*): one entry per reference image, one
  sentence per triplet whose reference it is: ``raw`` = the modification text, ``target`` =
  the target's imgid in ``targets.json``, ``pairid`` = the benchmark's triplet id, ``group`` =
  the FashionIQ category (FashionIQ only) and ``members`` = the imgids of CIRR's image subset;
- ``targets.json`` — the gallery: every image of the split's image list (CIRR: the 2,297
  ``dev`` images of ``split.rc2.val.json``; FashionIQ: each category's ``split.<cat>.val.json``,
  ``group`` = the category). A reference shares the imgid of its gallery entry.

Annotation formats (read as CLIP4Cir's ``data_utils.py`` reads them, Baldrati et al., CVPR-W 2022):

- ``cirr`` (Liu et al., ICCV 2021; github.com/Cuberick-Orion/CIRR, branch ``cirr_dataset``):
  ``captions/cap.rc2.val.json`` — a list of ``{pairid, reference, target_hard, caption,
  img_set: {members}}``; ``image_splits/split.rc2.val.json`` — image name -> relative path
  (``./dev/dev-244-0-img0.png``). Images: NLVR2's raw images (request-only; ``images.path``:
  the folder or archive holding ``dev/``).
- ``fashion-iq`` (Wu et al., CVPR 2021; github.com/XiaoxiaoGuo/fashion-iq):
  ``captions/cap.<cat>.val.json`` — a list of ``{candidate, target, captions: [c1, c2]}``;
  ``image_splits/split.<cat>.val.json`` — a list of image names, files ``<name>.jpg``
  (``images.path``: the folder or archive). The two relative captions form one query text as
  CLIP4Cir's validation does: ``f"{c1.strip('.?, ').capitalize()} and {c2.strip('.?, ')}"``
  (c1 first, no random flip — the flip is CLIP4Cir's training-time augmentation).

Splits: both benchmarks keep their test labels private (CIRR: an evaluation server;
FashionIQ's test captions have no ``target``), so the *validation split* is evaluated, as
CLIP4Cir and most CIR papers report their analyses; it is written as QShift's ``test`` split
(``meta.source_split: val`` records it). Only ``split: val`` is accepted.

Protocols (``meta.protocol``; applied when a CIR run is scored, :func:`qshift.cir.candidate_mask`):

- ``cirr`` — R@1/5/10/50 over the whole validation gallery with each query's *reference image
  removed from the candidates*, and Recall_subset@1/2/3 within the triplet's ``img_set.members``
  (CLIP4Cir's ``compute_cirr_val_metrics``);
- ``fashion-iq`` — R@10/R@50 per category over that category's gallery only (the reference
  stays a candidate, as in CLIP4Cir's ``compute_fiq_val_metrics``), and their mean.

Modification texts go through the project's caption normalisation when read (TCR's: lowercase,
its punctuation set removed, at most 30 words), as every query text does — the corrupted copies
keep no manifest metadata, so a per-benchmark rule would differ between clean and corrupted
queries.

Bad input is an :class:`~qshift.errors.InputError` naming the triplet (pairid / category and
index), the annotation file and the image; a missing image is never skipped: a partial
benchmark would change every number. An empty modification text is a valid query.
"""

from __future__ import annotations

import logging
import os
import posixpath
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import ConfigError, InputError
from ..io import atomic_dir, read_json, sha256_file, write_json
from ..progress import tqdm

log = logging.getLogger("qshift.download")

CIR_KINDS = ("cirr", "fashion-iq")
FIQ_CATEGORIES = ("dress", "shirt", "toptee")
SPLITS = ("val",)  # the test splits' targets are not public (see the module docstring)
TARGETS = "targets.json"
DOWNLOAD_JSON = "download.json"
# the upstream annotation files' sha256 (CIRR branch cirr_dataset @ 2276fba, fashion-iq @ f71b16c):
# recorded in download.json as matches_upstream (a later release still loads; the record says so)
UPSTREAM_SHA256 = {
    "cap.rc2.val.json": "a85c3a1aa464f1af7229918e8018d08b8b20ce5dab479ffdf39d61113140f919",
    "split.rc2.val.json": "de36f7a7219c8bb06347a67748cfc68405be7dad62853a1e31846c98e491235b",
    "cap.dress.val.json": "5e5117d45695df9c3ca91fac3e0bc49e6422ae9c8b3793f0ac9b3ab83adb7de9",
    "split.dress.val.json": "21ff91d53c23859da91bfd49f3acc139b7f3a3dc944fc4e4a80194468cf14bab",
    "cap.shirt.val.json": "7b7ca3797b85dddfd83e74cdb4454cb63e3e7c09acef2590155efbacea6d7feb",
    "split.shirt.val.json": "b82effbf7352a6f828b38c45eb32e53d726bd4d6fd81d6290c81eeb2c68e3234",
    "cap.toptee.val.json": "b4e09f428e6c255cc4b4ec46e77908305ab83075d82840c960be81af15cdc5eb",
    "split.toptee.val.json": "ee42b2505275dd7a19b11ddb88c9264aab2d77f4e59b075fb1c7c3095d02f412",
}
HINTS = {
    "cirr": ("CIRR's images are NLVR2's raw images, distributed after the NLVR2 team's request form "
             "(https://github.com/lil-lab/nlvr/tree/master/nlvr2#direct-image-download); set "
             "datasets.cirr.images.path to the folder (or archive) holding dev/"),
    "fashion-iq": ("FashionIQ's images are not redistributed by its authors (image URLs: "
                   "https://github.com/hongwang600/fashion-iq-metadata); set datasets.fashion-iq.images.path to "
                   "the folder (or archive) of <asin>.jpg files"),
}


def _bad(path: Path, msg: str) -> InputError:
    return InputError(f"malformed annotation file {path}: {msg}")


def categories(d: Mapping[str, Any], where: str = "datasets.fashion-iq") -> list[str]:
    cats = d.get("categories", list(FIQ_CATEGORIES))
    if not isinstance(cats, list) or not cats:
        raise ConfigError(f"params: {where}.categories must be a non-empty list of {', '.join(FIQ_CATEGORIES)}")
    for c in cats:
        if c not in FIQ_CATEGORIES:
            raise ConfigError(f"params: {where}.categories has unknown category {c!r}; valid: "
                              f"{', '.join(FIQ_CATEGORIES)}")
    if len(set(cats)) != len(cats):
        raise ConfigError(f"params: {where}.categories lists a category twice: {cats}")
    return list(cats)


def validate_cir_dataset(name: str, d: Mapping[str, Any]) -> None:
    """The CIR-specific keys of a ``datasets.<name>`` entry of kind cirr / fashion-iq."""
    where = f"datasets.{name}"
    kind = d.get("kind")
    if d.get("task") != "cir":
        raise ConfigError(f"params: {where} is kind {kind!r}, a composed image retrieval dataset: set task: cir")
    split = d.get("split", "val")
    if split not in SPLITS:
        raise ConfigError(f"params: {where}.split is {split!r}; valid: val (the test split's targets are held "
                          f"server-side / unpublished, so the benchmark is evaluated on its validation split)")
    if kind == "fashion-iq":
        categories(d, where)
    elif "categories" in d:
        raise ConfigError(f"params: {where}.categories is FashionIQ's key; kind {kind!r} has no categories")


def annotation_names(kind: str, d: Mapping[str, Any]) -> list[str]:
    """The annotation files (basenames) the benchmark's split needs, captions then image lists."""
    split = d.get("split", "val")
    if kind == "cirr":
        return [f"cap.rc2.{split}.json", f"split.rc2.{split}.json"]
    cats = categories(d)
    return [f"cap.{c}.{split}.json" for c in cats] + [f"split.{c}.{split}.json" for c in cats]


# -- reading ------------------------------------------------------------------------------------
@dataclass
class Triplet:
    pairid: str | int  # CIRR: the pairid; FashionIQ: "<category>/<index in its caption file>"
    reference: str  # image name
    target: str
    text: str  # the modification text (may be empty)
    source: str  # the annotation file's name
    group: str | None = None  # FashionIQ category
    members: list[str] = field(default_factory=list)  # CIRR: img_set.members

    def name(self) -> str:
        return f"{self.source} triplet {self.pairid!r} (reference {self.reference!r}, target {self.target!r})"


@dataclass
class CIRBench:
    kind: str
    triplets: list[Triplet]
    gallery: list[tuple[str | None, str, str]]  # (group, image name, stored relative path under images/)

    def image_of(self) -> dict[tuple[str | None, str], str]:
        return {(g, n): rel for g, n, rel in self.gallery}


def _str(path: Path, where: str, e: dict, key: str, allow_empty: bool = False) -> str:
    v = e.get(key)
    if not isinstance(v, str) or (not allow_empty and not v.strip()):
        raise _bad(path, f"{where} needs key {key!r} (a {'' if allow_empty else 'non-empty '}string), got {v!r}")
    return v


def fiq_text(captions: list[str]) -> str:
    """FashionIQ's two relative captions as one query, as CLIP4Cir's validation joins them."""
    if len(captions) == 1:
        return captions[0].strip(".?, ").capitalize()
    return f"{captions[0].strip('.?, ').capitalize()} and {captions[1].strip('.?, ')}"


def _read_cirr(ann_dir: Path, split: str) -> CIRBench:
    from .formats import clean_relative

    cap, spl = ann_dir / f"cap.rc2.{split}.json", ann_dir / f"split.rc2.{split}.json"
    images = read_json(spl, "CIRR image split file")
    if not isinstance(images, dict) or not images:
        raise _bad(spl, "expected an object mapping image names to relative paths (split.rc2.<split>.json)")
    gallery = [(None, n, clean_relative(spl, f"[{n!r}]", rel)) for n, rel in images.items()]
    doc = read_json(cap, "CIRR caption file")
    if not isinstance(doc, list) or not doc:
        raise _bad(cap, "expected a non-empty list of triplets {pairid, reference, target_hard, caption, img_set}")
    out = []
    for i, e in enumerate(doc):
        if not isinstance(e, dict) or "pairid" not in e:
            raise _bad(cap, f"[{i}] needs key 'pairid'")
        where = f"[{i}] (pairid {e['pairid']!r})"
        t = Triplet(e["pairid"], _str(cap, where, e, "reference"), _str(cap, where, e, "target_hard"),
                    _str(cap, where, e, "caption", allow_empty=True), cap.name)
        members = (e.get("img_set") or {}).get("members") if isinstance(e.get("img_set"), dict) else None
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            raise _bad(cap, f"{where} needs img_set.members (a list of image names)")
        t.members = list(members)
        for role, img in (("reference", t.reference), ("target", t.target)):
            if img not in images:
                raise InputError(f"CIRR {t.name()} in {cap}: its {role} image {img!r} is not in {spl.name} "
                                 f"(the split's image list)")
        out.append(t)
    return CIRBench("cirr", out, gallery)


def _read_fiq(ann_dir: Path, split: str, cats: list[str]) -> CIRBench:
    triplets, gallery = [], []
    for c in cats:
        cap, spl = ann_dir / f"cap.{c}.{split}.json", ann_dir / f"split.{c}.{split}.json"
        names = read_json(spl, "FashionIQ image split file")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
            raise _bad(spl, "expected a non-empty list of image names (split.<category>.<split>.json)")
        known = set(names)
        gallery += [(c, n, f"{c}/{n}.jpg") for n in dict.fromkeys(names)]
        doc = read_json(cap, "FashionIQ caption file")
        if not isinstance(doc, list) or not doc:
            raise _bad(cap, "expected a non-empty list of triplets {candidate, target, captions}")
        for i, e in enumerate(doc):
            where = f"[{i}]"
            if not isinstance(e, dict):
                raise _bad(cap, f"{where} must be an object with keys candidate, target, captions")
            caps = e.get("captions")
            if not isinstance(caps, list) or not caps or not all(isinstance(x, str) for x in caps):
                raise _bad(cap, f"{where} needs 'captions' (a list of one or two strings), got {caps!r}")
            t = Triplet(f"{c}/{i}", _str(cap, where, e, "candidate"), _str(cap, where, e, "target"),
                        fiq_text(caps), cap.name, group=c)
            for role, img in (("reference (candidate)", t.reference), ("target", t.target)):
                if img not in known:
                    raise InputError(f"FashionIQ {t.name()} in {cap}: its {role} image {img!r} is not in "
                                     f"{spl.name} (the {c} gallery)")
            triplets.append(t)
    return CIRBench("fashion-iq", triplets, gallery)


def read_cir(kind: str, ann_dir: str | os.PathLike, d: Mapping[str, Any]) -> CIRBench:
    """The triplets and gallery of a CIRR / FashionIQ split from its annotation folder."""
    ann_dir = Path(ann_dir)
    split = d.get("split", "val")
    for n in annotation_names(kind, d):
        if not (ann_dir / n).is_file():
            raise InputError(f"{kind} annotation file {ann_dir / n} not found (expected {', '.join(annotation_names(kind, d))})")
    if kind == "cirr":
        return _read_cirr(ann_dir, split)
    if kind == "fashion-iq":
        return _read_fiq(ann_dir, split, categories(d))
    raise ConfigError(f"CIR dataset kind {kind!r}; valid: {', '.join(CIR_KINDS)}")


def _stored_source(bench: CIRBench, rel: str) -> str:
    """Where a gallery image lies under data/raw/<name>/images/ (FashionIQ: flat <name>.jpg)."""
    return posixpath.basename(rel) if bench.kind == "fashion-iq" else rel


def missing_error(bench: CIRBench, have: set[str], source: str) -> InputError | None:
    """The first triplet whose reference or target image is absent (else the first gallery image)."""
    image_of = bench.image_of()
    missing = {_stored_source(bench, rel) for rel in image_of.values()} - have
    if not missing:
        return None
    for t in bench.triplets:
        for role, img in (("reference", t.reference), ("target", t.target)):
            f = _stored_source(bench, image_of[(t.group, img)])
            if f in missing:
                return InputError(f"{bench.kind} {t.name()}: its {role} image file {f} is not in {source} "
                                  f"({len(missing)} of {len(set(image_of.values()))} gallery images missing; a partial "
                                  f"benchmark is never prepared)")
    first = sorted(missing)[:5]
    return InputError(f"{bench.kind}: {len(missing)} gallery image(s) not in {source} (e.g. {', '.join(first)}); a "
                      f"partial gallery is never prepared")


# -- download stage -----------------------------------------------------------------------------
def _find_annotations(ann: Path, needed: list[str], out: Path) -> None:
    """Copy the needed annotation files (matched by basename) from an archive or a folder into ``out``."""
    from .download import is_archive, safe_extract

    want = set(needed)
    if ann.is_dir():
        found: dict[str, Path] = {}
        for root, dirs, files in os.walk(ann):
            dirs.sort()
            for f in sorted(files):
                if f in want and f not in found:
                    found[f] = Path(root) / f
        out.mkdir(parents=True, exist_ok=True)
        for f, p in found.items():
            shutil.copyfile(p, out / f)
    elif is_archive(ann):
        safe_extract(ann, out, select=lambda m: posixpath.basename(m) if posixpath.basename(m) in want else None,
                     progress=False)
    else:
        raise InputError(f"annotations {ann}: expected a folder or an archive (.zip/.tar.gz) holding "
                         f"{', '.join(needed)} (e.g. the benchmark repository's archive)")
    missing = [n for n in needed if not (out / n).is_file()]
    if missing:
        raise InputError(f"annotations {ann} hold no {', '.join(missing)} (needed: {', '.join(needed)})")


def _collect_images(src: Path, wanted: dict[str, str], out: Path, progress: bool) -> set[str]:
    """The wanted images (basename -> stored relative path) from a folder or an archive into ``out``."""
    from .download import is_archive, safe_extract
    from .karpathy import _link_or_copy

    if src.is_dir():
        found: dict[str, Path] = {}
        for root, dirs, files in os.walk(src):
            dirs.sort()
            for f in sorted(files):
                if f in wanted and wanted[f] not in found:
                    p = Path(root) / f
                    if p.is_file() and not p.is_symlink():
                        found[wanted[f]] = p
        for rel, p in tqdm(sorted(found.items()), desc=f"copy {src.name}", unit="file", disable=not progress,
                           leave=False):
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(p, out / rel)
        return set(found)
    if not is_archive(src):
        raise InputError(f"images {src} is neither a folder nor an archive (.zip, .tar, .tar.gz, .tgz, .tar.bz2, .tar.xz)")
    written = safe_extract(src, out, progress=progress, select=lambda m: wanted.get(posixpath.basename(m)))
    return set(written.values())


def download_cir(name: str, d: Mapping[str, Any], dl: Mapping[str, Any], raw_dir: str | os.PathLike,
                 progress: bool = True) -> dict:
    """Stage ``download`` for kind cirr / fashion-iq: annotations + the split's images -> ``raw_dir``."""
    from .karpathy import _check_source, _obtain

    kind = d["kind"]
    validate_cir_dataset(name, d)
    for role in ("annotations", "images"):  # fail before any download
        src = d.get(role)
        if not isinstance(src, Mapping):
            raise ConfigError(f"params: datasets.{name}.{role} must be a mapping with keys url, sha256, path, member")
        if not src.get("path") and not src.get("url"):
            raise ConfigError(f"params: datasets.{name}.{role} has neither a url nor a path. "
                              f"{HINTS[kind] if role == 'images' else ''}".rstrip())
        _check_source(name, role, src)
    needed = annotation_names(kind, d)
    ann_file, ann_rec = _obtain(name, "annotations", d["annotations"], dl, progress)
    raw_dir = Path(raw_dir)
    with atomic_dir(raw_dir) as tmp:
        _find_annotations(ann_file, needed, tmp / "annotations")
        bench = read_cir(kind, tmp / "annotations", d)  # bad annotations fail before the images are fetched
        img_path, img_rec = _obtain(name, "images", d["images"], dl, progress)
        wanted = {posixpath.basename(rel): _stored_source(bench, rel) for _, _, rel in bench.gallery}
        found = _collect_images(img_path, wanted, tmp / "images", progress)
        err = missing_error(bench, found, str(img_path))
        if err is not None:
            raise err
        ann_files = [{"name": n, "sha256": sha256_file(tmp / "annotations" / n),
                      "matches_upstream": sha256_file(tmp / "annotations" / n) == UPSTREAM_SHA256.get(n)}
                     for n in needed]
        info = {"dataset": name, "kind": kind, "task": "cir", "split": d.get("split", "val"),
                "annotations": "annotations", "annotation_files": ann_files, "images": "images",
                "n_triplets": len(bench.triplets), "n_gallery": len(bench.gallery),
                "n_images": len(found), "files": [ann_rec, img_rec]}
        if kind == "fashion-iq":
            info["categories"] = categories(d)
        write_json(tmp / DOWNLOAD_JSON, info)
    log.info("download %s: %d triplets, a gallery of %d images -> %s", name, info["n_triplets"], info["n_gallery"],
             raw_dir)
    return info


# -- prepare stage ------------------------------------------------------------------------------
def build_manifests(bench: CIRBench, name: str, meta: dict) -> tuple[list[dict], list[dict]]:
    """(manifest.json entries: the references with their triplets; targets.json entries: the gallery)."""
    from .manifest import make_image_entry

    imgid = {(g, n): k for k, (g, n, _) in enumerate(bench.gallery)}
    gallery = []
    for k, (g, n, rel) in enumerate(bench.gallery):
        folder, base = posixpath.split(rel)
        e = make_image_entry(k, base, "test", [""], k, filepath=folder)  # gallery images carry no caption
        e.update(role="target", source_image=n)
        if g is not None:
            e["group"] = g
        gallery.append(e)
    refs: dict[tuple[str | None, str], dict] = {}
    for sid, t in enumerate(bench.triplets):
        key = (t.group, t.reference)
        if key not in refs:
            gal = gallery[imgid[key]]
            refs[key] = {"imgid": imgid[key], "filepath": gal["filepath"], "filename": gal["filename"],
                         "split": "test", "sentids": [], "sentences": [], "source_image": t.reference}
            if t.group is not None:
                refs[key]["group"] = t.group
        s = {"sentid": sid, "imgid": imgid[key], "raw": t.text, "target": imgid[(t.group, t.target)],
             "pairid": t.pairid}
        if t.group is not None:
            s["group"] = t.group
        if t.members:
            s["members"] = [imgid[(t.group, m)] for m in t.members if (t.group, m) in imgid]
        refs[key]["sentences"].append(s)
        refs[key]["sentids"].append(sid)
    return list(refs.values()), gallery


def prepare_cir(name: str, d: Mapping[str, Any], raw_dir: str | os.PathLike, out_dir: str | os.PathLike,
                progress: bool = True) -> dict:
    """``data/raw/<name>/`` -> ``data/<name>/`` (images/, manifest.json, targets.json), atomically."""
    from .karpathy import _link_or_copy
    from .manifest import write_manifest

    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    info = read_json(raw_dir / DOWNLOAD_JSON, f"download record (run the download stage for {name!r} first)")
    kind = d.get("kind")
    if not isinstance(info, dict) or info.get("kind") != kind:
        raise InputError(f"{raw_dir / DOWNLOAD_JSON} was written for kind "
                         f"{info.get('kind') if isinstance(info, dict) else None!r}, but datasets.{name}.kind is "
                         f"{kind!r}; rerun the download stage")
    if kind == "fashion-iq" and info.get("categories") != categories(d):
        raise InputError(f"{raw_dir / DOWNLOAD_JSON} holds FashionIQ categories {info.get('categories')}, but "
                         f"datasets.{name}.categories is {categories(d)}; rerun the download stage")
    bench = read_cir(kind, raw_dir / info.get("annotations", "annotations"), d)
    src = raw_dir / info.get("images", "images")
    have = {_stored_source(bench, rel) for _, _, rel in bench.gallery if (src / _stored_source(bench, rel)).is_file()}
    err = missing_error(bench, have, str(src))
    if err is not None:
        raise err
    protocol = ({"protocol": "cirr", "exclude_reference": True, "recall_subset": True} if kind == "cirr" else
                {"protocol": "fashion-iq", "per_group": True, "groups": categories(d)})
    meta = {"generator": "qshift.data.cir_real", "task": "cir", "targets": TARGETS, "source_split": info["split"],
            **protocol,
            "annotation_files": info.get("annotation_files", []), "files": info.get("files", [])}
    refs, gallery = build_manifests(bench, name, meta)
    with atomic_dir(out_dir) as tmp:
        for _, _, rel in tqdm(bench.gallery, desc=f"prepare {name}", unit="image", disable=not progress, leave=False):
            (tmp / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(src / _stored_source(bench, rel), tmp / "images" / rel)
        write_manifest(tmp / "manifest.json", name, refs, image_root="images", meta=meta)
        write_manifest(tmp / TARGETS, name, gallery, image_root="images",
                       meta={**meta, "role": "gallery of the triplets in manifest.json (no captions: an empty "
                                             "placeholder sentence per image)"})
    stats = {"dataset": name, "n_triplets": len(bench.triplets), "n_references": len(refs),
             "n_gallery": len(gallery), "source_split": info["split"]}
    if kind == "fashion-iq":
        stats["per_category"] = {c: sum(t.group == c for t in bench.triplets) for c in categories(d)}
    log.info("prepare %s: %s", name, stats)
    return stats
