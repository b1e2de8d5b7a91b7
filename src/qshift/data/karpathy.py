"""COCO / Flickr30k Karpathy test splits: download, then convert to the manifest format.

Two stages share this module:

* :func:`download_dataset` (stage ``download``) fetches the annotation file and the image
  archive into a persistent cache (``download.cache_dir``; an interrupted download resumes
  on the next run), or takes them from local paths (Flickr30k's images need a registration
  upstream, so they always come from a local archive or folder), and writes
  ``data/raw/<dataset>/``: ``annotations/<file>``, ``images/<basename>`` (only the test
  images: 5,000 of val2014's 40,504) and ``download.json`` (every file, its URL, sha256,
  size, and whether the sha256 was verified against params).
* :func:`prepare_real` turns that folder into ``data/<dataset>/manifest.json`` +
  ``images/`` (hard links when possible, so no second copy on disk).

Annotation formats (detected from the file, no setting needed):

* ``blip`` — a list of ``{"image": "val2014/COCO_val2014_...jpg", "caption": [...]}``: the
  test files BLIP/ALBEF publish (``coco_karpathy_test.json``, ``flickr30k_test.json``); the
  TCR paper evaluates on exactly these. Every entry is a test image.
* ``karpathy`` — Karpathy's ``dataset_coco.json`` / ``dataset_flickr30k.json``
  (``{"images": [{"filename", "split", "sentences": [{"raw"}]}]}``, shipped in
  ``caption_datasets.zip``: set ``annotations.member``); entries with ``split == "test"``.

Other kinds (``datasets.<name>.kind``; readers in :mod:`qshift.data.formats`): ``nocaps``
(NoCaps validation, one domain; images fetched one by one from their URLs), ``fashion-gen``
(the h5 release, converted to PNG + a BLIP-style caption list at download) and ``pedes``
(CUHK-PEDES / ICFG-PEDES test split, images by relative path, identity-level scoring:
``owner: identity`` in the manifest). RSICD, RSITMD and UCM-captions are ``karpathy``.

Images are matched by file *basename* (COCO and Flickr30k names are unique), so archives
with an extra top folder (``flickr30k-images/``, ``flickr30k_images/flickr30k_images/``)
work as they are. A test image absent from the archive is an error (count and first names):
a partial test set would silently change every reported number. Captions are stored raw;
:func:`~qshift.data.manifest.load_split` normalises them (docs/methods.md) when they are read.
COCO has a few images with 6-7 captions: ``captions_per_image: 5`` keeps the first five
(25,000 captions, as docs/methods.md counts them); ``null`` keeps all (25,010, as BLIP's code does).
"""

from __future__ import annotations

import logging
import os
import posixpath
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..progress import tqdm

from ..errors import ConfigError, InputError
from ..io import atomic_dir, read_json, sha256_file, write_json
from . import formats
from .download import apply_mirror, check_sha256, fetch, is_archive, safe_extract
from .manifest import make_image_entry, write_manifest

log = logging.getLogger("qshift.download")

RAW_DIR = "data/raw/{dataset}"  # download stage output (to move into config.py's path table)
DOWNLOAD_JSON = "download.json"
SPLIT = "test"
# karpathy: COCO, Flickr30k and every Karpathy-/BLIP-style file (RSICD, RSITMD, UCM-captions,
# a Fashion-Gen image folder + caption list); the others: qshift.data.formats
KINDS = ("builtin", "karpathy", "nocaps", "fashion-gen", "pedes", "cirr", "fashion-iq",  # cirr, fashion-iq: cir_real
         "clip-list")  # clip-list: video-audio clips (AudioSet / VGGSound lists; qshift.data.av_lists)
# the sources each kind reads (nocaps: images from the annotations' URLs unless images.path/url)
ROLES = {"karpathy": ("annotations", "images"), "pedes": ("annotations", "images"),
         "nocaps": ("annotations", "images"), "fashion-gen": ("annotations",),
         "cirr": ("annotations", "images"), "fashion-iq": ("annotations", "images")}
OPTIONAL_ROLES = {"nocaps": ("images",)}
SOURCE_KEYS = ("url", "sha256", "path", "member")
OWNERS = ("image", "identity")
# what to tell a user whose params lack a source that cannot be fetched from a public URL
HINTS = {
    "flickr30k": ("Flickr30k images are only distributed after a request form from the dataset's authors "
                  "(University of Illinois, https://forms.illinois.edu/sec/229675); download "
                  "flickr30k-images.tar.gz and set datasets.flickr30k.images.path to that archive (.tar.gz/.zip) "
                  "or to the extracted folder"),
    "fashion-gen": ("Fashion-Gen is distributed after a request form (fashion-gen.com, Element AI / SSENSE); set "
                    "datasets.fashion-gen.annotations.path to fashiongen_256_256_validation.h5 (or use kind: karpathy "
                    "with a BLIP-style caption list and an image folder)"),
    "cuhk-pedes": ("CUHK-PEDES is distributed by its authors on request (Li et al., CVPR 2017; "
                   "https://github.com/ShuangLI59/Person-Search-with-Natural-Language-Description); set "
                   "datasets.cuhk-pedes.annotations.path to reid_raw.json and images.path to its imgs/ folder "
                   "(or an archive of it)"),
    "icfg-pedes": ("ICFG-PEDES is distributed by its authors on request (Ding et al., 2021; "
                   "https://github.com/zifyloo/SSAN); set datasets.icfg-pedes.annotations.path to ICFG-PEDES.json "
                   "and images.path to its imgs/ folder (or an archive of it)"),
    "rsicd": ("RSICD's images and dataset_rsicd.json come from its authors' release (Lu et al., 2017; "
              "https://github.com/201528014227051/RSICD_optimal); set datasets.rsicd.annotations.path and "
              "images.path (RSICD_images folder or archive)"),
    "rsitmd": ("RSITMD comes from its authors' release (Yuan et al., 2022; https://github.com/xiaoyuan1996/AMFMN); "
               "set datasets.rsitmd.annotations.path to dataset_RSITMD.json and images.path to its images folder"),
    "ucm": ("UCM-captions comes from its authors' release (Qu et al., 2016); set datasets.ucm.annotations.path to "
            "its dataset.json and images.path to the imgs folder (or archive)"),
}


def dataset_kind(d: Mapping[str, Any]) -> str:
    """``builtin`` (generated by prepare) or ``karpathy`` (downloaded); no key means builtin."""
    return d.get("kind", "builtin") if isinstance(d, Mapping) else "builtin"


def validate_dataset(name: str, d: Any) -> None:
    """Check one ``datasets.<name>`` entry of a downloaded dataset (config.validate calls it)."""
    where = f"datasets.{name}"
    if not isinstance(d, Mapping):
        raise ConfigError(f"params: {where} must be a mapping")
    kind = dataset_kind(d)
    if kind not in KINDS:
        raise ConfigError(f"params: {where}.kind is {kind!r}; valid: {', '.join(KINDS)}")
    if kind == "builtin":
        return
    if kind == "clip-list":
        from .av_lists import check_dataset

        return check_dataset(dict(d), name)
    for role in ROLES[kind]:
        src = d.get(role)
        if src is None and role in OPTIONAL_ROLES.get(kind, ()):
            continue
        if not isinstance(src, Mapping):
            raise ConfigError(f"params: {where}.{role} must be a mapping with keys {', '.join(SOURCE_KEYS)}")
        unknown = sorted(set(src) - set(SOURCE_KEYS))
        if unknown:
            raise ConfigError(f"params: {where}.{role} has unknown key(s) {unknown}; valid: {', '.join(SOURCE_KEYS)}")
        check_sha256(src.get("sha256"), f"{where}.{role}.sha256")
        for key in ("url", "path", "member"):
            if src.get(key) is not None and not isinstance(src[key], str):
                raise ConfigError(f"params: {where}.{role}.{key} must be a string or null, got {src[key]!r}")
    for key in ("n_images", "captions_per_image", "n_identities", "workers"):
        v = d.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ConfigError(f"params: {where}.{key} must be a positive integer or null, got {v!r}")
    owner = d.get("owner", "identity" if kind == "pedes" else "image")
    if owner not in OWNERS:
        raise ConfigError(f"params: {where}.owner is {owner!r}; valid: {', '.join(OWNERS)}")
    if owner == "identity" and kind != "pedes":
        raise ConfigError(f"params: {where}.owner is 'identity', but only kind 'pedes' annotations name identities")
    caps = d.get("captions")
    if caps is not None:
        from .manifest import CAPTION_NORMALIZE

        if not isinstance(caps, Mapping) or set(caps) - {"normalize", "max_words"}:
            raise ConfigError(f"params: {where}.captions must be a mapping with keys normalize, max_words, got {caps!r}")
        if caps.get("normalize", "tcr") not in CAPTION_NORMALIZE:
            raise ConfigError(f"params: {where}.captions.normalize is {caps.get('normalize')!r}; valid: "
                              f"{', '.join(CAPTION_NORMALIZE)}")
        mw = caps.get("max_words", 30)
        if mw is not None and (isinstance(mw, bool) or not isinstance(mw, int) or mw < 1):
            raise ConfigError(f"params: {where}.captions.max_words must be a positive integer or null, got {mw!r}")
    if kind == "nocaps":
        formats.check_domain(where, d.get("domain"))
    if kind == "fashion-gen":
        formats.check_images_per_product(where, d.get("images_per_product"))
    if kind in ("cirr", "fashion-iq"):  # composed image retrieval (qshift.data.cir_real)
        from .cir_real import validate_cir_dataset

        validate_cir_dataset(name, d)


def validate_download(dl: Any) -> None:
    """Check the top-level ``download`` section."""
    if not isinstance(dl, Mapping):
        raise ConfigError("params: 'download' must be a mapping")
    for key in ("cache_dir", "mirror", "retries", "backoff", "timeout"):
        if key not in dl:
            raise ConfigError(f"params: download.{key} is missing")
    apply_mirror("", dl["mirror"])  # validates its shape
    if not isinstance(dl["retries"], int) or dl["retries"] < 0:
        raise ConfigError(f"params: download.retries must be an integer >= 0, got {dl['retries']!r}")
    for key in ("backoff", "timeout"):
        if not isinstance(dl[key], (int, float)) or dl[key] <= 0:
            raise ConfigError(f"params: download.{key} must be a positive number, got {dl[key]!r}")


# -- annotations ------------------------------------------------------------------------------
@dataclass
class AnnImage:
    image: str  # the path as the annotation file writes it (e.g. val2014/COCO_val2014_...jpg)
    captions: list[str]
    stored: str = ""  # its path under images/ (default: the basename; ReID: the relative path)
    identity: int | str | None = None  # the person (ReID benchmarks)
    domain: str | None = None  # NoCaps: in-domain / near-domain / out-domain
    url: str | None = None  # NoCaps: where the image is fetched from
    source_id: str | None = None  # NoCaps: the Open Images id

    def __post_init__(self) -> None:
        if not self.stored:
            self.stored = self.basename

    @property
    def basename(self) -> str:
        return posixpath.basename(self.image.replace("\\", "/"))


def _bad(path: Path, msg: str) -> InputError:
    return InputError(f"malformed annotation file {path}: {msg}")


def _captions(path: Path, where: str, value: Any) -> list[str]:
    caps = [value] if isinstance(value, str) else value
    if not isinstance(caps, list) or not caps or not all(isinstance(c, str) for c in caps):
        raise _bad(path, f"{where} must be a non-empty list of strings")
    return caps


def read_annotations(path: str | os.PathLike, captions_per_image: int | None = 5) -> tuple[str, list[AnnImage]]:
    """The test images of a BLIP- or Karpathy-style annotation file: (format, entries)."""
    path = Path(path)
    doc = read_json(path, "annotation file")
    out: list[AnnImage] = []
    if isinstance(doc, list):
        fmt = "blip"
        for i, e in enumerate(doc):
            if not isinstance(e, dict) or not isinstance(e.get("image"), str):
                raise _bad(path, f"[{i}] needs a string key 'image'")
            if "caption" not in e:
                raise _bad(path, f"[{i}] is missing key 'caption'")
            out.append(AnnImage(e["image"], _captions(path, f"[{i}].caption", e["caption"])))
    elif isinstance(doc, dict) and "images" in doc:
        fmt = "karpathy"
        if not isinstance(doc["images"], list):
            raise _bad(path, "'images' must be a list")
        for i, e in enumerate(doc["images"]):
            if not isinstance(e, dict) or not isinstance(e.get("filename"), str) or "split" not in e:
                raise _bad(path, f"images[{i}] needs keys 'filename' (string) and 'split'")
            if e["split"] != SPLIT:
                continue
            sents = e.get("sentences")
            if not isinstance(sents, list) or not all(isinstance(s, dict) and "raw" in s for s in sents):
                raise _bad(path, f"images[{i}].sentences must be a list of objects with key 'raw'")
            out.append(AnnImage(posixpath.join(e.get("filepath") or "", e["filename"]),
                                _captions(path, f"images[{i}].sentences[*].raw", [s["raw"] for s in sents])))
    else:
        raise _bad(path, "expected a list of {'image', 'caption'} entries (BLIP test file) or an object with "
                         "'images' (Karpathy dataset_*.json)")
    if not out:
        raise _bad(path, f"no images in the {SPLIT!r} split")
    seen: dict[str, str] = {}
    for a in out:
        if a.basename in seen:
            raise _bad(path, f"two test images share the file name {a.basename!r} ({seen[a.basename]!r}, {a.image!r})")
        seen[a.basename] = a.image
        if captions_per_image is not None:
            a.captions = a.captions[:captions_per_image]
    return fmt, out


def read_entries(fmt: str, path: Path, d: Mapping[str, Any]) -> tuple[str, list[AnnImage], int]:
    """(format, test entries, images in the whole file) of any supported annotation file.

    ``fmt`` is the dataset's kind, or the format a download record names (``blip`` /
    ``karpathy`` files are told apart by their content)."""
    cpi = d.get("captions_per_image")
    if fmt == "nocaps":
        entries, total = formats.read_nocaps(path, cpi, d.get("domain"), AnnImage)
        return "nocaps", entries, total
    if fmt == "pedes":
        entries = formats.read_pedes(path, cpi, AnnImage)
        return "pedes", entries, len(entries)
    found, entries = read_annotations(path, cpi)
    return found, entries, len(entries)


def _check_count(path: Path, name: str, d: Mapping[str, Any], entries: list[AnnImage], total: int | None = None) -> None:
    n = d.get("n_images")
    total = len(entries) if total is None else total
    if n is not None and total != n:
        what = "the file lists" if d.get("domain") else f"the {SPLIT} split has"
        raise InputError(f"annotation file {path}: {what} {total} images, expected {n} "
                         f"(datasets.{name}.n_images); is it the right file? (set n_images: null for a custom subset)")
    want = d.get("n_identities")
    if want is not None:
        got = len({e.identity for e in entries})
        if got != want:
            raise InputError(f"annotation file {path}: the {SPLIT} split has {got} identities, expected {want} "
                             f"(datasets.{name}.n_identities); is it the right file? (null: any)")


def _missing_error(missing: list[str], total: int, ann: Path, source: str, reasons: Mapping[str, str] | None = None
                   ) -> InputError:
    first = sorted(missing)[:5]
    if reasons:
        detail = "; ".join(f"{m}: {reasons[m]}" for m in first[:3])
        return InputError(f"{len(missing)} of {total} {SPLIT} images named in {ann} could not be fetched "
                          f"(e.g. {', '.join(first)}): {detail}. The images fetched so far stay in the download "
                          f"cache; rerun the download stage to retry the rest (or set images.path to a folder "
                          f"holding them). A partial benchmark is never prepared.")
    return InputError(f"{len(missing)} of {total} {SPLIT} images named in {ann} are not in {source} "
                      f"(e.g. {', '.join(first)}); is it the right image archive/folder (COCO: val2014, Flickr30k: "
                      f"flickr30k-images, ReID: the dataset's imgs/ folder)?")


# -- download stage ---------------------------------------------------------------------------
def _check_source(name: str, role: str, src: Mapping[str, Any]) -> None:
    if not src.get("path") and not src.get("url"):
        where = f"datasets.{name}.{role}"
        hint = HINTS.get(name, f"set {where}.url or {where}.path")
        raise ConfigError(f"params: {where} has neither a url nor a path. {hint}")


def _obtain(name: str, role: str, src: Mapping[str, Any], dl: Mapping[str, Any], progress: bool) -> tuple[Path, dict]:
    """A local file or folder for one source (``path`` wins over ``url``) and its record."""
    where = f"datasets.{name}.{role}"
    if src.get("path"):
        p = Path(os.path.expanduser(src["path"]))
        if not p.exists():
            raise InputError(f"{where}.path: {p} does not exist")
        rec: dict[str, Any] = {"role": role, "path": str(p.resolve()), "url": None}
        if p.is_file():
            digest = sha256_file(p)
            expected = check_sha256(src.get("sha256"), f"{where}.sha256")
            if expected is not None and digest != expected:
                raise InputError(f"checksum mismatch for {p} ({where}.path): expected sha256 {expected}, got {digest}")
            rec.update(size=p.stat().st_size, sha256=digest, verified=expected is not None)
        return p, rec
    _check_source(name, role, src)
    url = src["url"]
    basename = posixpath.basename(url.split("?", 1)[0]) or f"{role}.bin"
    dest = Path(dl["cache_dir"]) / name / basename
    got = fetch(url, dest, src.get("sha256"), mirror=dl.get("mirror"), retries=dl["retries"],
                backoff=float(dl["backoff"]), timeout=float(dl["timeout"]), progress=progress)
    return dest, {"role": role, **got.as_dict()}


def download_dataset(name: str, d: Mapping[str, Any], dl: Mapping[str, Any], raw_dir: str | os.PathLike,
                     progress: bool = True) -> dict:
    """Stage ``download``: fill ``raw_dir`` (atomically) for one ``datasets.<name>`` entry."""
    raw_dir = Path(raw_dir)
    kind = dataset_kind(d)
    if kind == "builtin":
        info = {"dataset": name, "kind": kind, "files": [],
                "note": "the built-in benchmark is generated by the prepare stage; nothing is downloaded"}
        with atomic_dir(raw_dir) as tmp:
            write_json(tmp / DOWNLOAD_JSON, info)
        return info
    validate_dataset(name, d)
    validate_download(dl)
    if kind == "clip-list":  # video-audio clip lists; the videos are the user's (qshift.data.av_lists)
        from .av_lists import download_clip_list

        return download_clip_list(name, dict(d), dl, raw_dir, progress)
    if kind in ("cirr", "fashion-iq"):  # composed image retrieval triplets (qshift.data.cir_real)
        from .cir_real import download_cir

        return download_cir(name, d, dl, raw_dir, progress)
    ann_src, img_src = d["annotations"], d.get("images") or {}
    for role in ROLES[kind]:  # fail before any download
        if role not in OPTIONAL_ROLES.get(kind, ()):
            _check_source(name, role, d[role])
    ann_file, ann_rec = _obtain(name, "annotations", ann_src, dl, progress)
    files = [ann_rec]
    with atomic_dir(raw_dir) as tmp:
        ann_dir = tmp / "annotations"
        if kind == "fashion-gen":  # the h5 holds the images: convert them, keep a BLIP-style caption list
            if ann_file.is_dir():
                raise InputError(f"datasets.{name}.annotations: {ann_file} is a folder; expected the Fashion-Gen "
                                 f"h5 file (fashiongen_256_256_validation.h5)")
            ann_dir.mkdir()
            ann_json = ann_dir / f"{ann_file.stem}.json"
            formats.convert_fashion_gen(ann_file, tmp / "images", ann_json, d.get("images_per_product", 1), progress)
        elif is_archive(ann_file):
            member = ann_src.get("member")
            if not member:
                raise ConfigError(f"params: datasets.{name}.annotations is an archive ({ann_file.name}); set "
                                  f"datasets.{name}.annotations.member to the JSON file inside it "
                                  f"(e.g. dataset_coco.json)")
            got = safe_extract(ann_file, ann_dir, select=lambda m: posixpath.basename(m)
                               if posixpath.basename(m) == member else None, progress=False)
            if not got:
                raise InputError(f"annotation archive {ann_file} has no member named {member!r} "
                                 f"(datasets.{name}.annotations.member)")
            ann_json = ann_dir / member
        else:
            if ann_file.is_dir():
                raise InputError(f"datasets.{name}.annotations: {ann_file} is a folder; expected the annotation "
                                 f"file (or an archive with annotations.member)")
            ann_dir.mkdir()
            ann_json = ann_dir / ann_file.name
            shutil.copyfile(ann_file, ann_json)
        fmt, entries, total = read_entries("karpathy" if kind == "fashion-gen" else kind, ann_json, d)
        _check_count(ann_json, name, d, entries, total)
        needed = {a.stored for a in entries}
        reasons: dict[str, str] = {}
        source = ""
        if kind == "fashion-gen":
            found = {a.stored for a in entries if (tmp / "images" / a.stored).is_file()}
            source = str(ann_file)
        elif kind == "nocaps" and not img_src.get("path"):
            found, reasons = _fetch_nocaps(name, entries, img_src, dl, tmp / "images", d.get("workers") or 8,
                                           progress)
            source = "their URLs"
            files.append({"role": "images", "url": img_src.get("url"), "per_image": True,
                          "n_fetched": len(found), "verified": False})
        else:
            img_path, img_rec = _obtain(name, "images", img_src, dl, progress)
            files.append(img_rec)
            source = str(img_path)
            by_path = kind == "pedes"  # ReID: relative paths (basenames repeat across camera folders)
            if img_path.is_dir():
                found = (formats.collect_relative(img_path, needed, tmp / "images", _link_or_copy, progress)
                         if by_path else _collect_folder(img_path, needed, tmp / "images", progress))
            else:
                if not is_archive(img_path):
                    raise InputError(f"datasets.{name}.images: {img_path} is neither a folder nor an archive "
                                     f"(.zip, .tar, .tar.gz, .tgz, .tar.bz2, .tar.xz)")
                select = (formats.suffix_matcher(needed) if by_path else
                          (lambda m: posixpath.basename(m) if posixpath.basename(m) in needed else None))
                written = safe_extract(img_path, tmp / "images", progress=progress, select=select)
                found = set(written.values())
        missing = sorted(needed - found)
        if missing:
            raise _missing_error(missing, len(needed), ann_json, source, reasons)
        info = {"dataset": name, "kind": kind, "split": SPLIT, "format": fmt,
                "annotations": f"annotations/{ann_json.name}", "images": "images",
                "n_images": len(entries), "n_captions": sum(len(a.captions) for a in entries),
                "files": files}
        if kind == "nocaps":
            info["domain"] = d.get("domain")
        if kind == "pedes":
            info["n_identities"] = len({a.identity for a in entries})
        write_json(tmp / DOWNLOAD_JSON, info)
    log.info("download %s: %d images, %d captions -> %s", name, info["n_images"], info["n_captions"], raw_dir)
    return info


def _fetch_nocaps(name: str, entries: list[AnnImage], img_src: Mapping[str, Any], dl: Mapping[str, Any],
                  out: Path, workers: int, progress: bool) -> tuple[set[str], dict[str, str]]:
    """Each NoCaps image from its own URL (``coco_url``, or ``images.url`` + file name) into the
    download cache (resumable, retried, mirrored like any download), then linked into ``out``."""
    cache = Path(dl["cache_dir"]) / name / "images"

    def one(url: str, dest: Path) -> None:
        fetch(url, dest, None, mirror=dl.get("mirror"), retries=dl["retries"], backoff=float(dl["backoff"]),
              timeout=float(dl["timeout"]), progress=False, warn_unverified=False)

    reasons = formats.fetch_each(entries, cache, lambda e: formats.nocaps_url(e, img_src), one, workers, progress)
    out.mkdir(parents=True, exist_ok=True)
    found = set()
    for a in entries:
        if a.stored not in reasons and (cache / a.stored).is_file():
            _link_or_copy(cache / a.stored, out / a.stored)
            found.add(a.stored)
    if reasons:
        log.warning("download %s: %d of %d images could not be fetched (e.g. %s)", name, len(reasons), len(entries),
                    ", ".join(sorted(reasons)[:5]))
    else:
        log.info("download %s: %d images fetched from their URLs (no per-image sha256 is published: "
                 "not verified)", name, len(found))
    return found, reasons


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link when source and target share a file system (no second copy), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _collect_folder(folder: Path, needed: set[str], out: Path, progress: bool) -> set[str]:
    """Link/copy the needed images found anywhere under ``folder`` into ``out`` (flat)."""
    out.mkdir(parents=True)
    found: dict[str, Path] = {}
    for root, dirs, files in os.walk(folder):  # os.walk does not follow symlinked folders
        dirs.sort()
        for f in sorted(files):
            if f in needed and f not in found:
                p = Path(root) / f
                if p.is_file() and not p.is_symlink():
                    found[f] = p
    for f, p in tqdm(sorted(found.items()), desc=f"copy {folder.name}", unit="file", disable=not progress,
                     leave=False):
        _link_or_copy(p, out / f)
    return set(found)


# -- prepare (conversion) ---------------------------------------------------------------------
def _manifest_meta(name: str, d: Mapping[str, Any], kind: str) -> dict:
    """The extra manifest meta of a benchmark that differs from the TCR protocol (none for COCO/Flickr)."""
    meta: dict[str, Any] = {}
    owner = d.get("owner", "identity" if kind == "pedes" else "image")
    if owner != "image":
        meta["owner"] = owner
    if d.get("captions") is not None:
        caps = d["captions"]
        meta["captions"] = {"normalize": caps.get("normalize", "tcr"), "max_words": caps.get("max_words", 30)}
    return meta


def prepare_real(name: str, d: Mapping[str, Any], raw_dir: str | os.PathLike, out_dir: str | os.PathLike,
                 progress: bool = True) -> dict:
    """``data/raw/<name>/`` -> ``data/<name>/`` (images/ + manifest.json), written atomically."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if dataset_kind(d) in ("cirr", "fashion-iq"):  # composed image retrieval triplets (qshift.data.cir_real)
        from .cir_real import prepare_cir

        return prepare_cir(name, d, raw_dir, out_dir, progress)
    info = read_json(raw_dir / DOWNLOAD_JSON, f"download record (run the download stage for {name!r} first)")
    if not isinstance(info, dict) or info.get("kind") not in KINDS[1:] or "annotations" not in info:
        raise InputError(f"{raw_dir / DOWNLOAD_JSON} is not a download record of a downloaded dataset "
                         f"(kind {info.get('kind') if isinstance(info, dict) else None!r}); rerun the download stage")
    kind = info["kind"]
    if kind != dataset_kind(d):
        raise InputError(f"{raw_dir / DOWNLOAD_JSON} was written for kind {kind!r}, but datasets.{name}.kind is "
                         f"{dataset_kind(d)!r}; rerun the download stage")
    if kind == "nocaps" and info.get("domain") != d.get("domain"):
        raise InputError(f"{raw_dir / DOWNLOAD_JSON} holds NoCaps domain {info.get('domain')!r}, but "
                         f"datasets.{name}.domain is {d.get('domain')!r}; rerun the download stage")
    ann = raw_dir / info["annotations"]
    fmt, entries, total = read_entries(kind if kind in ("nocaps", "pedes") else "karpathy", ann, d)
    _check_count(ann, name, d, entries, total)
    src_images = raw_dir / info.get("images", "images")
    missing = [a.stored for a in entries if not (src_images / a.stored).is_file()]
    if missing:
        raise _missing_error(missing, len(entries), ann, str(src_images))
    extra = _manifest_meta(name, d, kind)
    if extra.get("owner") == "identity" and any(a.identity is None for a in entries):
        raise ConfigError(f"params: datasets.{name}.owner is 'identity', but {ann} names no identities")
    images, sentid = [], 0
    with atomic_dir(out_dir) as tmp:
        (tmp / "images").mkdir()
        for k, a in enumerate(tqdm(entries, desc=f"prepare {name}", unit="image", disable=not progress, leave=False)):
            folder, base = posixpath.split(a.stored)
            (tmp / "images" / folder).mkdir(parents=True, exist_ok=True)
            _link_or_copy(src_images / a.stored, tmp / "images" / a.stored)
            entry = make_image_entry(k, base, SPLIT, a.captions, sentid, filepath=folder,
                                     identity=a.identity if extra.get("owner") == "identity" else None)
            entry["source_image"] = a.image
            if a.domain is not None:
                entry["domain"] = a.domain
            images.append(entry)
            sentid += len(a.captions)
        meta = {"generator": "qshift.data.karpathy", "annotation_format": fmt,
                "annotations": info["annotations"], "captions_per_image": d.get("captions_per_image"),
                "files": info.get("files", []), **extra}
        if kind == "nocaps":
            meta["domain"] = d.get("domain")
        write_manifest(tmp / "manifest.json", name, images, image_root="images", meta=meta)
    stats = {"dataset": name, "n_images": len(images), "n_captions": sentid}
    if extra.get("owner") == "identity":
        stats["n_identities"] = len({a.identity for a in entries})
    log.info("prepare %s: %s", name, stats)
    return stats
