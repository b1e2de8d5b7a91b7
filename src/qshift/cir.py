"""The composed image retrieval (CIR) task: triplet queries, the target gallery, the composed model.

Direction ``cir`` (:mod:`qshift.tasks`): a query is a triplet's (reference image, modification
text), the gallery is the split's target images plus distractors (``targets.json`` beside the
dataset's manifest, :mod:`qshift.data.builtin_cir`), a hit@K is the triplet's target among the
top K (R@1/5/10/50). Query shift: a cell ``<image corruption>-s<severity>`` reads the corrupted
references (the ``corrupt_images`` stage's folder, modification texts clean), a cell
``<text corruption>-s<level>`` the corrupted modification texts (``corrupt_text``'s manifest,
references clean) — the same stages, seeds and implementations as i2t / t2i queries.

A triplet whose reference image or target is missing is an :class:`~qshift.errors.InputError`
naming the triplet; an empty modification text is a valid query (the text tower encodes the
empty sentence).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .data.manifest import _caption_norm, image_root, normalize_caption, read_manifest
from .cir_plan import combiner_kind  # the task's torch-free half (planning): qshift.cir_plan
from .errors import InputError
from .progress import tqdm

TARGETS = "targets.json"
CIR_GALLERY_KEYS = ("task", "image", "image_owner", "model", "manifest_sha256", "split")


@dataclass
class CIRSplit:
    """One split's triplets: per query its reference image, modification text and target id."""

    dataset: str
    manifest: Path
    sentids: np.ndarray  # (N,) the triplet ids (the modification sentence's sentid): outcomes' query ids
    image_ids: np.ndarray  # (N,) each triplet's reference imgid
    image_paths: list[Path]  # (N,) reference images
    captions: list[str]  # (N,) modification texts (normalised; may be empty)
    targets: np.ndarray  # (N,) target imgid (targets.json)
    meta: dict = field(default_factory=dict)
    owner_kind: str = "image"
    groups: list | None = None  # (N,) FashionIQ's category per triplet (sentence key ``group``); None: no groups
    members: list | None = None  # (N,) CIRR's img_set members per triplet (imgids; sentence key ``members``)

    @property
    def n_queries(self) -> int:
        return len(self.sentids)


def _triplet(sentid, imgid, text: str) -> str:
    return f"CIR triplet {sentid!r} (reference image {imgid!r}, modification {text!r})"


def load_triplets(path: str | Path, split: str = "test", check_files: bool = True) -> CIRSplit:
    """The triplets of ``split`` in a CIR manifest (the dataset's, or a corrupted copy of it)."""
    path = Path(path)
    doc = read_manifest(path)
    norm, words = _caption_norm(doc, path)
    root = image_root(doc, path)
    images = [im for im in doc["images"] if im["split"] == split]
    if not images:
        present = sorted({im["split"] for im in doc["images"]})
        raise InputError(f"CIR manifest {path} has no triplets in split {split!r} (present: {present})")
    sentids, ref_ids, paths, texts, targets, groups, members = [], [], [], [], [], [], []
    for im in images:
        own = root / im.get("filepath", "") / im["filename"]
        for s in im["sentences"]:
            what = _triplet(s["sentid"], im["imgid"], s["raw"])
            p = own
            if "reference" in s:  # a composed stream (qshift.cir_streams): this triplet's own reference file
                if not isinstance(s["reference"], str) or not s["reference"]:
                    raise InputError(f"{what} in {path}: 'reference' must be a file path relative to the "
                                     f"image root, got {s['reference']!r}")
                p = root / s["reference"]
            if "target" not in s or isinstance(s["target"], bool) or not isinstance(s["target"], int):
                raise InputError(f"{what} in {path} has no target (an integer imgid of {TARGETS}), "
                                 f"got {s.get('target')!r}")
            if check_files and not p.is_file():
                raise InputError(f"{what} in {path}: reference image {p} not found")
            sentids.append(s["sentid"])
            ref_ids.append(im["imgid"])
            paths.append(p)
            texts.append(normalize_caption(s["raw"], words, norm))  # empty: a valid query
            targets.append(s["target"])
            groups.append(s.get("group"))
            members.append(s.get("members"))
    return CIRSplit(str(doc.get("dataset", path.parent.name)), path, np.asarray(sentids), np.asarray(ref_ids),
                    paths, texts, np.asarray(targets, dtype=np.int64), dict(doc.get("meta", {})),
                    groups=groups if any(g is not None for g in groups) else None,
                    members=members if all(m is not None for m in members) else None)


@dataclass
class CIRGallery:
    manifest: Path
    image_ids: np.ndarray
    image_paths: list[Path]
    roles: list[str]
    groups: list | None = None  # FashionIQ: each image's category
    protocol: dict = field(default_factory=dict)  # the real benchmarks' scoring rules (qshift.data.cir_real)


def targets_path(dataset_dir: str | Path) -> Path:
    return Path(dataset_dir) / TARGETS


def load_gallery_split(dataset_dir: str | Path, split: str = "test") -> CIRGallery:
    """The gallery of ``split``: every image of ``targets.json`` in that split (targets and distractors)."""
    path = targets_path(dataset_dir)
    if not path.is_file():
        raise InputError(f"CIR gallery {path} not found (the prepare stage of a CIR benchmark writes it)")
    doc = read_manifest(path)
    root = image_root(doc, path)
    images = [im for im in doc["images"] if im["split"] == split]
    if not images:
        raise InputError(f"CIR gallery {path} has no images in split {split!r}")
    paths = []
    for im in images:
        p = root / im.get("filepath", "") / im["filename"]
        if not p.is_file():
            raise InputError(f"CIR gallery image {p} (imgid {im['imgid']!r}, listed in {path}) not found")
        paths.append(p)
    meta = doc.get("meta") or {}
    protocol = {k: meta[k] for k in ("protocol", "exclude_reference", "per_group", "recall_subset") if meta.get(k)}
    groups = [im.get("group") for im in images] if protocol.get("per_group") else None
    if groups is not None and any(g is None for g in groups):
        raise InputError(f"CIR gallery {path} scores per group (meta.per_group), but "
                         f"{sum(g is None for g in groups)} of its images have no 'group'")
    return CIRGallery(path, np.asarray([im["imgid"] for im in images]), paths,
                      [str(im.get("role", "target")) for im in images], groups, protocol)


def check_targets(queries: CIRSplit, gallery_ids) -> None:
    """Every triplet's target is in the gallery; else an InputError naming the first triplet that lacks it."""
    known = set(np.asarray(gallery_ids).tolist())
    missing = [i for i, t in enumerate(queries.targets.tolist()) if t not in known]
    if missing:
        i = missing[0]
        raise InputError(f"{_triplet(int(queries.sentids[i]), int(queries.image_ids[i]), queries.captions[i])} in "
                         f"{queries.manifest}: target {int(queries.targets[i])} is not in the gallery "
                         f"({len(missing)} of {queries.n_queries} triplets lack their target)")


# -- batches ------------------------------------------------------------------------------------------

class _Triplets(Dataset):
    def __init__(self, paths, texts, transform, cache_for=None):
        from .gallery import ImageFiles

        self.images, self.texts = ImageFiles(paths, transform, cache_for), list(texts)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i):
        try:
            return self.images[i], self.texts[i]
        except InputError as e:
            raise InputError(f"reference image: {e}") from None


def query_loader(model, queries: CIRSplit, order=None, batch_size: int = 64, num_workers: int = 0,
                 cache: bool = False) -> DataLoader:
    """Batches of packed composed queries (:func:`qshift.models.composed.pack`) in ``order``;
    ``cache``: reuse this process's preprocessed reference images (:data:`qshift.gallery.QUERY_IMAGES`)."""
    from .models.composed import pack

    idx = range(queries.n_queries) if order is None else order
    ds = _Triplets([queries.image_paths[i] for i in idx], [queries.captions[i] for i in idx], model.image_transform(),
                   model if cache else None)

    def collate(items):
        return pack(torch.stack([x for x, _ in items]), model.tokenize([t for _, t in items]))

    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate)


@torch.no_grad()
def encode_images(model, paths, batch_size: int = 256, desc: str = "images") -> torch.Tensor:
    from .gallery import ImageFiles

    loader = DataLoader(ImageFiles(paths, model.image_transform()), batch_size=batch_size, shuffle=False)
    return torch.cat([model.encode("image", b).cpu() for b in tqdm(loader, desc=desc, leave=False)])


@torch.no_grad()
def encode_texts(model, texts, batch_size: int = 256) -> torch.Tensor:
    return torch.cat([model.encode("text", model.tokenize(texts[i:i + batch_size])).cpu()
                      for i in range(0, len(texts), batch_size)])


# -- the gallery file ---------------------------------------------------------------------------------

def encode_cir_gallery(model, dataset_dir: str | Path, out: str | Path, batch_size: int = 256,
                       split: str = "test") -> dict:
    """Encode the split's gallery (targets + distractors) with the image tower, once; check the
    split's triplets against it (a missing target names its triplet)."""
    from .io import atomic_path, sha256_file

    gal = load_gallery_split(dataset_dir, split)
    check_targets(load_triplets(Path(dataset_dir) / "manifest.json", split), gal.image_ids)
    image = encode_images(model, gal.image_paths, batch_size, "gallery images")
    doc = {"task": "cir", "split": split, "image": image, "image_owner": torch.as_tensor(gal.image_ids),
           "model": model.name, "manifest_sha256": sha256_file(gal.manifest)}
    if model.preprocess != "native":
        doc["preprocess"] = model.preprocess
    if gal.protocol:  # CIRR / FashionIQ (qshift.data.cir_real); the built-in gallery file is unchanged
        doc["protocol"] = dict(gal.protocol)
        if gal.groups is not None:
            doc["image_group"] = list(gal.groups)
    with atomic_path(out, ".pt") as tmp, open(tmp, "wb") as fh:
        torch.save(doc, fh)
    return {"n_images": len(image), "n_targets": gal.roles.count("target"), "dim": image.shape[1]}


# -- the benchmarks' scoring rules -------------------------------------------------------------------

def candidate_mask(queries: CIRSplit, gallery: dict):
    """The benchmark's candidates per query, as a function of a batch's query indices returning a
    (B, G) bool mask of the gallery items that are *not* candidates (None: every item is one).

    - ``exclude_reference`` (CIRR): the query's reference image is removed from the ranking, as
      CLIP4Cir's ``compute_cirr_val_metrics`` deletes it from the sorted gallery names;
    - ``per_group`` (FashionIQ): only the gallery of the query's category ranks (each category
      is its own retrieval problem, CLIP4Cir's ``fashioniq_val_retrieval`` per dress type).

    Scoring only: the TTA methods see the scores over the whole gallery (a CIR adaptation
    protocol is not published; RECONSTRUCTION, docs/rest.md)."""
    protocol = gallery.get("protocol") or {}
    excl, per_group = bool(protocol.get("exclude_reference")), bool(protocol.get("per_group"))
    if not excl and not per_group:
        return None
    g_owner = torch.as_tensor(gallery["image_owner"])
    ref = torch.as_tensor(np.asarray(queries.image_ids, dtype=np.int64))
    if per_group:
        g_groups = list(gallery.get("image_group") or [])
        if len(g_groups) != len(g_owner) or queries.groups is None or any(g is None for g in queries.groups):
            raise InputError(f"CIR queries {queries.manifest}: the gallery is scored per category (FashionIQ), so "
                             f"every triplet needs a 'group' and the gallery file its image groups; rebuild both "
                             f"from the same prepared dataset")
        names = sorted(set(g_groups) | set(queries.groups))
        code = {g: i for i, g in enumerate(names)}
        gg = torch.as_tensor([code[g] for g in g_groups])
        qg = torch.as_tensor([code[g] for g in queries.groups])

    def mask(idx) -> torch.Tensor:
        idx = torch.as_tensor(np.asarray(idx, dtype=np.int64))
        out = torch.zeros(len(idx), len(g_owner), dtype=torch.bool)
        if excl:
            out |= g_owner[None, :] == ref[idx][:, None]
        if per_group:
            out |= gg[None, :] != qg[idx][:, None]
        return out

    return mask


SUBSET_KS = (1, 2, 3)  # CIRR's Recall_subset@K


def subset_mask(queries: CIRSplit, gallery: dict):
    """CIRR's Recall_subset (``recall_subset``): per query, the gallery items outside its
    ``img_set.members`` or equal to its reference are not candidates (CLIP4Cir's
    ``compute_cirr_val_metrics``: the ranking without the reference, kept to the members); a
    function of a batch's query indices as :func:`candidate_mask`, or None."""
    if not (gallery.get("protocol") or {}).get("recall_subset"):
        return None
    if queries.members is None:
        raise InputError(f"CIR queries {queries.manifest}: the gallery reports CIRR's Recall_subset, but the "
                         f"triplets carry no 'members'; rebuild both from the same prepared dataset")
    g_owner = torch.as_tensor(gallery["image_owner"])
    pos = {int(g): i for i, g in enumerate(g_owner.tolist())}
    keep = torch.ones(queries.n_queries, len(g_owner), dtype=torch.bool)
    for i, ms in enumerate(queries.members):
        keep[i, [pos[int(m)] for m in ms if int(m) in pos and int(m) != int(queries.image_ids[i])]] = False
    return lambda idx: keep[torch.as_tensor(np.asarray(idx, dtype=np.int64))]


def group_names(queries: CIRSplit, gallery: dict) -> list | None:
    """The per-query groups a run reports R@K for (FashionIQ's categories), None when not per group."""
    if not (gallery.get("protocol") or {}).get("per_group"):
        return None
    return list(queries.groups or [])


def check_gallery(doc: dict, path) -> None:
    missing = [k for k in CIR_GALLERY_KEYS if k not in doc]
    if missing:
        raise InputError(f"CIR gallery embeddings {path} are missing keys: {', '.join(missing)}")


# -- the examples sheet -------------------------------------------------------------------------------

def composed_examples(dataset_dir: str | Path, sentids, md_path: str | Path | None = None,
                      sheet_image: str | Path | None = None) -> list[dict]:
    """The composed queries behind the examples stage's captions (modification texts): per
    sentid its triplet (pairid where the benchmark has one), reference and target image; with
    ``md_path``, a "Composed queries" section is appended to the text examples."""
    from .io import read_json, write_text

    dataset_dir = Path(dataset_dir)
    man, tg = dataset_dir / "manifest.json", targets_path(dataset_dir)
    doc, gdoc = read_json(man, "CIR manifest"), read_json(tg, "CIR gallery")
    target_file = {im["imgid"]: (image_root(gdoc, tg) / im.get("filepath", "") / im["filename"])
                   for im in gdoc["images"]}
    by_sent = {s["sentid"]: (im, s) for im in doc["images"] if im["split"] == "test" for s in im["sentences"]}
    out = []
    for sid in sentids:
        if sid not in by_sent:
            raise InputError(f"CIR manifest {man} has no test triplet with sentid {sid!r}")
        im, s = by_sent[sid]
        ref = image_root(doc, man) / im.get("filepath", "") / im["filename"]
        out.append({"sentid": sid, "triplet": s.get("pairid", sid), "modification": s["raw"],
                    "reference": str(ref), "target": str(target_file.get(s.get("target"), "")),
                    **({"group": s["group"]} if "group" in s else {})})
    if md_path is not None:
        lines = ["## Composed queries", "",
                 "Each caption above is the modification text of a composed query; with its reference image it "
                 "is the query, and the target is what it should retrieve. Image corruptions shift the reference "
                 "(the contact sheet" + (f" shows `{Path(sheet_image).name}`" if sheet_image else "") + "), text "
                 "corruptions the modification text, one side per cell.", "",
                 "| caption | triplet | reference image | target image |", "|---|---|---|---|"]
        for i, e in enumerate(out):
            lines.append(f"| {i + 1} | {e['triplet']}{' (' + e['group'] + ')' if 'group' in e else ''} | "
                         f"`{Path(e['reference']).name}` | `{Path(e['target']).name}` |")
        write_text(md_path, Path(md_path).read_text() + "\n".join(lines) + "\n")
    return out


# -- the composed model -------------------------------------------------------------------------------

def load_composed(cfg: dict, base):
    """The job's composed model: ``base`` (the loaded model) + the configured combiner."""
    from .config import MODEL_DIR
    from .models.composed import ComposedModel, embed_dim, load_combiner

    return ComposedModel(base, load_combiner(combiner_kind(cfg), MODEL_DIR.format(model=cfg["model"]["name"]),
                                             embed_dim(base)))


# -- tuning (stage tune, qshift.tune): the validation triplets under validation-only corruptions --------

def tune_gallery(cfg: dict, model, progress: bool = False) -> tuple[dict, dict]:
    """The val split's gallery (its targets and distractors), encoded once by the frozen composed
    encoder's image tower — never the test split's — and what the report says about the split."""
    from .config import DATASET_DIR

    ddir = Path(DATASET_DIR.format(dataset=cfg["benchmark"]))
    gal = load_gallery_split(ddir, "val")
    trip = load_triplets(ddir / "manifest.json", "val")
    check_targets(trip, gal.image_ids)
    image = encode_images(model, gal.image_paths, cfg["model"].get("batch_size", 256), "val gallery images")
    gallery = {"task": "cir", "split": "val", "image": image, "image_owner": torch.as_tensor(gal.image_ids)}
    if gal.protocol:
        gallery["protocol"] = dict(gal.protocol)
        if gal.groups is not None:
            gallery["image_group"] = list(gal.groups)
    return gallery, {"n_triplets": trip.n_queries, "n_gallery": len(image),
                     "split_desc": f"{trip.n_queries} triplets, a gallery of {len(image)} images"}


def tune_queries(cfg: dict, direction: str, workdir: str | Path, progress: bool = False) -> dict:
    """{cell label: the val triplets under one validation-only corruption}: ``tune.image`` corrupts
    every reference image (seeded per image as a reported image cell is), ``tune.text`` every
    modification text (seeded per triplet; an empty text stays empty), files under ``workdir``."""
    from .config import DATASET_DIR
    from .corrupt.text import corrupt_texts
    from .io import derive_seed
    from .tune import corrupt_image_files

    manifest = Path(DATASET_DIR.format(dataset=cfg["benchmark"])) / "manifest.json"
    trip = load_triplets(manifest, "val")
    t = cfg["tune"]
    img, txt = t.get("image") or {}, t.get("text") or {}
    sets = {}
    for c in img.get("corruptions") or []:
        sev = int(img["severity"])
        paths = corrupt_image_files(trip.dataset, trip.image_ids.tolist(), trip.image_paths, c, sev,
                                    Path(workdir) / "cir" / f"{c}-s{sev}")
        sets[f"{c}-s{sev}"] = dataclasses.replace(trip, image_paths=paths)
    doc = read_manifest(manifest)
    raws = {s["sentid"]: s["raw"] for im in doc["images"] if im["split"] == "val" for s in im["sentences"]}
    norm, words = _caption_norm(doc, manifest)
    for c in txt.get("corruptions") or []:
        lv = int(txt["level"])
        sids = trip.sentids.tolist()
        keep = [i for i, sid in enumerate(sids) if raws[sid].strip()]  # an empty modification stays empty
        texts = corrupt_texts(c, [raws[sids[i]] for i in keep], lv,
                              [derive_seed(trip.dataset, int(sids[i]), c, lv) for i in keep])
        captions = list(trip.captions)
        for i, text in zip(keep, texts):
            captions[i] = normalize_caption(text, words, norm)
        sets[f"{c}-s{lv}"] = dataclasses.replace(trip, captions=captions)
    return sets


# -- training (the pretrain stage of a CIR benchmark) -------------------------------------------------

def split_embeddings(model, dataset_dir: str | Path, split: str, batch_size: int = 256) -> dict:
    """Frozen-tower embeddings of a split's triplets and gallery, for :func:`train_combiner`."""
    q = load_triplets(Path(dataset_dir) / "manifest.json", split)
    gal = load_gallery_split(dataset_dir, split)
    check_targets(q, gal.image_ids)
    pos = {int(g): i for i, g in enumerate(gal.image_ids.tolist())}
    doc = read_manifest(targets_path(dataset_dir))
    neg_of = {im["triplet"]: pos[im["imgid"]] for im in doc["images"]
              if im["split"] == split and im.get("role") == "distractor"}
    return {"zi": encode_images(model, q.image_paths, batch_size, f"{split} references"),
            "zt": encode_texts(model, q.captions, batch_size),
            "gallery": encode_images(model, gal.image_paths, batch_size, f"{split} gallery"),
            "target": torch.as_tensor([pos[int(t)] for t in q.targets.tolist()]),
            "distractor": torch.as_tensor([neg_of.get(int(s), -1) for s in q.sentids.tolist()]),
            "q_owner": q.targets, "g_owner": gal.image_ids}


def pretrain_combiner(cfg: dict, dataset_dir: str | Path, model_dir: str | Path, device, progress: bool = True) -> dict:
    """Fit the combiner over the freshly trained CLIP (restval triplets; val for the figures) and
    save it into the model folder. Returns its figures (R@K trained vs zero-shot sum on val)."""
    from .models import load_model
    from .models.composed import save_combiner, train_combiner

    base = load_model(f"local-dir:{model_dir}", device)
    train = split_embeddings(base, dataset_dir, "restval")
    try:
        val = split_embeddings(base, dataset_dir, "val")
    except InputError:
        val = None
    comb, info = train_combiner(base, train, val, (cfg.get("pretrain") or {}).get("combiner"), cfg["seed"], progress)
    seconds = info.pop("train_seconds")
    save_combiner(comb, model_dir, info)  # deterministic figures only (a retrain writes the same bytes)
    return {**{f"combiner_{k}": v for k, v in info.items() if k != "hparams"}, "combiner_train_seconds": seconds}


# -- the task's hooks (qshift.tasks): what the shared adapt path asks of a CIR direction ----------------

def query_owner(split: CIRSplit, direction: str) -> np.ndarray:
    """A composed query's relevant gallery item: its triplet's target image."""
    return split.targets


def loader_hook(model, modality: str, split: CIRSplit, order, batch_size: int, num_workers: int,
                cache: bool = False) -> DataLoader:
    """:func:`qshift.gallery.make_loader` for composed queries."""
    return query_loader(model, split, order=order, batch_size=batch_size, num_workers=num_workers, cache=cache)


def load_queries(cfg: dict, run) -> CIRSplit:
    """A cell's triplets (the test split of its manifest); an empty modification text is a valid query."""
    from .config import queries_path

    return load_triplets(queries_path(cfg, run.direction, run.corruption, run.severity, run.seed), "test")


def job_model(cfg: dict, base):
    """The adapt job's model: the composed encoder (both towers + the configured combiner)."""
    return load_composed(cfg, base)


def check_queries(queries: CIRSplit, gallery: dict) -> None:
    check_targets(queries, gallery["image_owner"].numpy())


class Scoring:
    """The real CIR benchmarks' scoring rules over one query set (the ``scoring`` hook of
    :func:`qshift.adapt.run_stream`; None for the built-in benchmark, which has none of them):

    - :meth:`ranked` — the scores R@K ranks: CIRR without the reference, FashionIQ within the
      query's category (:func:`candidate_mask`);
    - :meth:`observe` — CIRR's Recall_subset@1/2/3 (on the unmasked scores, within the query's
      image set: :func:`subset_mask`) and FashionIQ's R@K per category;
    - :meth:`metrics` / :meth:`extra` — what they add to the results file.

    Scoring only: the TTA methods see the scores over the whole gallery (RECONSTRUCTION)."""

    def __init__(self, cand, subset, groups, ks):
        from collections import defaultdict

        self.cand, self.subset, self.groups, self.ks = cand, subset, groups, tuple(ks)
        self.sub_hits = {k: 0 for k in SUBSET_KS}
        self.grp_hits = defaultdict(lambda: {k: 0 for k in self.ks})
        self.grp_n = defaultdict(int)

    def ranked(self, scores: torch.Tensor, idx) -> torch.Tensor:
        if self.cand is None:
            return scores
        return scores.masked_fill(self.cand(idx).to(scores.device), float("-inf"))

    def observe(self, scores: torch.Tensor, idx, owners: torch.Tensor, g_owner, hits: dict) -> None:
        from .evaluation import hits_and_ranks

        if self.subset is not None:
            hs, _ = hits_and_ranks(scores.masked_fill(self.subset(idx).to(scores.device), float("-inf")), owners,
                                   g_owner, SUBSET_KS)
            for k in SUBSET_KS:
                self.sub_hits[k] += int(hs[k].sum())
        if self.groups is not None:
            hk = {k: hits[k].cpu().tolist() for k in self.ks}
            for i, q in enumerate(np.asarray(idx).tolist()):
                self.grp_n[self.groups[q]] += 1
                for k in self.ks:
                    self.grp_hits[self.groups[q]][k] += int(hk[k][i])

    def metrics(self, n: int) -> dict:
        return {f"R_subset@{k}": 100.0 * self.sub_hits[k] / n for k in SUBSET_KS} if self.subset is not None else {}

    def extra(self) -> dict:
        if self.groups is None:
            return {}
        return {"metrics_by_group": {g: {**{f"R@{k}": 100.0 * self.grp_hits[g][k] / self.grp_n[g] for k in self.ks},
                                         "n_queries": self.grp_n[g]} for g in sorted(self.grp_n)}}


def scoring(queries: CIRSplit, gallery: dict, ks) -> Scoring | None:
    cand, subset, groups = candidate_mask(queries, gallery), subset_mask(queries, gallery), group_names(queries, gallery)
    if cand is None and subset is None and groups is None:
        return None
    return Scoring(cand, subset, groups, ks)
