"""Image corruptions (ImageNet-C style, severities 1-5) on the ``imagecorruptions`` API.

Implementation: ``imagecorruptions-imaug`` (a maintained release of ``imagecorruptions``
that runs on numpy 2 / scikit-image >= 0.20). Every call is seeded: ``glass_blur`` and
``impulse_noise`` take the seed directly, the rest draw from numpy's global RNG, which we
seed right before the call. The seed is derived from (dataset, image id, corruption,
severity), so an output never depends on job order or process.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..registry import Registry

IMAGE_CORRUPTIONS: Registry = Registry("image corruption")

# The 16 of the benchmark (BENCHMARKS.md) and the 3 extra ones imagecorruptions ships, which
# are kept for validation (choosing hyperparameters) and never reported.
BENCHMARK_IMAGE = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "defocus_blur", "glass_blur",
                   "zoom_blur", "motion_blur", "fog", "frost", "snow", "contrast", "brightness", "pixelate",
                   "elastic_transform", "jpeg_compression")
VALIDATION_IMAGE = ("gaussian_blur", "spatter", "saturate")
_TAKES_SEED = ("glass_blur", "impulse_noise")


def _make(name: str):
    def corruption(image: np.ndarray, severity: int, seed: int) -> np.ndarray:
        from imagecorruptions import corrupt

        np.random.seed(seed % 2**32)
        kwargs = {"seed": seed % 2**32} if name in _TAKES_SEED else {}
        out = corrupt(image, severity=severity, corruption_name=name, **kwargs)
        return np.clip(np.asarray(out), 0, 255).astype(np.uint8)

    corruption.__name__ = name
    corruption.__doc__ = f"imagecorruptions {name!r} at the given severity (1-5)."
    return corruption


for _name in BENCHMARK_IMAGE + VALIDATION_IMAGE:
    IMAGE_CORRUPTIONS.register(_name)(_make(_name))


def corrupt_image(name: str, image: np.ndarray, severity: int, seed: int) -> np.ndarray:
    fn = IMAGE_CORRUPTIONS.get(name)
    if not 1 <= int(severity) <= 5:
        raise InputError(f"image corruption severity must be in 1..5, got {severity!r}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"image corruption {name!r} needs an (H, W, 3) uint8 RGB array, got shape "
                         f"{image.shape} dtype {image.dtype}")
    out = fn(image, int(severity), seed)
    if out.shape != image.shape:  # some corruptions resize internally; keep the query's geometry
        from PIL import Image

        out = np.asarray(Image.fromarray(out).resize(image.shape[1::-1], Image.BILINEAR))
    return out
