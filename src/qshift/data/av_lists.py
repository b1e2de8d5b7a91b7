"""AudioSet / VGGSound clip lists + a local folder of clips -> a video-audio clip set.

Users download the videos themselves (YouTube; qshift fetches no video) and name the list and
the folder: ``datasets.<name>: {list: FILE, list_format: ..., path: FOLDER}``. Lists:

* ``audioset-csv`` — AudioSet's segment CSVs (``eval_segments.csv``, ``balanced_train_segments.csv``):
  ``#`` comment lines, then ``YTID, start_seconds, end_seconds, "label,label"``;
* ``vggsound-csv`` — VGGSound's ``vggsound.csv``: ``ytid,start,label,split`` (no header; a label
  may hold commas when quoted); ``split`` (default ``test``) keeps one split;
* ``cav-mae-json`` — CAV-MAE's / READ's datafiles (``{"data": [{"video_id", "labels", ...}]}``),
  e.g. CAV-MAE's published retrieval subsets ``audioset_eval_5_per_class_for_retrieval_cleaned.json``
  and ``vgg_test_5_per_class_for_retrieval_cleaned.json``.

A clip file is found in the folder (searched recursively, once) by its stem, with any of
:data:`VIDEO_EXTENSIONS`: ``YTID_START`` as the common downloaders write it (AudioSet:
``YTID_40.000``, ``YTID_40``; VGGSound: ``YTID_000040``, ``YTID_40``), a ``video_id`` as CAV-MAE's
json has it, or the bare ``YTID``. Clips are expected already cut to their 10-second segment.

Each clip is decoded (:mod:`.av`: frames at CAV-MAE's positions, audio at 16 kHz) one at a time
and appended to on-disk arrays, so memory is one clip whatever the list's length. A clip that is
missing from the folder or cannot be decoded (corrupt container, no audio track, no frames,
zero length) is **recorded and skipped** (``skips`` in the clip set's ``clips.json`` and the
returned statistics, logged) — or, with ``on_error: fail``, stops the build with an error naming
the file. Nothing decoded before a failure is lost: the output is written atomically and a
rerun starts again from the list.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..errors import ConfigError, InputError
from ..io import atomic_dir, write_json
from .av import SAMPLE_RATE, ClipError, decode_clip

log = logging.getLogger("qshift.download")

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".flv", ".m4v")
ON_ERROR = ("skip", "fail")
# AudioSet / VGGSound clips are 10 s: 160,000 samples at 16 kHz (998 fbank frames; CAV-MAE pads
# the rest of its 1024 with zero *fbank* frames, which the model's audio_transform does when it is
# given a clip's true length, clips.json meta.audio_samples)
CLIP_SAMPLES = 10 * SAMPLE_RATE


@dataclass
class ClipEntry:
    id: str  # unique in the list
    stems: tuple[str, ...]  # file stems to look for, in order
    labels: list[str] = field(default_factory=list)
    start: float | None = None


def _bad(path: Path, line: int, msg: str) -> InputError:
    return InputError(f"malformed clip list {path} line {line}: {msg}")


def _number(path: Path, line: int, value: str, what: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise _bad(path, line, f"{what} {value!r} is not a number") from None


def _stems(ytid: str, start: float | None) -> tuple[str, ...]:
    if start is None:
        return (ytid,)
    s = int(start) if float(start).is_integer() else start
    return tuple(dict.fromkeys([f"{ytid}_{start:.3f}", f"{ytid}_{int(start):06d}", f"{ytid}_{s}",
                                f"{ytid}_{int(start)}", ytid]))


def read_audioset_csv(path: Path, **_) -> list[ClipEntry]:
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        for n, row in enumerate(csv.reader(f, skipinitialspace=True), 1):
            if not row or row[0].startswith("#"):
                continue
            if len(row) < 4:
                raise _bad(path, n, f"expected YTID, start_seconds, end_seconds, positive_labels; got {row!r}")
            ytid, start = row[0].strip(), _number(path, n, row[1], "start_seconds")
            _number(path, n, row[2], "end_seconds")
            labels = [x.strip() for x in ",".join(row[3:]).split(",") if x.strip()]
            out.append(ClipEntry(f"{ytid}_{start:.3f}", _stems(ytid, start), labels, start))
    return out


def read_vggsound_csv(path: Path, split: str | None = "test", **_) -> list[ClipEntry]:
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        for n, row in enumerate(csv.reader(f), 1):
            if not row or row[0].startswith("#"):
                continue
            if len(row) < 4:
                raise _bad(path, n, f"expected ytid,start,label,split; got {row!r}")
            if n == 1 and row[1].strip().lower() in ("start", "start_seconds"):
                continue  # a header line
            ytid, start = row[0].strip(), _number(path, n, row[1], "start")
            label, row_split = ",".join(row[2:-1]).strip(), row[-1].strip()
            if split is not None and row_split != split:
                continue
            out.append(ClipEntry(f"{ytid}_{int(start):06d}", _stems(ytid, start), [label], start))
    return out


def read_cav_mae_json(path: Path, **_) -> list[ClipEntry]:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"clip list {path} is not readable JSON: {e}") from None
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, list):
        raise InputError(f"clip list {path}: expected CAV-MAE's {{\"data\": [{{\"video_id\", \"labels\", ...}}]}}")
    out = []
    for i, d in enumerate(data):
        if not isinstance(d, dict) or not isinstance(d.get("video_id"), str) or not d["video_id"].strip():
            raise InputError(f"clip list {path}: data[{i}] has no string video_id")
        vid = d["video_id"].strip()
        labels = [x for x in str(d.get("labels", "")).split(",") if x]
        out.append(ClipEntry(vid, (vid,), labels))
    return out


LIST_FORMATS: dict[str, Callable[..., list[ClipEntry]]] = {
    "audioset-csv": read_audioset_csv, "vggsound-csv": read_vggsound_csv, "cav-mae-json": read_cav_mae_json}


def read_clip_list(path: str | Path, fmt: str, split: str | None = "test") -> list[ClipEntry]:
    if fmt not in LIST_FORMATS:
        raise ConfigError(f"clip list format {fmt!r}; valid: {', '.join(LIST_FORMATS)}")
    path = Path(path)
    if not path.is_file():
        raise InputError(f"clip list {path} not found")
    entries = LIST_FORMATS[fmt](path, split=split)
    seen: set[str] = set()
    unique = []
    for e in entries:
        if e.id not in seen:
            seen.add(e.id)
            unique.append(e)
    if len(unique) < len(entries):
        log.warning("clip list %s: %d duplicate entries dropped", path, len(entries) - len(unique))
    return unique


def index_clips(folder: str | Path) -> dict[str, Path]:
    """Every video file under ``folder`` by its stem (the first in sorted order wins)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"clip folder {folder} not found (datasets.<name>.path: the folder holding the "
                         f"downloaded clips)")
    out: dict[str, Path] = {}
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for f in sorted(files):
            p = Path(root) / f
            if p.suffix.lower() in VIDEO_EXTENSIONS:
                out.setdefault(p.stem, p)
    return out


def locate(entries: list[ClipEntry], index: dict[str, Path]) -> Iterator[tuple[ClipEntry, Path | None]]:
    for e in entries:
        yield e, next((index[s] for s in e.stems if s in index), None)


class _Appender:
    """Rows appended to a raw file, turned into a ``.npy`` of exactly the rows kept."""

    def __init__(self, path: Path, row_shape: tuple[int, ...], dtype):
        self.path, self.row_shape, self.dtype = path, row_shape, np.dtype(dtype)
        self.raw = path.with_suffix(".raw")
        self.f = open(self.raw, "wb")
        self.n = 0

    def put(self, row: np.ndarray) -> None:
        row = np.ascontiguousarray(row, dtype=self.dtype)
        assert row.shape == self.row_shape, (row.shape, self.row_shape)
        self.f.write(row.tobytes())
        self.n += 1

    def close(self, chunk: int = 64) -> None:
        self.f.close()
        out = np.lib.format.open_memmap(self.path, mode="w+", dtype=self.dtype, shape=(self.n, *self.row_shape))
        if self.n:
            src = np.memmap(self.raw, dtype=self.dtype, mode="r", shape=(self.n, *self.row_shape))
            for i in range(0, self.n, chunk):
                out[i:i + chunk] = src[i:i + chunk]
            del src
        out.flush()
        del out
        self.raw.unlink()


def prepare_clip_list(list_path: str | Path, list_format: str, clips_dir: str | Path, out_dir: str | Path, *,
                      split: str | None = "test", n_frames: int = 1, image_size: int = 224,
                      max_samples: int = CLIP_SAMPLES, max_clips: int | None = None, on_error: str = "skip",
                      dataset: str = "clips", progress: bool = True) -> dict:
    """Decode the listed clips found in ``clips_dir`` into a video-audio dataset folder
    ``out_dir`` (the layout of :mod:`qshift.va`: ``manifest.json`` and the clip set ``test/``):
    ``frames.npy`` uint8 ``[N, n_frames, S, S, 3]``, ``audio.npy`` float32 ``[N, max_samples]``
    (zero-padded), ``clips.json`` (integer ids 0..N-1; ``meta``: the list's clip ids, labels,
    files, each clip's true ``audio_samples``, per-clip decode info, and ``skips``). Returns
    statistics."""
    from ..progress import tqdm
    from ..va import CLIPS, FORMAT, MANIFEST_FORMAT

    if on_error not in ON_ERROR:
        raise ConfigError(f"params: datasets.{dataset}.on_error {on_error!r}; valid: {', '.join(ON_ERROR)}")
    for key, v, lo in (("n_frames", n_frames, 1), ("image_size", image_size, 16), ("max_samples", max_samples, 400)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ConfigError(f"params: datasets.{dataset}.{key} must be an integer >= {lo}, got {v!r}")
    entries = read_clip_list(list_path, list_format, split)
    if max_clips is not None:
        entries = entries[:max_clips]
    if not entries:
        raise InputError(f"clip list {list_path} ({list_format}, split {split}) lists no clips")
    index = index_clips(clips_dir)
    start = time.perf_counter()
    skips: list[dict] = []
    kept: list[dict] = []
    with atomic_dir(out_dir) as tmp:
        d = tmp / "test"
        d.mkdir(parents=True)
        frames = _Appender(d / "frames.npy", (n_frames, image_size, image_size, 3), np.uint8)
        audio = _Appender(d / "audio.npy", (max_samples,), np.float32)
        try:
            for e, path in tqdm(list(locate(entries, index)), desc=dataset, unit="clip", disable=not progress):
                if path is None:
                    skip = {"id": e.id, "file": None, "kind": "missing",
                            "reason": f"no file {e.stems[0]}{{{','.join(VIDEO_EXTENSIONS)}}} in {clips_dir}"}
                else:
                    try:
                        clip = decode_clip(path, n_frames, image_size, SAMPLE_RATE, max_samples)
                    except ClipError as err:
                        if on_error == "fail":
                            raise
                        skip = {"id": e.id, "file": str(path), "kind": err.kind, "reason": err.reason}
                    else:
                        wave = np.zeros(max_samples, np.float32)
                        wave[:clip.audio.shape[0]] = clip.audio
                        frames.put(clip.frames)
                        audio.put(wave)
                        kept.append({"id": e.id, "labels": e.labels, "file": str(path),
                                     "audio_samples": int(clip.audio.shape[0]), "info": clip.info})
                        continue
                if on_error == "fail":
                    raise InputError(f"clip {e.id}: {skip['reason']} (datasets.{dataset}.on_error: fail)")
                skips.append(skip)
                log.warning("%s: skipped clip %s (%s): %s", dataset, e.id, skip["kind"], skip["reason"])
        finally:
            frames.close()
            audio.close()
        if not kept:
            raise InputError(f"clip list {list_path}: none of its {len(entries)} clips could be used (e.g. "
                             f"{skips[0]['reason']}); see the clip folder {clips_dir}")
        meta = {"clip_ids": [k["id"] for k in kept], "labels": [k["labels"] for k in kept],
                "files": [k["file"] for k in kept], "audio_samples": [k["audio_samples"] for k in kept],
                "decode": [k["info"] for k in kept], "skips": skips, "list": str(list_path),
                "list_format": list_format, "n_frames": n_frames, "image_size": image_size, "synthetic": False}
        write_json(d / CLIPS, {"format": FORMAT, "dataset": dataset, "split": "test", "n": len(kept),
                               "ids": list(range(len(kept))), "sample_rate": SAMPLE_RATE, "frames": "frames.npy",
                               "audio": "audio.npy", "meta": meta})
        write_json(tmp / "manifest.json", {
            "format": MANIFEST_FORMAT, "dataset": dataset, "task": "video-audio", "splits": {"test": "test"},
            "sample_rate": SAMPLE_RATE,
            "meta": {"synthetic": False, "image_size": image_size, "n_frames": n_frames, "list": str(list_path),
                     "list_format": list_format, "clips_dir": str(clips_dir), "listed": len(entries),
                     "kept": len(kept), "skipped": len(skips)}})
    by_kind: dict[str, int] = {}
    for s in skips:
        by_kind[s["kind"]] = by_kind.get(s["kind"], 0) + 1
    if skips:
        log.warning("%s: %d of %d clips skipped (%s); the list is in %s", dataset, len(skips), len(entries),
                    ", ".join(f"{k}: {v}" for k, v in sorted(by_kind.items())), Path(out_dir) / "test" / CLIPS)
    return {"listed": len(entries), "kept": len(kept), "skipped": len(skips), "skipped_by_kind": by_kind,
            "n_frames": n_frames, "image_size": image_size, "seconds": round(time.perf_counter() - start, 2)}


# -- params.yaml: datasets.<name> with kind: clip-list ------------------------------------------------
KIND = "clip-list"
DATASET_KEYS = ("kind", "task", "list", "clips", "split", "n_frames", "image_size", "max_samples", "max_clips",
                "on_error", "description")
LIST_KEYS = ("format", "url", "sha256", "path")


def check_dataset(d: dict, dataset: str) -> None:
    """Validate a ``kind: clip-list`` entry's structure (config validation: every dataset entry,
    so the user's clip folder is only required when the benchmark is downloaded)."""
    from .download import check_sha256

    where = f"params: datasets.{dataset}"
    unknown = sorted(set(d) - set(DATASET_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(DATASET_KEYS)}")
    if d.get("task") != "video-audio":
        raise ConfigError(f"{where}: a kind: {KIND} dataset must say task: video-audio, got {d.get('task')!r}")
    lst = d.get("list")
    if not isinstance(lst, dict):
        raise ConfigError(f"{where}.list must be a mapping with keys {', '.join(LIST_KEYS)}")
    bad = sorted(set(lst) - set(LIST_KEYS))
    if bad:
        raise ConfigError(f"{where}.list: unknown key(s) {', '.join(bad)}; valid: {', '.join(LIST_KEYS)}")
    if lst.get("format") not in LIST_FORMATS:
        raise ConfigError(f"{where}.list.format {lst.get('format')!r}; valid: {', '.join(LIST_FORMATS)}")
    if not lst.get("path") and not lst.get("url"):
        raise ConfigError(f"{where}.list: set path (a local clip list) or url")
    check_sha256(lst.get("sha256"), f"datasets.{dataset}.list.sha256")
    for key in ("clips", "split"):
        if d.get(key) is not None and not isinstance(d[key], str):
            raise ConfigError(f"{where}.{key} must be a string or null, got {d[key]!r}")
    if d.get("on_error", "skip") not in ON_ERROR:
        raise ConfigError(f"{where}.on_error {d.get('on_error')!r}; valid: {', '.join(ON_ERROR)}")
    for key, lo in (("n_frames", 1), ("image_size", 16), ("max_samples", 400), ("max_clips", 1)):
        v = d.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < lo):
            raise ConfigError(f"{where}.{key} must be an integer >= {lo}, got {v!r}")


def clips_folder(d: dict, dataset: str) -> Path:
    if not d.get("clips"):
        raise ConfigError(f"params: datasets.{dataset}.clips is required: the folder holding the downloaded clips "
                          f"(you download the videos yourself; files named YTID_START.mp4 / .mkv / ...)")
    clips = Path(d["clips"]).expanduser()
    if not clips.is_dir():
        raise InputError(f"params: datasets.{dataset}.clips {clips} is not a folder (download the clips there "
                         f"first: qshift fetches no video)")
    return clips


def download_clip_list(dataset: str, d: dict, dl: dict, raw_dir: str | Path, progress: bool = True) -> dict:
    """Stage ``download`` for ``kind: clip-list``: the clip list (``list.path``, or ``list.url``
    fetched into ``download.cache_dir``, resumable, sha256-checked when given) copied to
    ``raw_dir/lists/``; the clip folder is checked, not copied (videos are never downloaded)."""
    import shutil

    from .karpathy import DOWNLOAD_JSON, _obtain

    check_dataset(d, dataset)
    clips = clips_folder(d, dataset)
    src, rec = _obtain(dataset, "list", d["list"], dl, progress)
    if src.is_dir():
        raise InputError(f"datasets.{dataset}.list: {src} is a folder; expected the clip list file")
    with atomic_dir(raw_dir) as tmp:
        (tmp / "lists").mkdir()
        shutil.copyfile(src, tmp / "lists" / src.name)
        info = {"dataset": dataset, "kind": KIND, "files": [rec], "list": f"lists/{src.name}",
                "list_format": d["list"]["format"], "clips": str(clips.resolve()),
                "note": "clip list only: the videos are the user's (datasets.<name>.clips), decoded by prepare"}
        write_json(tmp / DOWNLOAD_JSON, info)
    return info


def prepare_dataset(d: dict, dataset: str, raw_dir: str | Path, out_dir: str | Path, progress: bool = True) -> dict:
    """Stage ``prepare`` for ``kind: clip-list``: the downloaded list + the clip folder -> clip set."""
    from .karpathy import DOWNLOAD_JSON

    check_dataset(d, dataset)
    clips = clips_folder(d, dataset)
    info_path = Path(raw_dir) / DOWNLOAD_JSON
    try:
        info = json.loads(info_path.read_text())
        path = Path(raw_dir) / info["list"]
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(f"{info_path} is missing or not a clip-list download record; run the download stage "
                         f"for datasets.{dataset}") from None
    return prepare_clip_list(path, d["list"]["format"], clips, out_dir, split=d.get("split") or "test",
                             n_frames=d.get("n_frames") or 1, image_size=d.get("image_size") or 224,
                             max_samples=d.get("max_samples") or CLIP_SAMPLES, max_clips=d.get("max_clips"),
                             on_error=d.get("on_error", "skip"), dataset=dataset, progress=progress)
