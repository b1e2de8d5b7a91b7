"""The built-in video-audio benchmark: generated clips whose soundtrack describes their scene.

Everything here is **synthetic** (drawn and synthesised from the seed, offline), a stand-in for
AudioSet / VGGSound clips that keeps the task's structure: a clip is a few video frames and a
one-second mono soundtrack, and the soundtrack is predictable from the frames (and back) only
through what moves in them.

Video: ``n_frames`` (default 4) RGB frames of ``image_size`` px (default 32) on a dark,
slightly noisy gradient background, with one or two objects. Each object has a *shape*
(circle, square, triangle, cross), a *colour* (6), a *motion* (static, left, right, up, down:
``step`` px per frame) and a start position.

Audio (16 kHz): each object contributes a tone whose

- **timbre** is its shape: circle = sine, square = soft square wave, triangle = triangle wave,
  cross = sawtooth (6 harmonics);
- **pitch** is its colour: one of 6 notes, 3 semitones apart from 196 Hz (G3) up;
- **rhythm / glide** is its motion: static = a steady tone, right = 3 Hz pulses, left = 6 Hz
  pulses, up / down = a glide of +-5 semitones over the clip;
- **onset** is its horizontal start position (0-250 ms after the clip starts, left to right);

mixed at 0.3-0.4 amplitude each over faint white noise (std 0.003), clipped to [-1, 1].

Clips are seeded by ``(seed, split, index)``: any clip is reproducible alone, and a split's
content does not depend on the other splits' sizes. Splits: ``train`` (the two-tower's
contrastive training, :mod:`qshift.models.tiny_va`), ``val`` (its validation figures) and
``test`` (queries and gallery: every test clip's video is a v2a query and its audio the a2v
gallery item, and the other way round). On disk: one clip set per split
(:mod:`qshift.va`: ``<split>/clips.json`` + ``frames.npy`` + ``audio.npy``) and ``manifest.json``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..io import atomic_dir, derive_seed, write_json
from ..progress import tqdm

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {"red": (230, 60, 50), "green": (60, 200, 70), "blue": (60, 110, 240), "yellow": (235, 220, 60),
           "magenta": (220, 70, 220), "cyan": (70, 220, 225)}
MOTIONS = ("static", "left", "right", "up", "down")
SAMPLE_RATE = 16000
DURATION = 1.0
BASE_HZ = 196.0  # G3
SEMITONES = 3  # between successive colours' notes
PULSE_HZ = {"right": 3.0, "left": 6.0}
GLIDE = {"up": 5.0, "down": -5.0}  # semitones over the clip
MAX_ONSET = 0.25  # seconds: an object starting at the right edge starts sounding this late
SPLITS = ("train", "val", "test")
_DIRS = {"static": (0, 0), "left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def _mask(shape: str, h: int, w: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (np.abs(dx) <= 0.8 * r) & (np.abs(dy) <= 0.8 * r)
    if shape == "triangle":  # apex up
        return (dy <= r) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.5)
    if shape == "cross":
        arm = max(1.0, r / 3)
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    raise ConfigError(f"shape {shape!r}; valid: {', '.join(SHAPES)}")


def make_clip(seed: int, split: str, index: int, image_size: int = 32, n_frames: int = 4, step: int = 3,
              sample_rate: int = SAMPLE_RATE, duration: float = DURATION) -> tuple[np.ndarray, np.ndarray, list]:
    """One clip: (frames uint8 [T, H, W, 3], waveform float32 [samples], objects
    [{shape, colour, motion, x, y, r}])."""
    rng = np.random.default_rng(derive_seed("builtin-va", seed, split, index))
    h = w = image_size
    n_obj = 1 if rng.random() < 0.3 else 2
    objects = []
    travel = step * (n_frames - 1)
    for _ in range(n_obj):
        shape, colour, motion = SHAPES[rng.integers(4)], list(COLOURS)[rng.integers(6)], MOTIONS[rng.integers(5)]
        r = float(rng.uniform(0.14, 0.2) * image_size)
        ddx, ddy = _DIRS[motion]
        lo_x, hi_x = r + 1 + max(0, -ddx) * travel, w - r - 2 - max(0, ddx) * travel
        lo_y, hi_y = r + 1 + max(0, -ddy) * travel, h - r - 2 - max(0, ddy) * travel
        x, y = float(rng.uniform(lo_x, max(lo_x, hi_x))), float(rng.uniform(lo_y, max(lo_y, hi_y)))
        objects.append({"shape": shape, "colour": colour, "motion": motion, "x": round(x, 2), "y": round(y, 2),
                        "r": round(r, 2)})
    # background: a dark gradient in a random hue, faint noise that changes per frame
    c0, c1 = rng.uniform(10, 70, 3), rng.uniform(10, 70, 3)
    ramp = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    bg = (c0 * (1 - ramp) + c1 * ramp) * np.ones((h, 1, 1), np.float32)
    frames = np.empty((n_frames, h, w, 3), np.uint8)
    for t in range(n_frames):
        img = bg + rng.normal(0, 4, (h, w, 3)).astype(np.float32)
        for o in objects:
            ddx, ddy = _DIRS[o["motion"]]
            m = _mask(o["shape"], h, w, o["x"] + ddx * step * t, o["y"] + ddy * step * t, o["r"])
            img[m] = COLOURS[o["colour"]]
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
    return frames, synthesise(objects, rng, image_size, sample_rate, duration), objects


def synthesise(objects: list, rng: np.random.Generator, image_size: int, sample_rate: int = SAMPLE_RATE,
               duration: float = DURATION) -> np.ndarray:
    """The soundtrack of a clip's objects (module docstring: timbre, pitch, rhythm, onset)."""
    n = int(round(sample_rate * duration))
    t = np.arange(n, dtype=np.float64) / sample_rate
    wave = rng.normal(0, 0.003, n)
    for o in objects:
        f0 = BASE_HZ * 2 ** (SEMITONES * list(COLOURS).index(o["colour"]) / 12)
        f = f0 * 2 ** (GLIDE.get(o["motion"], 0.0) / 12 * t / duration)
        phase = 2 * np.pi * np.cumsum(f) / sample_rate + rng.uniform(0, 2 * np.pi)
        if o["shape"] == "circle":
            tone = np.sin(phase)
        elif o["shape"] == "square":
            tone = np.tanh(4 * np.sin(phase)) * 0.8
        elif o["shape"] == "triangle":
            tone = 2 / np.pi * np.arcsin(np.sin(phase))
        else:  # cross: sawtooth
            tone = sum(np.sin(k * phase) / k for k in range(1, 7)) * 0.6
        onset = MAX_ONSET * o["x"] / image_size
        env = np.clip((t - onset) / 0.01, 0, 1) * np.clip((duration - t) / 0.01, 0, 1)
        if o["motion"] in PULSE_HZ:
            env = env * (0.5 - 0.5 * np.cos(2 * np.pi * PULSE_HZ[o["motion"]] * (t - onset))) ** 2
        wave += float(rng.uniform(0.3, 0.4)) * env * tone
    return np.clip(wave, -1, 1).astype(np.float32)


def generate_builtin_va(out_dir: str | Path, n_train: int, n_val: int, n_test: int, image_size: int = 32,
                        n_frames: int = 4, seed: int = 42, sample_rate: int = SAMPLE_RATE, duration: float = DURATION,
                        dataset: str = "builtin-va", progress: bool = True) -> dict:
    """Write the built-in video-audio benchmark to ``out_dir`` atomically (one clip set per split,
    written clip by clip into memory-mapped arrays); returns its statistics."""
    from ..va import ClipSetWriter, MANIFEST_FORMAT

    sizes = {"train": n_train, "val": n_val, "test": n_test}
    for name, n in sizes.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ConfigError(f"params: datasets.{dataset}.n_{name} must be a non-negative integer, got {n!r}")
    if n_test < 1:
        raise ConfigError(f"params: datasets.{dataset}.n_test must be at least 1, got {n_test}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 16:
        raise ConfigError(f"params: datasets.{dataset}.image_size must be an integer >= 16, got {image_size!r}")
    if isinstance(n_frames, bool) or not isinstance(n_frames, int) or not 1 <= n_frames <= 32:
        raise ConfigError(f"params: datasets.{dataset}.n_frames must be an integer in 1..32, got {n_frames!r}")
    start = time.perf_counter()
    samples = int(round(sample_rate * duration))
    counts = {"objects": {1: 0, 2: 0}, "motion": {m: 0 for m in MOTIONS}}
    with atomic_dir(out_dir) as tmp, tqdm(total=sum(sizes.values()), desc=dataset, unit="clip",
                                          disable=not progress) as bar:
        for split, n in sizes.items():
            if n == 0:
                continue
            writer = ClipSetWriter(tmp / split, n, frames_shape=(n_frames, image_size, image_size, 3),
                                   samples=samples, sample_rate=sample_rate)
            labels = []
            for i in range(n):
                frames, wave, objects = make_clip(seed, split, i, image_size, n_frames, sample_rate=sample_rate,
                                                  duration=duration)
                writer.put(i, frames=frames, audio=wave)
                labels.append([[o["shape"], o["colour"], o["motion"]] for o in objects])
                if split == "test":
                    counts["objects"][len(objects)] += 1
                    for o in objects:
                        counts["motion"][o["motion"]] += 1
                bar.update()
            # clip ids: unique across splits (the test split's are the owner ids of queries and gallery)
            base = sum(sizes[s] for s in SPLITS[:SPLITS.index(split)])
            writer.close(dataset=dataset, split=split, ids=list(range(base, base + n)),
                         meta={"labels": labels, "synthetic": True, "generator": "qshift.data.builtin_va",
                               "seed": seed})
        write_json(tmp / "manifest.json", {
            "format": MANIFEST_FORMAT, "dataset": dataset, "task": "video-audio",
            "splits": {s: s for s, n in sizes.items() if n}, "sample_rate": sample_rate,
            "meta": {"synthetic": True, "image_size": image_size, "n_frames": n_frames, "duration": duration,
                     "generator": "qshift.data.builtin_va", "seed": seed}})
    return {"n_train": n_train, "n_val": n_val, "n_test": n_test, "image_size": image_size, "n_frames": n_frames,
            "sample_rate": sample_rate, "test_objects": counts["objects"], "test_motion": counts["motion"],
            "seconds": round(time.perf_counter() - start, 2)}
