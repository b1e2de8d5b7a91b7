"""The on-disk format every retrieval dataset uses: image files + a Karpathy-style manifest.

The built-in benchmark, COCO and Flickr30k (converted from Karpathy's ``dataset_*.json``)
and every corrupted query set are written in this one format, so no later stage can tell
them apart::

    {
      "format": "qshift-karpathy-v1",
      "dataset": "builtin",
      "image_root": "images",            # relative to the manifest's folder (or absolute)
      "images": [
        {"imgid": 0, "filepath": "test", "filename": "000000.png", "split": "test",
         "sentids": [0, 1, 2, 3, 4],
         "sentences": [{"sentid": 0, "imgid": 0, "raw": "a red circle ...", "tokens": [...]}, ...]},
        ...
      ],
      "meta": {...}                      # free-form provenance (generator, corruption, seed)
    }

``load_split`` validates the file and returns a :class:`Split` whose captions are
normalised as the TCR evaluation protocol does (docs/methods.md).

Two optional ``meta`` keys describe benchmarks that differ from that protocol (absent: the
protocol, so every existing manifest reads exactly as before):

- ``"owner": "identity"`` — person re-identification: every image entry carries an
  ``"identity"`` (the person), and retrieval is scored at the identity level
  (:mod:`qshift.evaluation`); :attr:`Split.image_owner` is then the identity per image;
- ``"captions": {"normalize": "tcr" | "whitespace", "max_words": N | null}`` — the benchmark's own
  caption normalisation: ``tcr`` (the default) lowercases and replaces ``. ! " ( ) * # : ; ~``
  by spaces; ``whitespace`` only collapses whitespace (the model's tokenizer does the rest, as the
  ReID code does); ``max_words`` caps the words (default 30; null: no cap).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..errors import InputError
from ..io import read_json, write_json

FORMAT = "qshift-karpathy-v1"
SPLITS = ("train", "val", "test", "restval")
_PUNCT = re.compile(r'[.!"()*#:;~]')
_WORD = re.compile(r"[a-z0-9']+")
OWNER_KINDS = ("image", "identity")  # qshift.evaluation.OWNERS
CAPTION_NORMALIZE = ("tcr", "whitespace")
DEFAULT_MAX_WORDS = 30


def normalize_caption(text: str, max_words: int | None = 30, kind: str = "tcr") -> str:
    """Lowercase, replace . ! " ( ) * # : ; ~ by spaces, keep at most ``max_words`` words
    (``kind="whitespace"``: only collapse whitespace; ``max_words=None``: no cap)."""
    words = (_PUNCT.sub(" ", text.lower()) if kind == "tcr" else text).split()
    return " ".join(words if max_words is None else words[:max_words])


@dataclass
class Split:
    """One split of a manifest, ready for retrieval: images, captions and their links."""

    dataset: str
    manifest: Path
    image_ids: np.ndarray  # (N_img,) imgid per image
    image_paths: list[Path]
    sentids: np.ndarray  # (N_txt,) sentid per caption
    captions: list[str]  # normalised
    txt2img: np.ndarray  # (N_txt,) index into images of each caption's image
    meta: dict = field(default_factory=dict)
    owner_kind: str = "image"  # what retrieval scores: the image (default) or the person identity
    identities: np.ndarray | None = None  # (N_img,) identity per image (owner_kind "identity")

    @property
    def image_owner(self) -> np.ndarray:
        """The owner id of each image: its imgid, or its identity for identity-level benchmarks."""
        return self.image_ids if self.identities is None else self.identities

    @property
    def n_images(self) -> int:
        return len(self.image_paths)

    @property
    def n_captions(self) -> int:
        return len(self.captions)

    def img2txt(self) -> list[np.ndarray]:
        order = np.argsort(self.txt2img, kind="stable")
        bounds = np.searchsorted(self.txt2img[order], np.arange(self.n_images + 1))
        return [order[bounds[i] : bounds[i + 1]] for i in range(self.n_images)]


def _fail(path: Path, msg: str) -> InputError:
    return InputError(f"malformed manifest {path}: {msg}")


def validate_manifest(doc: Any, path: Path) -> None:
    if not isinstance(doc, dict):
        raise _fail(path, f"top level must be an object, got {type(doc).__name__}")
    if "images" not in doc:
        raise _fail(path, "missing key 'images'")
    if not isinstance(doc["images"], list):
        raise _fail(path, "'images' must be a list")
    owner = _owner_kind(doc, path)
    _caption_norm(doc, path)  # validates meta.captions
    seen_img, seen_sent, seen_file = set(), set(), {}
    for i, im in enumerate(doc["images"]):
        where = f"images[{i}]"
        if not isinstance(im, dict):
            raise _fail(path, f"{where} must be an object")
        for key in ("imgid", "filename", "split", "sentences"):
            if key not in im:
                raise _fail(path, f"{where} is missing key {key!r}")
        rel = _relative_image_path(path, where, im)
        if rel in seen_file:
            raise _fail(path, f"{where} (imgid {im['imgid']!r}) names the same image file {rel!r} as "
                              f"imgid {seen_file[rel]!r}: an image may appear once")
        seen_file[rel] = im["imgid"]
        if im["split"] not in SPLITS:
            raise _fail(path, f"{where}.split is {im['split']!r}; valid: {', '.join(SPLITS)}")
        if im["imgid"] in seen_img:
            raise _fail(path, f"{where}.imgid {im['imgid']!r} is duplicated")
        seen_img.add(im["imgid"])
        if owner == "identity" and (isinstance(im.get("identity"), bool)
                                    or not isinstance(im.get("identity"), (int, str))):
            raise _fail(path, f"{where} needs an 'identity' (integer or string): meta.owner is 'identity', "
                              f"got {im.get('identity')!r}")
        if not isinstance(im["sentences"], list) or not im["sentences"]:
            raise _fail(path, f"{where}.sentences must be a non-empty list")
        for j, s in enumerate(im["sentences"]):
            if not isinstance(s, dict) or "raw" not in s or "sentid" not in s:
                raise _fail(path, f"{where}.sentences[{j}] needs keys 'sentid' and 'raw'")
            if not isinstance(s["raw"], str):
                raise _fail(path, f"{where}.sentences[{j}].raw must be a string")
            if s["sentid"] in seen_sent:
                raise _fail(path, f"{where}.sentences[{j}].sentid {s['sentid']!r} is duplicated")
            seen_sent.add(s["sentid"])


def _owner_kind(doc: dict, path: Path) -> str:
    meta = doc.get("meta") or {}
    if not isinstance(meta, dict):
        raise _fail(path, "'meta' must be an object")
    owner = meta.get("owner", "image")
    if owner not in OWNER_KINDS:
        raise _fail(path, f"meta.owner is {owner!r}; valid: {', '.join(OWNER_KINDS)}")
    return owner


def _caption_norm(doc: dict, path: Path) -> tuple[str, int | None]:
    """(normalize kind, max words) of a manifest: meta.captions, else the TCR protocol's."""
    spec = (doc.get("meta") or {}).get("captions")
    if spec is None:
        return "tcr", DEFAULT_MAX_WORDS
    if not isinstance(spec, dict):
        raise _fail(path, f"meta.captions must be an object with keys normalize, max_words, got {spec!r}")
    kind, words = spec.get("normalize", "tcr"), spec.get("max_words", DEFAULT_MAX_WORDS)
    if kind not in CAPTION_NORMALIZE:
        raise _fail(path, f"meta.captions.normalize is {kind!r}; valid: {', '.join(CAPTION_NORMALIZE)}")
    if words is not None and (isinstance(words, bool) or not isinstance(words, int) or words < 1):
        raise _fail(path, f"meta.captions.max_words must be a positive integer or null, got {words!r}")
    return kind, words


def _relative_image_path(path: Path, where: str, im: dict) -> str:
    """``filepath/filename`` as a path that stays inside the manifest's image root."""
    parts = []
    for key in ("filepath", "filename"):
        value = im.get(key, "")
        if not isinstance(value, str):
            raise _fail(path, f"{where}.{key} must be a string, got {value!r}")
        parts.append(value)
    if not parts[1]:
        raise _fail(path, f"{where}.filename is empty")
    rel = Path(parts[0]) / parts[1]
    if rel.is_absolute() or ".." in rel.parts or parts[1] in (".", ".."):
        raise _fail(path, f"{where} image path {str(rel)!r} must stay inside the image root "
                          f"(no absolute path, no '..')")
    return rel.as_posix()


def read_manifest(path: str | Path) -> dict:
    path = Path(path)
    doc = read_json(path, "manifest")
    validate_manifest(doc, path)
    return doc


def image_root(doc: dict, manifest_path: Path) -> Path:
    root = Path(doc.get("image_root", "."))
    return root if root.is_absolute() else (manifest_path.parent / root)


def load_split(path: str | Path, split: str = "test", check_files: bool = True,
               max_words: int | None = None) -> Split:
    """Load one split; captions are normalised; image files are checked to exist.

    ``max_words`` overrides the manifest's cap (default: ``meta.captions.max_words``, else 30)."""
    path = Path(path)
    doc = read_manifest(path)
    owner = _owner_kind(doc, path)
    norm, words = _caption_norm(doc, path)
    max_words = words if max_words is None else max_words
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    root = image_root(doc, path)
    root_real = root.resolve()
    images = [im for im in doc["images"] if im["split"] == split]
    if not images:
        present = sorted({im["split"] for im in doc["images"]})
        raise InputError(f"manifest {path} has no images in split {split!r} (present: {present})")
    image_ids, paths, sentids, captions, txt2img, identities = [], [], [], [], [], []
    for k, im in enumerate(images):
        p = root / im.get("filepath", "") / im["filename"]
        if check_files and not p.is_file():
            raise InputError(f"image file listed in {path} not found: {p}")
        if check_files and root_real not in p.resolve().parents:  # e.g. a symlink out of the dataset
            raise InputError(f"image file listed in {path} resolves outside its image root {root}: "
                             f"{p} -> {p.resolve()}")
        image_ids.append(im["imgid"])
        paths.append(p)
        if owner == "identity":
            identities.append(im["identity"])
        for s in im["sentences"]:
            caption = normalize_caption(s["raw"], max_words, norm)
            if not caption and "clean" not in s:  # an original caption (a corrupted one may be emptied)
                raise InputError(f"caption {s['sentid']!r} of image {im['imgid']!r} in {path} is empty after "
                                 f"normalisation (raw {s['raw']!r})")
            sentids.append(s["sentid"])
            captions.append(caption)
            txt2img.append(k)
    return Split(
        dataset=str(doc.get("dataset", path.parent.name)),
        manifest=path,
        image_ids=np.asarray(image_ids),
        image_paths=paths,
        sentids=np.asarray(sentids),
        captions=captions,
        txt2img=np.asarray(txt2img, dtype=np.int64),
        meta=dict(doc.get("meta", {})),
        owner_kind=owner,
        identities=_identity_ids(identities) if owner == "identity" else None,
    )


def _identity_ids(identities: list) -> np.ndarray:
    """Identities as int64 owner ids: integers as they are, strings numbered in sorted order."""
    if all(isinstance(v, int) for v in identities):
        return np.asarray(identities, dtype=np.int64)
    index = {v: i for i, v in enumerate(sorted({str(v) for v in identities}))}
    return np.asarray([index[str(v)] for v in identities], dtype=np.int64)


def make_image_entry(imgid: int, filename: str, split: str, captions: Iterable[str],
                     first_sentid: int, filepath: str = "", identity: int | str | None = None) -> dict:
    sents = []
    for j, raw in enumerate(captions):
        sents.append({"sentid": first_sentid + j, "imgid": imgid, "raw": raw,
                      "tokens": _WORD.findall(raw.lower())})
    entry = {"imgid": imgid, "filepath": filepath, "filename": filename, "split": split,
             "sentids": [s["sentid"] for s in sents], "sentences": sents}
    if identity is not None:
        entry["identity"] = identity
    return entry


def write_manifest(path: str | Path, dataset: str, images: list[dict], image_root: str = "images",
                   meta: dict | None = None) -> None:
    doc = {"format": FORMAT, "dataset": dataset, "image_root": image_root,
           "images": images, "meta": meta or {}}
    validate_manifest(doc, Path(path))
    write_json(path, doc, indent=None)
