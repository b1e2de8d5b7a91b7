"""Deterministic input images for the MM_Robustness golden test (tests/test_mm_robustness.py).

The same function made the inputs the golden hashes in tests/data/mm_robustness_golden.json
were computed from (see that file's "how"): blocky colour fields with fine noise, uint8 BGR,
from numpy's legacy RandomState (a stream numpy keeps stable across versions).
"""

from __future__ import annotations

import zlib

import numpy as np

# (width, height): COCO-like, Flickr-like and the reference's 224 x 224
SIZES = ((640, 480), (500, 333), (224, 224))


def make_image(width: int, height: int) -> np.ndarray:
    rs = np.random.RandomState(width * 1000 + height)
    coarse = rs.randint(0, 256, size=(height // 16 + 2, width // 16 + 2, 3))
    img = np.repeat(np.repeat(coarse, 16, axis=0), 16, axis=1)[:height, :width]
    img = img + rs.randint(-24, 25, size=(height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def cell_seed(width: int, height: int, name: str, severity: int) -> int:
    """The global numpy seed of one (image, corruption, severity) cell."""
    return zlib.crc32(f"{width}x{height}/{name}/{severity}".encode())


def digest(arr: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and bytes (C order)."""
    import hashlib

    arr = np.ascontiguousarray(arr)
    h = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(arr.tobytes())
    return h.hexdigest()
