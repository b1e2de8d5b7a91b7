"""Image corruptions (ImageNet-C style, severities 1-5) on the ``imagecorruptions`` API.

Implementation: ``imagecorruptions-imaug`` (a maintained release of ``imagecorruptions``
that runs on numpy 2 / scikit-image >= 0.20); its behaviour (e.g. pixelate relative to the
image size, numba glass_blur) is the one we use, not the reference scripts' variants.
``corrupt.image.implementation: mm_robustness`` selects instead the reference scripts' own
behaviour for the same names (mm_robustness.py; the coco-c / flickr-c presets use it).

Determinism. Every call is seeded from one integer (the pipeline derives it from
(dataset, image id, corruption, severity)): ``glass_blur`` and ``impulse_noise`` take the seed
directly (numba's and scikit-image's own RNGs), the rest — frost's choice of texture and crop
included — draw from numpy's global RNG, which we seed right before the call and restore
after it, so an output never depends on job order, process or worker, and callers' global
RNG is left untouched.

Inputs ``corrupt_image`` accepts (uint8 only; anything else is an ``InputError``):

* RGB ``(H, W, 3)`` — the output has the same shape and dtype.
* grayscale ``(H, W)`` / ``(H, W, 1)`` and gray+alpha ``(H, W, 2)`` / RGBA ``(H, W, 4)`` —
  converted to RGB the way the file path does it (PIL ``convert("RGB")``: gray replicated to
  three channels, alpha dropped), so the output is ``(H, W, 3)``: queries go to RGB encoders
  and several corruptions (frost, snow, brightness in HSV) are colour operations.
* small images: ``imagecorruptions.corrupt`` refuses sides under 32 px, but its corruption
  functions themselves work on small images (checked: all 16 at all severities on 8x8, 16x16,
  8x40, 31x31, 2x9 …; only pixelate needs ``side * factor >= 1``). We call them directly, so a
  small image is corrupted natively — corruption parameters are in pixels, exactly as for
  large images — rather than enlarged and reduced (which would average noise away and make
  pixelate a no-op). Sides under ``MIN_SIDE`` = 4 px are an ``InputError``.
* huge images: work at any size up to ``MAX_PIXELS`` (25 MP, e.g. 6000 x 4000; 4000 x 3000
  takes 0.1-12 s per corruption and up to ~4.6 GB for brightness's float64 HSV copy), frost
  scaling its texture up to the image. Larger images are an ``InputError`` naming the limit.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError, InputError
from ..registry import Registry

IMAGE_CORRUPTIONS: Registry = Registry("image corruption")

# The 16 of the benchmark (docs/benchmarks.md) and the 3 extra ones imagecorruptions ships, which
# are kept for validation (choosing hyperparameters) and never reported.
BENCHMARK_IMAGE = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "defocus_blur", "glass_blur",
                   "zoom_blur", "motion_blur", "fog", "frost", "snow", "contrast", "brightness", "pixelate",
                   "elastic_transform", "jpeg_compression")
VALIDATION_IMAGE = ("gaussian_blur", "spatter", "saturate")
NOISE_IMAGE = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise")
BLUR_IMAGE = ("defocus_blur", "glass_blur", "zoom_blur", "motion_blur")
_TAKES_SEED = ("glass_blur", "impulse_noise")
MIN_SIDE = 4
MAX_PIXELS = 25_000_000
# corrupt.image.implementation: the same 19 names computed by imagecorruptions(-imaug), or as
# MM_Robustness's scripts computed them for the paper's COCO-C / Flickr-C (mm_robustness.py)
IMPLEMENTATIONS = ("imagecorruptions", "mm_robustness")


def _library():
    """Import imagecorruptions once, with glass_blur's numba kernel cached on disk.

    The shipped kernel is ``@njit`` without ``cache=True``: every process (every pool worker,
    every job) would pay its ~2.5 s compile. Re-jitting the same Python function with
    ``cache=True`` keeps its semantics (same code, same numba RNG) and compiles once per
    machine; where no cache directory is writable we keep the shipped kernel.
    """
    import imagecorruptions
    import imagecorruptions.corruptions as lib

    kernel = lib._shuffle_pixels_njit_glass_blur
    if not getattr(kernel, "_qshift_cached", False) and hasattr(kernel, "py_func"):
        import numba

        try:
            cached = numba.njit(cache=True)(kernel.py_func)
            cached._qshift_cached = True
            lib._shuffle_pixels_njit_glass_blur = cached
        except (RuntimeError, OSError):  # no writable cache location: compile per process
            pass
    return imagecorruptions


def _make(name: str):
    from PIL import Image

    def corruption(image: np.ndarray, severity: int, seed: int) -> np.ndarray:
        lib = _library()
        seed = int(seed) % 2**32
        state = np.random.get_state()
        np.random.seed(seed)
        try:
            kwargs = {"seed": seed} if name in _TAKES_SEED else {}
            # the function itself, not lib.corrupt: that one refuses sides < 32 (see module doc)
            out = lib.corruption_dict[name](Image.fromarray(image), severity, **kwargs)
        finally:
            np.random.set_state(state)
        return np.clip(np.asarray(out), 0, 255).astype(np.uint8)

    corruption.__name__ = name
    corruption.__doc__ = f"imagecorruptions {name!r} at the given severity (1-5); RGB, sides >= {MIN_SIDE}."
    return corruption


for _name in BENCHMARK_IMAGE + VALIDATION_IMAGE:
    IMAGE_CORRUPTIONS.register(_name)(_make(_name))


def as_rgb(image: np.ndarray, what: str = "image") -> np.ndarray:
    """An (H, W, 3) uint8 view/copy of a uint8 gray, gray+alpha, RGB or RGBA array (see module doc)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise InputError(f"{what}: image corruptions need uint8 pixels (0-255), got dtype {image.dtype}; "
                         f"convert first, e.g. (x * 255).round().astype(np.uint8) for floats in [0, 1]")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 2, 3, 4):
        raise InputError(f"{what}: expected an (H, W), (H, W, 1), (H, W, 2), (H, W, 3) or (H, W, 4) array "
                         f"(gray, gray+alpha, RGB, RGBA), got shape {image.shape}")
    h, w, c = image.shape
    if min(h, w) < MIN_SIDE:
        raise InputError(f"{what}: {w}x{h} image is too small; both sides must be at least {MIN_SIDE} px")
    if h * w > MAX_PIXELS:
        raise InputError(f"{what}: {w}x{h} = {h * w:,} pixels exceeds the limit of {MAX_PIXELS:,} "
                         f"(qshift.corrupt.image.MAX_PIXELS; memory grows ~400 bytes per pixel); downscale it first")
    if c in (1, 2):  # gray (+ alpha): replicate, drop alpha — PIL's L/LA -> RGB
        return np.ascontiguousarray(np.repeat(image[:, :, :1], 3, axis=2))
    if c == 4:  # RGBA: drop alpha — PIL's RGBA -> RGB
        return np.ascontiguousarray(image[:, :, :3])
    return np.ascontiguousarray(image)


def check_implementation(image_cfg: dict) -> str:
    """``corrupt.image.implementation`` (default imagecorruptions) and its options, or a ConfigError."""
    impl = image_cfg.get("implementation", "imagecorruptions")
    if impl not in IMPLEMENTATIONS:
        raise ConfigError(f"params: corrupt.image.implementation must be one of {', '.join(IMPLEMENTATIONS)}, "
                          f"got {impl!r}")
    mm = image_cfg.get("mm_robustness") or {}
    if not isinstance(mm, dict) or set(mm) - {"fog_mapsize", "frost_dir"}:
        raise ConfigError(f"params: corrupt.image.mm_robustness takes fog_mapsize and frost_dir, got {mm!r}")
    size = mm.get("fog_mapsize", "auto")
    if size not in (None, "auto") and (isinstance(size, bool) or not isinstance(size, int) or size < 2
                                       or size & (size - 1)):
        raise ConfigError(f"params: corrupt.image.mm_robustness.fog_mapsize must be auto or a power of two, "
                          f"got {size!r}")
    if mm.get("frost_dir") is not None and not isinstance(mm["frost_dir"], str):
        raise ConfigError(f"params: corrupt.image.mm_robustness.frost_dir must be a folder path or null, "
                          f"got {mm['frost_dir']!r}")
    return impl


def implementation_params(image_cfg: dict) -> list:
    """What of the implementation choice an image query set depends on ([] for the default,
    so the default's parameter hashes are unchanged)."""
    impl = image_cfg.get("implementation", "imagecorruptions")
    return [] if impl == "imagecorruptions" else [impl, image_cfg.get("mm_robustness") or {}]


def corrupt_image(name: str, image: np.ndarray, severity: int, seed: int, implementation: str = "imagecorruptions",
                  options: dict | None = None) -> np.ndarray:
    """``name`` at ``severity`` on ``image`` (RGB), seeded by ``seed``; an (H, W, 3) uint8 RGB array.

    ``implementation="mm_robustness"`` computes the reference's function on the BGR array (see
    mm_robustness.py; ``options`` = its resolved fog_mapsize / frost_dir) and keeps the
    reference's output geometry (pixelate of a non-square image comes back w x h).
    """
    fn = IMAGE_CORRUPTIONS.get(name)
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 1 <= severity <= 5:
        raise InputError(f"image corruption severity must be an integer in 1..5, got {severity!r}")
    rgb = as_rgb(image, f"image corruption {name!r}")
    if implementation == "mm_robustness":
        from . import mm_robustness

        out = mm_robustness.corrupt_bgr(name, np.ascontiguousarray(rgb[:, :, ::-1]), int(severity), seed, options)
        return np.ascontiguousarray(out[:, :, ::-1]) if out.ndim == 3 else out
    check_implementation({"implementation": implementation})
    h, w = rgb.shape[:2]
    out = fn(rgb, int(severity), seed)
    if out.shape != rgb.shape:  # defensive: keep the query's geometry if a corruption ever resizes
        from PIL import Image

        out = np.asarray(Image.fromarray(out).resize((w, h), Image.BILINEAR))
    return out
