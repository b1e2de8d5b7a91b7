"""The video-audio retrieval task (directions ``v2a`` and ``a2v``): clips, query sets, hooks.

REST (arXiv 2511.14416) names video-audio retrieval as its third task (Fig. 1: AS-C, a
"temporal-sequence query shift" of video queries whose frames turn noisy, then blurred). Its
protocol is not published: the directions, the per-frame / per-clip seeding, the streams, the
built-in benchmark and what adapts are this project's **reconstruction** (docs/rest.md). The
corruption suites and severities are READ's (ICLR 2024, same lab; :mod:`qshift.corrupt.video`,
:mod:`qshift.corrupt.audio`).

A *clip set* is a folder::

    clips.json   {"format": "qshift-va-clips", "dataset", "split", "n", "ids": [...],
                  "sample_rate", "frames": "frames.npy" | null, "audio": "audio.npy" | null,
                  "meta": {...}}        (meta.stream / "domains": streams)
    frames.npy   uint8   [N, T, H, W, 3]   (RGB)
    audio.npy    float32 [N, samples]      (mono, in [-1, 1], one sample rate)

The arrays are memory-mapped and read in batches (:class:`ClipSet`), so no job holds a whole
split in memory. A prepared dataset (``data/<benchmark>/``) holds one clip set per split
(``train/``, ``val/``, ``test/``) and ``manifest.json``. Query sets hold the corrupted
modality only: ``data/queries/<benchmark>/video/<corruption>-s<severity>/`` (frames.npy) for
v2a, ``.../audio/<corruption>-s<severity>/`` (audio.npy) for a2v, and streams under
``video-stream/<name>/`` / ``audio-stream/<name>/``. The gallery (encoded once, frozen): every
test clip's video and audio embeddings (``gallery.pt``: ``task: video-audio``), a query's
correct gallery item being its own clip.

Bad input is a clear error naming the file (and clip): a missing or malformed ``clips.json``,
arrays of the wrong dtype/shape, a zero-length clip (no frames / no samples), a NaN or inf
waveform sample (checked per clip as it is read), ids that are not unique.

Streams (``streams.video`` / ``streams.audio``, like ``streams.image``): ``mixed`` and
``sequential`` streams over (corruption, severity) domains of successive clips
(:mod:`qshift.streams`' assignment; ``clean`` may be a domain: clean -> noise -> blur), and for
video ``segments``: every clip's frames cut into one contiguous segment per domain (frames 0-1
clean, 2 noise, 3 blur) — a shift inside each clip. Each clip (frame) is corrupted with the
seed it has in the per-corruption set, so a stream's query equals that domain's own query.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .errors import ConfigError, InputError, UnknownNameError
# the task's torch-free half (planning: cells, paths, checks): qshift.va_plan
from .va_plan import (CLIPS, SIDE, _set_path, _side_cfg, _stream_path, dataset_dir, queries_path, registry,
                      stream_domains, test_set, tune_cells)

log = logging.getLogger("qshift.stage")

FORMAT = "qshift-va-clips"
MANIFEST_FORMAT = "qshift-va-dataset"
GALLERY_KEYS = ("task", "video", "audio", "video_owner", "audio_owner", "model", "manifest_sha256", "split")


# -- clip sets --------------------------------------------------------------------------------------

class ClipSetWriter:
    """Writes a clip set clip by clip into memory-mapped arrays (bounded memory)."""

    def __init__(self, folder: str | Path, n: int, frames_shape=None, samples: int | None = None,
                 sample_rate: int | None = None):
        from numpy.lib.format import open_memmap

        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.n, self.sample_rate = n, sample_rate
        self.frames = (open_memmap(self.folder / "frames.npy", mode="w+", dtype=np.uint8, shape=(n, *frames_shape))
                       if frames_shape is not None else None)
        self.audio = (open_memmap(self.folder / "audio.npy", mode="w+", dtype=np.float32, shape=(n, samples))
                      if samples is not None else None)

    def put(self, i: int, frames: np.ndarray | None = None, audio: np.ndarray | None = None) -> None:
        if frames is not None:
            self.frames[i] = frames
        if audio is not None:
            n = len(audio)
            self.audio[i, :n] = audio  # a clip shorter than the row (its true length: meta.audio_samples)
            self.audio[i, n:] = 0.0

    def close(self, dataset: str, split: str, ids, meta: dict | None = None) -> Path:
        for arr in (self.frames, self.audio):
            if arr is not None:
                arr.flush()
        doc = {"format": FORMAT, "dataset": dataset, "split": split, "n": self.n, "ids": [int(i) for i in ids],
               "sample_rate": self.sample_rate, "frames": "frames.npy" if self.frames is not None else None,
               "audio": "audio.npy" if self.audio is not None else None, "meta": meta or {}}
        (self.folder / CLIPS).write_text(json.dumps(doc) + "\n")
        self.frames = self.audio = None
        return self.folder / CLIPS


@dataclass
class ClipSet:
    """A clip set opened for batched reads (module docstring)."""

    folder: Path
    manifest: Path  # clips.json (what errors and results name)
    dataset: str
    split: str
    ids: np.ndarray
    sample_rate: int | None
    frames_file: Path | None
    audio_file: Path | None
    meta: dict = field(default_factory=dict)
    owner_kind: str = "clip"
    _frames: np.ndarray | None = None
    _audio: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.ids)

    n_queries = n

    @property
    def query_ids(self) -> np.ndarray:  # the outcomes' query ids (qshift.outcomes)
        return self.ids

    @property
    def frames_shape(self) -> tuple:
        return tuple(self._frames.shape) if self._frames is not None else ()

    @property
    def samples(self) -> int:
        return int(self._audio.shape[1]) if self._audio is not None else 0

    def frames(self, idx) -> np.ndarray:
        if self._frames is None:
            raise InputError(f"clip set {self.manifest} holds no video frames")
        return np.asarray(self._frames[np.asarray(idx)])

    def audio(self, idx) -> np.ndarray:
        if self._audio is None:
            raise InputError(f"clip set {self.manifest} holds no audio")
        return np.asarray(self._audio[np.asarray(idx)])

    def clip(self, i: int) -> str:
        return f"clip {int(self.ids[i])} (row {i}) of {self.manifest}"

    def checked_wave(self, i: int) -> np.ndarray:
        """Clip ``i``'s waveform: its true length when ``meta.audio_samples`` records one (real
        clips of different lengths, zero-padded in audio.npy: qshift.data.av_lists)."""
        wave = np.asarray(self._audio[i]) if self._audio is not None else self.audio([i])[0]
        lengths = self.meta.get("audio_samples")
        if lengths is not None:
            if not isinstance(lengths, list) or len(lengths) != self.n:
                raise InputError(f"clip set {self.manifest}: meta.audio_samples must list one length per clip")
            n = lengths[i]
            if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= wave.shape[0]:
                raise InputError(f"{self.clip(i)}: meta.audio_samples {n!r} is not a length in 1..{wave.shape[0]}")
            wave = wave[:n]
        if not np.isfinite(wave).all():
            raise InputError(f"{self.clip(i)}: the waveform has {int((~np.isfinite(wave)).sum())} NaN/inf samples "
                             f"({self.audio_file})")
        return wave


def _open_array(path: Path, what: str, dtype, ndim: int, n: int, clips: Path) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"clip set {clips}: {what} file {path} not found")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(f"clip set {clips}: {what} file {path} is unreadable: {e}") from None
    if arr.dtype != dtype or arr.ndim != ndim:
        raise InputError(f"clip set {clips}: {path} must be {np.dtype(dtype).name} with {ndim} dimensions, got "
                         f"{arr.dtype} {arr.shape}")
    if arr.shape[0] != n:
        raise InputError(f"clip set {clips}: {path} has {arr.shape[0]} clips, {CLIPS} lists {n}")
    if any(s == 0 for s in arr.shape[1:]):
        raise InputError(f"clip set {clips}: {path} has shape {arr.shape}: zero-length clips (no "
                         f"{'frames' if what == 'frames' else 'samples'})")
    return arr


def read_clipset(folder: str | Path) -> ClipSet:
    """Open a clip set folder (or its clips.json); errors name the file."""
    folder = Path(folder)
    if folder.name == CLIPS:
        folder = folder.parent
    path = folder / CLIPS
    if not path.is_file():
        raise InputError(f"clip set {path} not found (the prepare / corruption stages of a video-audio benchmark "
                         f"write it)")
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"clip set {path} is not valid JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InputError(f"{path} is not a clip set (format {FORMAT!r})")
    ids = doc.get("ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise InputError(f"clip set {path}: 'ids' must be a non-empty list of integer clip ids")
    if len(set(ids)) != len(ids):
        raise InputError(f"clip set {path}: clip ids are not unique")
    n = len(ids)
    frames = audio = None
    if doc.get("frames"):
        frames = _open_array(folder / doc["frames"], "frames", np.uint8, 5, n, path)
        if frames.shape[-1] != 3:
            raise InputError(f"clip set {path}: frames must be RGB [N, T, H, W, 3], got {frames.shape}")
    if doc.get("audio"):
        audio = _open_array(folder / doc["audio"], "audio", np.float32, 2, n, path)
        sr = doc.get("sample_rate")
        if isinstance(sr, bool) or not isinstance(sr, int) or sr <= 0:
            raise InputError(f"clip set {path}: sample_rate must be a positive integer, got {sr!r}")
    if frames is None and audio is None:
        raise InputError(f"clip set {path} holds neither frames nor audio")
    return ClipSet(folder, path, str(doc.get("dataset", "")), str(doc.get("split", "")), np.asarray(ids, np.int64),
                   doc.get("sample_rate"), folder / doc["frames"] if frames is not None else None,
                   folder / doc["audio"] if audio is not None else None, dict(doc.get("meta") or {}),
                   _frames=frames, _audio=audio)


# -- batches ------------------------------------------------------------------------------------------

class _Clips(Dataset):
    def __init__(self, clips: ClipSet, modality: str, transform, order):
        self.clips, self.modality, self.transform = clips, modality, transform
        self.order = np.arange(clips.n) if order is None else np.asarray(order)

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, j):
        i = int(self.order[j])
        try:
            if self.modality == "video":
                return self.transform(self.clips.frames([i])[0])
            return self.transform(self.clips.checked_wave(i), self.clips.sample_rate)
        except InputError as e:
            msg = str(e)
            raise InputError(msg if str(self.clips.manifest) in msg else f"{self.clips.clip(i)}: {msg}") from None


def clip_loader(model, modality: str, clips: ClipSet, order=None, batch_size: int = 64,
                num_workers: int = 0) -> DataLoader:
    """Batches of ``model.video_transform`` / ``audio_transform`` outputs, in ``order``."""
    transform = model.video_transform if modality == "video" else model.audio_transform
    return DataLoader(_Clips(clips, modality, transform, order), batch_size=batch_size, shuffle=False,
                      num_workers=num_workers)


def query_loader(model, modality: str, queries: ClipSet, order=None, batch_size: int = 64, num_workers: int = 0,
                 cache: bool = False):
    """:func:`qshift.gallery.make_loader` for clips (``cache`` not used: a clip set's frames and
    waveforms come from one array file per set, read once per run, not one file per query)."""
    return clip_loader(model, modality, queries, order, batch_size, num_workers)


@torch.no_grad()
def encode_clips(model, modality: str, clips: ClipSet, batch_size: int = 256, progress: bool = False) -> torch.Tensor:
    from .progress import tqdm

    loader = clip_loader(model, modality, clips, batch_size=batch_size)
    return torch.cat([model.encode(modality, b).cpu() for b in tqdm(loader, desc=f"gallery {modality}",
                                                                    leave=False, disable=not progress)])


# -- the dataset, query sets and gallery --------------------------------------------------------------

def load_queries(cfg: dict, run) -> ClipSet:
    clips = read_clipset(Path(queries_path(cfg, run.direction, run.corruption, run.severity, run.seed)).parent)
    side = SIDE[run.direction]
    if (side == "video" and clips.frames_file is None) or (side == "audio" and clips.audio_file is None):
        raise InputError(f"query set {clips.manifest} holds no {side}: {run.direction} queries are {side}")
    return clips


def query_owner(queries: ClipSet, direction: str) -> np.ndarray:
    return queries.ids  # a query's correct gallery item is its own clip's other modality


def check_gallery(doc: dict, path) -> None:
    missing = [k for k in GALLERY_KEYS if k not in doc]
    if missing:
        raise InputError(f"video-audio gallery embeddings {path} are missing keys: {', '.join(missing)}")


def encode_gallery(cfg: dict, model, out: str | Path, progress: bool = False) -> dict:
    """Both modalities of every test clip, encoded once by the frozen source model."""
    from .io import atomic_path, sha256_file

    clips = read_clipset(test_set(cfg))
    video = encode_clips(model, "video", clips, cfg["model"].get("batch_size", 256), progress)
    audio = encode_clips(model, "audio", clips, cfg["model"].get("batch_size", 256), progress)
    owner = torch.as_tensor(clips.ids)
    doc = {"task": "video-audio", "split": "test", "video": video, "audio": audio, "video_owner": owner,
           "audio_owner": owner.clone(), "owner": "clip", "model": model.name,
           "manifest_sha256": sha256_file(clips.manifest)}
    with atomic_path(out, ".pt") as tmp, open(tmp, "wb") as fh:
        torch.save(doc, fh)
    return {"n_clips": clips.n, "dim": int(video.shape[1])}


# -- corrupting query sets ----------------------------------------------------------------------------

def _video_options(cfg: dict, dataset: str) -> tuple[str, dict | None]:
    image = (cfg.get("corrupt") or {}).get("image") or {}
    impl = image.get("implementation", "imagecorruptions")
    if impl == "imagecorruptions":
        return impl, None
    from .corrupt import mm_robustness

    return impl, mm_robustness.options({"mm_robustness": image.get("mm_robustness")}, dataset)


def noise_dir(cfg: dict) -> str | None:
    nd = _side_cfg(cfg, "audio").get("noise_dir")
    return None if nd in (None, "") else str(nd)


def bed_rms(cfg: dict) -> float | None:
    """corrupt.audio.bed_rms: the synthetic noise beds' level (None: qshift.corrupt.audio.BED_RMS)."""
    v = _side_cfg(cfg, "audio").get("bed_rms")
    return None if v is None else float(v)


def _clip_seed(dataset: str, clip_id, corruption: str, severity: int, draw: int | None = None) -> int:
    from .io import query_seed

    return query_seed(dataset, int(clip_id), corruption, severity, draw)


def build_query_set(cfg: dict, side: str, corruption: str, severity: int, out: str | Path | None = None,
                    chunk: int = 64, progress: bool = False, split: str = "test", draw: int | None = None) -> dict:
    """The ``split`` clips' ``side`` (video | audio) under one corruption, written chunk by chunk
    (``test``: a reported query set; ``val``: a tuning set, :func:`tune_queries`). ``draw``: the set
    drawn anew for that run seed (params seed_corruptions; every clip and frame seeded with it too)."""
    from .corrupt.audio import corrupt_audio
    from .corrupt.video import corrupt_video, frame_seed
    from .io import atomic_dir
    from .progress import tqdm

    reg = registry(side)
    reg.check(corruption)
    if isinstance(severity, bool) or not isinstance(severity, int) or not 1 <= severity <= 5:
        raise ConfigError(f"{side} corruption severity must be an integer in 1..5, got {severity!r}")
    src = read_clipset(dataset_dir(cfg) / split)
    ds = src.dataset or cfg["benchmark"]
    out = Path(out or _set_path(cfg, side, corruption, severity, draw))
    impl, options = _video_options(cfg, ds) if side == "video" else ("", None)
    nd = noise_dir(cfg) if side == "audio" else None
    with atomic_dir(out) as tmp:
        w = ClipSetWriter(tmp, src.n, frames_shape=src.frames_shape[1:] if side == "video" else None,
                          samples=src.samples if side == "audio" else None, sample_rate=src.sample_rate)
        for a in tqdm(range(0, src.n, chunk), desc=f"{side} {corruption} s{severity}", disable=not progress,
                      leave=False):
            idx = np.arange(a, min(src.n, a + chunk))
            for i in idx:
                cid = int(src.ids[i])
                if side == "video":
                    fr = corrupt_video(corruption, src.frames([i])[0], severity,
                                       lambda t, c=cid: frame_seed(ds, c, corruption, severity, t, draw), impl,
                                       options, what=src.clip(i))
                    w.put(int(i), frames=fr)
                else:
                    wav = corrupt_audio(corruption, src.checked_wave(int(i)), severity,
                                        _clip_seed(ds, cid, corruption, severity, draw), src.sample_rate, nd,
                                        what=src.clip(i), bed_rms=bed_rms(cfg))
                    w.put(int(i), audio=wav)
        meta = {"source": os.path.relpath(src.folder, out), "corruption": corruption, "severity": severity,
                "modality": side, "seed": cfg["seed"]}
        if draw is not None:
            meta["draw_seed"] = int(draw)
        if side == "audio" and "audio_samples" in src.meta:
            meta["audio_samples"] = src.meta["audio_samples"]
        if side == "video" and impl != "imagecorruptions":
            meta["implementation"] = {"name": impl, **(options or {})}
        if side == "audio":
            meta["noise"] = (f"synthetic beds (qshift.corrupt.audio), RMS {bed_rms(cfg) or 'default'}" if nd is None
                             else f"recordings from {nd}")
        w.close(ds, split, src.ids.tolist(), meta)
    return {"n": src.n, "out": str(out)}


# -- streams ------------------------------------------------------------------------------------------

def build_stream(cfg: dict, side: str, name: str, out: str | Path | None = None, progress: bool = False,
                 draw: int | None = None) -> dict:
    """A query stream over successive test clips (mixed / sequential) or inside each clip (segments).
    ``draw`` (seed_corruptions): every clip corrupted with that run seed's draw; the domains stay the
    project seed's assignment, as for image-text streams."""
    from collections import Counter

    from .config import streams
    from .corrupt.audio import corrupt_audio
    from .corrupt.video import corrupt_segments, corrupt_video, frame_seed
    from .io import atomic_dir, derive_seed
    from .progress import tqdm
    from .results import CLEAN
    from .streams import assign_domains, domain_label

    direction = "v2a" if side == "video" else "a2v"
    defs = streams(cfg, direction)
    if name not in defs:
        raise UnknownNameError(f"{side} stream", name, sorted(defs))
    spec = defs[name]
    src = read_clipset(test_set(cfg))
    ds = src.dataset or cfg["benchmark"]
    domains = stream_domains(spec)
    labels = [domain_label(c, s) for c, s in domains]
    out = Path(out or _stream_path(cfg, side, name, draw))
    impl, options = _video_options(cfg, ds) if side == "video" else ("", None)
    nd = noise_dir(cfg) if side == "audio" else None
    segments = spec["kind"] == "segments"
    if segments:
        dom, order = np.zeros(src.n, np.int64), None
    else:
        dom, order = assign_domains(src.n, len(domains), spec["kind"], derive_seed("stream", ds, name, cfg["seed"]))
    with atomic_dir(out) as tmp:
        w = ClipSetWriter(tmp, src.n, frames_shape=src.frames_shape[1:] if side == "video" else None,
                          samples=src.samples if side == "audio" else None, sample_rate=src.sample_rate)
        for i in tqdm(range(src.n), desc=f"stream {name}", disable=not progress, leave=False):
            cid = int(src.ids[i])
            if segments:
                w.put(i, frames=corrupt_segments(src.frames([i])[0], domains,
                                                 lambda c, s, t, cid=cid: frame_seed(ds, cid, c, s, t, draw), impl,
                                                 options, src.clip(i)))
                continue
            c, s = domains[dom[i]]
            if side == "video":
                fr = src.frames([i])[0]
                if c != CLEAN:
                    fr = corrupt_video(c, fr, s, lambda t, cid=cid, c=c, s=s: frame_seed(ds, cid, c, s, t, draw),
                                       impl, options, src.clip(i))
                w.put(i, frames=fr)
            else:
                wav = src.checked_wave(i)
                if c != CLEAN:
                    wav = corrupt_audio(c, wav, s, _clip_seed(ds, cid, c, s, draw), src.sample_rate, nd, src.clip(i),
                                        bed_rms=bed_rms(cfg))
                w.put(i, audio=wav)
        stream = {"name": name, "kind": spec["kind"], "domains": ["+".join(labels)] if segments else labels,
                  "seed": cfg["seed"], "segments": labels if segments else None}
        if draw is not None:
            stream["draw_seed"] = int(draw)
        if order is not None:
            stream["order"] = [int(i) for i in order]
        per_clip = ["+".join(labels)] * src.n if segments else [labels[d] for d in dom]
        lengths = ({"audio_samples": src.meta["audio_samples"]}
                   if side == "audio" and "audio_samples" in src.meta else {})
        w.close(ds, "test", src.ids.tolist(), {"source": os.path.relpath(src.folder, out), "modality": side,
                                               "stream": stream, "domains": per_clip, **lengths})
    return dict(Counter(per_clip))


def stream_info(queries: ClipSet, direction: str) -> dict | None:
    stream = queries.meta.get("stream")
    if not stream:
        return None
    if queries.meta.get("modality") != SIDE[direction]:
        raise InputError(f"query stream {queries.manifest} corrupts {queries.meta.get('modality')} queries; direction "
                         f"{direction} needs a {SIDE[direction]} stream")
    labels = queries.meta.get("domains")
    if not isinstance(labels, list) or len(labels) != queries.n:
        raise InputError(f"query stream {queries.manifest}: meta.domains must list one domain per clip")
    order = stream.get("order")
    if order is not None:
        order = np.asarray(order, dtype=np.int64)
        if sorted(order.tolist()) != list(range(queries.n)):
            raise InputError(f"query stream {queries.manifest}: meta.stream.order is not a permutation of its clips")
    return {"name": stream.get("name"), "kind": stream.get("kind"), "domains": list(stream.get("domains", [])),
            "order": order, "query_domain": labels}


# -- validation ---------------------------------------------------------------------------------------

def tune_gallery(cfg: dict, model, progress: bool = False) -> tuple[dict, dict]:
    """The validation clips' video and audio, encoded once by the frozen source model (the tuning
    gallery; never the test split's), and what the report says about the split."""
    val = read_clipset(dataset_dir(cfg) / "val")
    bs = cfg["model"].get("batch_size", 256)
    video, audio = encode_clips(model, "video", val, bs, progress), encode_clips(model, "audio", val, bs, progress)
    owner = torch.as_tensor(val.ids)
    gallery = {"task": "video-audio", "split": "val", "video": video, "audio": audio, "video_owner": owner,
               "audio_owner": owner.clone(), "owner": "clip"}
    return gallery, {"n_clips": val.n, "split_desc": f"{val.n} clips"}


def tune_queries(cfg: dict, direction: str, workdir: str | Path, progress: bool = False) -> dict:
    """{cell label (``spatter-s3``): the validation clips' corrupted ``direction`` queries}, built in ``workdir``."""
    names, sev = tune_cells(cfg, direction)
    side = SIDE[direction]
    sets = {}
    for c in names:
        out = Path(workdir) / side / f"{c}-s{sev}"
        build_query_set(cfg, side, c, sev, out=out, progress=progress, split="val")
        sets[out.name] = read_clipset(out)
    return sets


# -- stage hooks --------------------------------------------------------------------------------------

def prepare(cfg: dict, out_dir: str | Path, progress: bool = True) -> dict:
    from .config import dataset_params

    d = dataset_params(cfg)
    if d.get("kind") == "clip-list":  # AudioSet / VGGSound clips decoded from the user's folder
        from .config import RAW_DIR
        from .data.av_lists import prepare_dataset

        return prepare_dataset(d, cfg["benchmark"], RAW_DIR.format(dataset=cfg["benchmark"]), out_dir, progress)
    if d.get("kind", "builtin") != "builtin":
        raise ConfigError(f"params: datasets.{cfg['benchmark']}: kind {d.get('kind')!r} for a video-audio dataset; "
                          f"valid: builtin (generated clips), clip-list (AudioSet / VGGSound clip lists)")
    from .data.builtin_va import generate_builtin_va

    return generate_builtin_va(out_dir, n_train=d["n_train"], n_val=d.get("n_val", 0), n_test=d["n_test"],
                               image_size=d.get("image_size", 32), n_frames=d.get("n_frames", 4), seed=cfg["seed"],
                               dataset=cfg["benchmark"], progress=progress)


def pretrain(cfg: dict, model_dir: str | Path, device, progress: bool = True) -> dict:
    from .models.tiny_va import train_tiny_va

    return train_tiny_va(dataset_dir(cfg), model_dir, (cfg.get("pretrain") or {}).get("va"), cfg["seed"], device,
                         name=cfg["model"]["name"], progress=progress)


def examples(cfg: dict, out_dir: str | Path, n_clips: int = 3) -> dict:
    """A contact sheet of query examples: per corruption, the frame strips (video) and log-mel
    thumbnails (audio) of a few test clips (clean first), plus a Markdown table of the audio
    corruptions' measured SNRs (``text_examples.md``: the sheet's text companion) and examples.json."""
    from PIL import Image, ImageDraw

    from .corrupt.audio import corrupt_audio, snr_db
    from .corrupt.video import corrupt_video, frame_seed
    from .io import write_json, write_text
    from .models.video_audio import log_mel

    out_dir = Path(out_dir)
    src = read_clipset(test_set(cfg))
    ds = src.dataset or cfg["benchmark"]
    idx = list(range(min(n_clips, src.n)))
    impl, options = _video_options(cfg, ds)
    nd = noise_dir(cfg)
    vc, ac = _side_cfg(cfg, "video"), _side_cfg(cfg, "audio")
    vsev = max(vc.get("severities") or [3])
    asev = max(ac.get("severities") or [3])
    rows, snrs = [], {}
    for name in ["clean"] + list(vc.get("names") or []):
        strips = []
        for i in idx:
            fr = src.frames([i])[0]
            if name != "clean":
                fr = corrupt_video(name, fr, vsev, lambda t, c=int(src.ids[i]): frame_seed(ds, c, name, vsev, t),
                                   impl, options, src.clip(i))
            strips.append(np.concatenate(list(fr), axis=1))
        rows.append((f"video: {name}" + (f" s{vsev}" if name != "clean" else ""), np.concatenate(strips, axis=1)))
    anames = ["clean"] + list(ac.get("names") or [])
    mels: dict[str, list[np.ndarray]] = {n: [] for n in anames}
    for name in anames:
        for i in idx:
            wav = src.checked_wave(i)
            if name != "clean":
                cw = corrupt_audio(name, wav, asev, _clip_seed(ds, int(src.ids[i]), name, asev), src.sample_rate, nd,
                                   bed_rms=bed_rms(cfg))
                snrs.setdefault(name, []).append(snr_db(wav, cw))
                wav = cw
            mels[name].append(log_mel(torch.from_numpy(np.array(wav)), src.sample_rate).numpy().T[::-1])
    for name in anames:  # one grey scale per clip: its clean log-mel's 1st percentile .. the max over its versions
        thumbs = []
        for j in range(len(idx)):
            lo = np.percentile(mels["clean"][j], 1)
            hi = max(float(mels[n][j].max()) for n in anames)
            m = np.clip((mels[name][j] - lo) / max(hi - lo, 1e-6), 0, 1)
            img = np.asarray(Image.fromarray((m * 255).astype(np.uint8)).resize(
                (src.frames_shape[3] * src.frames_shape[1], src.frames_shape[2])))
            thumbs.append(np.repeat(img[:, :, None], 3, axis=2))
        rows.append((f"audio: {name}" + (f" s{asev}" if name != "clean" else ""), np.concatenate(thumbs, axis=1)))
    label_w, scale = 150, 2
    width = max(r.shape[1] for _, r in rows) * scale + label_w
    height = sum(r.shape[0] * scale + 4 for _, r in rows)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw, y = ImageDraw.Draw(sheet), 0
    for label, r in rows:
        im = Image.fromarray(r).resize((r.shape[1] * scale, r.shape[0] * scale), Image.NEAREST)
        sheet.paste(im, (label_w, y))
        draw.text((4, y + 4), label, fill=(0, 0, 0))
        y += im.height + 4
    out_dir.mkdir(parents=True, exist_ok=True)
    from .io import atomic_path

    with atomic_path(out_dir / "contact_sheet.png", ".png") as tmp:
        sheet.save(tmp, format="PNG")
    lines = ["# Audio corruption examples", "",
             f"Measured SNR (dB) of the audio corruptions at severity {asev} on {len(idx)} test clips "
             f"(environmental noise: {'synthetic beds' if nd is None else 'recordings from ' + nd}).", "",
             "| corruption | mean SNR (dB) |", "|---|---|"]
    lines += [f"| {k} | {np.mean(v):.1f} |" for k, v in snrs.items()]
    write_text(out_dir / "text_examples.md", "\n".join(lines) + "\n")
    write_json(out_dir / "examples.json", {"task": "video-audio", "clips": [int(src.ids[i]) for i in idx],
                                           "rows": [label for label, _ in rows],
                                           "snr_db": {k: float(np.mean(v)) for k, v in snrs.items()}})
    return {"rows": len(rows), "clips": len(idx)}
