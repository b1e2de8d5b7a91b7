"""Gallery embeddings: encoded once per (model, dataset) with the frozen source model.

The file holds both modalities of the clean test split — captions are the gallery of i2t,
images the gallery of t2i — plus their owner ids, so adaptation jobs never re-encode.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from .progress import tqdm

from .data.manifest import Split, load_split
from .errors import InputError
from .io import atomic_path, sha256_file
from .models.base import RetrievalModel

GALLERY_KEYS = ("image", "text", "image_owner", "text_owner", "model", "manifest_sha256")


class QueryImageCache:
    """Preprocessed query images kept in memory across the cells of one job (params
    ``query_cache_mb``; off until :func:`set_query_cache` is called, as the adapt and tune stages do).

    A job runs the same query set under several methods (adapt) or grid points (tune), and each
    run would decode and preprocess every image again. The transform is deterministic and the
    DataLoader's collate copies each item into a fresh batch, so a cached tensor gives the same
    batch bit for bit. An entry is keyed by the image's path, size and modification time and by
    the model whose transform made it; when the budget is spent, later images are simply decoded
    as before (no eviction: a scan bigger than the budget keeps what it has). In-process only:
    DataLoader workers (``num_workers`` > 0) decode as before."""

    def __init__(self) -> None:
        self.budget = 0
        self.clear()

    def clear(self) -> None:
        self.used = 0
        self.items: dict[tuple, torch.Tensor] = {}
        self.owner = None  # a weak reference to the model the entries belong to
        self.hits = self.misses = 0

    def configure(self, megabytes: int) -> None:
        self.budget = int(megabytes) * 2 ** 20
        self.clear()

    def get(self, model, path, make):
        if self.budget <= 0 or torch.utils.data.get_worker_info() is not None:
            return make()
        if self.owner is None or self.owner() is not model:
            self.clear()
            self.owner = weakref.ref(model)
        st = os.stat(path)
        key = (str(path), st.st_size, st.st_mtime_ns)
        hit = self.items.get(key)
        if hit is not None:
            self.hits += 1
            return hit
        self.misses += 1
        value = make()
        size = value.element_size() * value.nelement()
        if self.used + size <= self.budget:
            self.items[key] = value
            self.used += size
        return value

    def summary(self) -> str | None:
        """One log line: what the cache saved (None when it was on but no image went through it:
        a job of text queries)."""
        if self.budget <= 0:
            return "query image cache: off (query_cache_mb: 0)"
        if not (self.hits or self.misses):
            return None
        return (f"query image cache: {self.hits} images reused, {self.misses} decoded, "
                f"{self.used / 2 ** 20:.0f} of {self.budget / 2 ** 20:.0f} MiB held")


QUERY_IMAGES = QueryImageCache()


def set_query_cache(megabytes: int) -> None:
    """Keep up to ``megabytes`` of preprocessed query images across this process's runs (0: off)."""
    QUERY_IMAGES.configure(megabytes)


def query_job_settings(cfg: dict) -> None:
    """What a job that runs query sets (adapt, tune) sets first: torch's threads (params
    ``threads``) and the query image cache (``query_cache_mb``)."""
    from .runtime import set_threads

    set_threads(cfg.get("threads", 0))
    set_query_cache(cfg.get("query_cache_mb", 0))


class ImageFiles(Dataset):
    def __init__(self, paths, transform, cache_for=None):
        """``cache_for``: the model whose transform this is, to reuse its preprocessed images
        (:data:`QUERY_IMAGES`); None decodes every time."""
        self.paths, self.transform, self.cache_for = list(paths), transform, cache_for

    def __len__(self) -> int:
        return len(self.paths)

    def _decode(self, path):
        from PIL import Image

        with Image.open(path) as im:
            return self.transform(im.convert("RGB"))

    def __getitem__(self, i):
        path = self.paths[i]
        try:  # a missing file (the cache's stat or PIL's open) or a corrupt one: PIL's errors are OSErrors
            if self.cache_for is None:
                return self._decode(path)
            return QUERY_IMAGES.get(self.cache_for, path, lambda: self._decode(path))
        except OSError as e:
            raise InputError(f"cannot read image {path}: {e}") from None


class Captions(Dataset):
    def __init__(self, captions):
        self.captions = list(captions)

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i):
        return self.captions[i]


def make_loader(model: RetrievalModel, modality: str, split: Split, order=None, batch_size: int = 64,
                num_workers: int = 0, cache: bool = False) -> DataLoader:
    """Batches of preprocessed queries/gallery items in ``order`` (default: file order);
    ``cache``: reuse this process's preprocessed images (:data:`QUERY_IMAGES`, query streams)."""
    from .tasks import hook, modality_task

    task = modality_task(modality)  # another task's query modality (video-audio: video, audio)
    if task is not None and hook(task.name, "query_loader") is not None:
        return hook(task.name, "query_loader")(model, modality, split, order, batch_size, num_workers, cache=cache)
    if modality == "image":
        paths = split.image_paths if order is None else [split.image_paths[i] for i in order]
        ds, collate = ImageFiles(paths, model.image_transform(), model if cache else None), None
    else:
        caps = split.captions if order is None else [split.captions[i] for i in order]
        ds, collate = Captions(caps), model.tokenize
    # pinned host memory on CUDA: the batch copy (non_blocking in RetrievalModel.encode) overlaps compute
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate,
                      persistent_workers=False, pin_memory=getattr(model, "device", None) is not None
                      and torch.device(model.device).type == "cuda")


@torch.no_grad()
def encode_all(model: RetrievalModel, modality: str, split: Split, batch_size: int, num_workers: int = 0,
               desc: str = "") -> torch.Tensor:
    out = []
    loader = make_loader(model, modality, split, batch_size=batch_size, num_workers=num_workers)
    for batch in tqdm(loader, desc=desc or f"encode {modality}", unit="batch", leave=False):
        out.append(model.encode(modality, batch).cpu())
    return torch.cat(out)


def encode_gallery(model: RetrievalModel, manifest: str | Path, out: str | Path, batch_size: int = 256,
                   num_workers: int = 0) -> dict:
    split = load_split(manifest, "test")
    image = encode_all(model, "image", split, batch_size, num_workers, "gallery images")
    text = encode_all(model, "text", split, batch_size, num_workers, "gallery captions")
    doc = {"image": image, "text": text,
           "image_owner": torch.as_tensor(split.image_owner),
           "text_owner": torch.as_tensor(split.image_owner[split.txt2img]),
           "model": model.name, "manifest_sha256": sha256_file(manifest)}
    if split.owner_kind != "image":  # recorded only for identity-level benchmarks (files unchanged)
        doc["owner"] = split.owner_kind
    if model.preprocess != "native":  # recorded only when not the default (files unchanged)
        doc["preprocess"] = model.preprocess
    with atomic_path(out, ".pt") as tmp, open(tmp, "wb") as fh:
        # saved through a file object: torch.save(doc, <path>) stores the (temporary) file name
        # inside the archive, so two identical encodes would differ in bytes (DVC: "changed")
        torch.save(doc, fh)
    return {"n_images": len(image), "n_captions": len(text), "dim": image.shape[1]}


def load_gallery(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"gallery embeddings not found: {path} (run the encode_gallery stage)")
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        raise InputError(f"gallery embeddings {path} are unreadable: {e}") from None
    if isinstance(doc, dict) and doc.get("task") == "cir":  # composed image retrieval's target gallery
        from .cir import check_gallery

        check_gallery(doc, path)
        return doc
    if isinstance(doc, dict) and isinstance(doc.get("task"), str):  # another task's gallery (video-audio)
        from .tasks import TASKS, hook

        check = hook(doc["task"], "check_gallery") if doc["task"] in TASKS else None
        if check is not None:
            check(doc, path)
            return doc
    missing = [k for k in GALLERY_KEYS if k not in doc]
    if missing:
        raise InputError(f"gallery embeddings {path} are missing keys: {', '.join(missing)}")
    return doc


def owners_for(gallery: dict, direction: str) -> tuple[str, str, torch.Tensor, torch.Tensor]:
    """(query modality, gallery modality, gallery embeddings, gallery owner ids), as the
    direction's task declares them (qshift.tasks: i2t image -> text, t2i text -> image,
    cir composed -> image)."""
    from .tasks import direction as task_direction

    d = task_direction(direction)
    return d.query_modality, d.gallery_modality, gallery[d.gallery_modality], gallery[f"{d.gallery_modality}_owner"]


def gallery_owner_kind(gallery: dict) -> str:
    """What the gallery's owner ids name: ``image`` (default) or ``identity`` (ReID)."""
    return gallery.get("owner", "image")


def query_owner(split: Split, direction: str) -> np.ndarray:
    """Each query's owner id: its image's (i2t) or its caption's image's (t2i) — the image id,
    or the person identity for identity-level benchmarks (qshift.evaluation)."""
    from .tasks import hook

    task_owner = hook(direction, "query_owner")  # video-audio: the query's own clip (qshift.va)
    if task_owner is not None:
        return task_owner(split, direction)
    owner = split.image_owner
    return owner if direction == "i2t" else owner[split.txt2img]
