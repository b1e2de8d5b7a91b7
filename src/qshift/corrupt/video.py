"""Video corruptions: the image corruption registry applied frame by frame (``v2a`` queries).

READ (Yang et al., ICLR 2024, github XLearning-SCU/2024-ICLR-READ,
``make_corruptions/make_c_video.py``) builds its Video-C sets this way: each of a clip's 10
extracted frames (``frame_0`` ... ``frame_9``, resized to 256 and centre-cropped to 224) gets the
same ImageNet-C corruption at the same severity, one of 15 types — gaussian_noise, shot_noise,
impulse_noise, defocus_blur, glass_blur, motion_blur, zoom_blur, snow, frost, fog, brightness,
contrast, elastic_transform, pixelate, jpeg_compression (no speckle_noise) — severities 1-5,
saved as JPEG (quality 85). Its random draws come from numpy's global RNG, unseeded.

Here (``corrupt.video``): every name of the image registry (:mod:`.image`: READ's 15 plus
speckle_noise and the validation-only ones), severities 1-5, through the same
:func:`~qshift.corrupt.image.corrupt_image` and so with both of its implementations
(``corrupt.image.implementation``: ``imagecorruptions`` or ``mm_robustness``). Each frame is
seeded by (dataset, clip id, corruption, severity, frame index) — :func:`frame_seed` — so a
clip's frames get independent noise (as READ's independent per-frame draws) while every output
is reproducible on its own, in any order or worker. Frames stay uint8 arrays (no JPEG round
trip: the built-in clips are arrays, not extracted JPEG frames).

A *segment* corruption corrupts the frames of one clip differently in time
(:func:`corrupt_segments`: e.g. frames 0-1 clean, 2 noise, 3 blur): the temporal-sequence
query shift of REST's Fig. 1 within a clip; the streams across successive clips are
:mod:`qshift.va`'s.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..io import derive_seed, query_seed
from ..registry import Registry
from .image import BENCHMARK_IMAGE, IMAGE_CORRUPTIONS, VALIDATION_IMAGE, corrupt_image

VIDEO_CORRUPTIONS: Registry = Registry("video corruption")
# READ's Video-C list (make_c_video.py --corruption choices, without 'all')
READ_VIDEO = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
              "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
              "jpeg_compression")
READ_FRAMES = 10  # frames per clip READ corrupts
READ_JPEG_QUALITY = 85

for _name in BENCHMARK_IMAGE + VALIDATION_IMAGE:
    VIDEO_CORRUPTIONS.register(_name)(IMAGE_CORRUPTIONS.get(_name))


def frame_seed(dataset: str, clip_id, corruption: str, severity: int, frame: int, draw: int | None = None) -> int:
    """The seed of one frame's corruption: the clip's query seed (as an image query's; with ``draw``,
    a set drawn anew for another run seed: params seed_corruptions) and the frame."""
    return derive_seed(query_seed(dataset, clip_id, corruption, severity, draw), "frame", int(frame))


def check_frames(frames: np.ndarray, what: str = "clip") -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise InputError(f"{what}: video frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    if frames.shape[0] == 0:
        raise InputError(f"{what}: the clip has no frames (zero-length video)")
    return frames


def corrupt_video(name: str, frames: np.ndarray, severity: int, seeds, implementation: str = "imagecorruptions",
                  options: dict | None = None, what: str = "clip") -> np.ndarray:
    """``name`` at ``severity`` on every frame of ``frames`` (uint8 [T, H, W, 3]); ``seeds``: one
    seed per frame (:func:`frame_seed`) or a callable ``t -> seed``. Returns uint8 [T, H, W, 3]."""
    VIDEO_CORRUPTIONS.check(name)
    frames = check_frames(frames, what)
    out = np.empty_like(frames)
    for t in range(frames.shape[0]):
        seed = seeds(t) if callable(seeds) else seeds[t]
        try:
            f = corrupt_image(name, frames[t], severity, seed, implementation, options)
        except InputError as e:
            raise InputError(f"{what}, frame {t}: {e}") from None
        if f.shape != frames[t].shape:  # keep the clip's geometry (mm_robustness pixelate of non-square frames)
            from PIL import Image

            f = np.asarray(Image.fromarray(f).resize(frames.shape[2:0:-1], Image.BILINEAR))
        out[t] = f
    return out


def segment_bounds(n_frames: int, n_segments: int) -> list[tuple[int, int]]:
    """Contiguous near-equal frame ranges [start, stop) of ``n_segments`` segments of a clip."""
    if n_segments > n_frames:
        raise InputError(f"{n_segments} segments need at least as many frames, the clip has {n_frames}")
    cuts = np.linspace(0, n_frames, n_segments + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:])]


def corrupt_segments(frames: np.ndarray, domains: list[tuple[str, int]], seed_of, implementation: str = "imagecorruptions",
                     options: dict | None = None, what: str = "clip") -> np.ndarray:
    """The clip's frames cut into ``len(domains)`` contiguous segments, segment k corrupted by
    ``domains[k]`` = (corruption or ``"clean"``, severity); ``seed_of(corruption, severity, t)``
    gives frame t's seed (the per-corruption set's, so a frame is bit-identical to the same frame there)."""
    frames = check_frames(frames, what)
    out = frames.copy()
    for (a, b), (corruption, severity) in zip(segment_bounds(len(frames), len(domains)), domains):
        if corruption == "clean":
            continue
        seg = corrupt_video(corruption, frames[a:b], severity, lambda t, c=corruption, s=severity, a=a: seed_of(c, s, a + t),
                            implementation, options, what)
        out[a:b] = seg
    return out
