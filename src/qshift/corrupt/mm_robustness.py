"""Image corruptions as MM_Robustness built COCO-C / Flickr-C (``corrupt.image.implementation: mm_robustness``).

The TCR paper's corrupted query images come from MM_Robustness's
``image_perturbation/perturb_COCO_IP.py`` / ``perturb_Flickr30K_IP.py`` (Qiu et al., commit
7b231e2). This module is our own implementation of what those functions compute: given the
same input array and the same numpy global RNG state it returns the same output array
(tests/test_mm_robustness.py checks every one of the 16 x 5 cells against hashes of the
reference's own outputs, tests/data/mm_robustness_golden.json). Facts carried over:

* Input: the array ``cv2.imread(path, cv2.IMREAD_COLOR)`` gives, i.e. **BGR** uint8; every
  function treats it as it comes (so colour operations written for RGB - brightness/contrast
  via HSV, snow's grey level, frost's texture which is flipped to RGB - see swapped channels,
  exactly as in the reference). Output: what the function returns (float or uint8, possibly
  of another shape), written with ``cv2.imwrite(path, out)`` - JPEG quality 95, float pixels
  rounded half-to-even and saturated to uint8 (OpenCV's ``convertTo``): ``to_uint8``.
* 224-px logic: pixelate shrinks to ``int(224 * c)`` px square whatever the image size and
  resizes back with ``dsize=(h, w)`` - OpenCV reads that as (width, height), so a non-square
  image comes back transposed in shape (w x h); glass_blur's pixel "swaps" run only inside
  the top-left 224 x 224 and, because the loop variables overwrite the image size, only on
  one row (``min(h, 224) - max_delta``) in the first iteration; each "swap" is a copy
  (numpy views: both pixels end up with the neighbour's value); elastic_transform's
  parameters are ImageNet-C's 244-based ones.
* motion_blur and jpeg_compression are ImageNet-C's (Hendrycks' ``imagenet_c`` 0.0.2, shipped
  in MM_Robustness and imported as ``from imagenet_c import corrupt``): motion_blur is
  ImageMagick's MotionBlurImage through Wand (a PNG round trip; 16-bit quantum, edge pixels,
  rounded, then 8-bit by truncation - reproduced here in numpy, checked against ImageMagick
  6.9.11-60 Q16), jpeg_compression is a Pillow JPEG round trip of the BGR array at quality
  25/18/15/10/7. snow's motion-blurred snow layer is the same ImageMagick blur. An image
  whose three channels are equal makes ImageMagick write a grey PNG: motion_blur then
  returns what ImageNet-C does with a 2-D result (columns 2, 1, 0 unless it is 224 x 224).
* impulse_noise: scikit-image's ``random_noise(mode='s&p')`` as it was up to scikit-image
  0.18 (``np.random.choice`` on numpy's global RNG); later versions draw from their own
  generator seeded from the OS, which is not reproducible at all.
* fog: the plasma fractal's map size is 1024 in the COCO script and 512 in the Flickr one
  (``fog_mapsize``; ``auto`` = the dataset's script). The reference fails on an image larger
  than the map; we grow the map to the next power of two there (documented deviation).
* frost: texture ``['frost1.png', ..., 'frost6.jpg'][np.random.randint(5)]`` (frost6 is never
  drawn), read with cv2 from the working directory - i.e. MM_Robustness's own
  ``image_perturbation/frost*.png|jpg`` (1800 px wide; NOT the smaller, differently sized
  copies in imagecorruptions/imagenet_c) - cropped to its top-left h x w and flipped to RGB.
  ``frost_dir`` points at a folder with those files; without it the textures shipped in the
  installed imagecorruptions package are used (a documented deviation: other pixels), and a
  texture smaller than the image is first enlarged to cover it (the reference would fail).
* The validation-only gaussian_blur, spatter and saturate are the functions of the same script.

Every function draws only from numpy's global RNG; ``reference_output`` seeds it from one
integer and restores it afterwards (the pipeline derives that integer from dataset, image id,
corruption and severity, as for the other implementation).
"""

from __future__ import annotations

import math
from io import BytesIO
from pathlib import Path

import numpy as np

from ..errors import InputError

FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg")
FOG_MAPSIZE = {"coco": 1024, "flickr30k": 512}  # perturb_COCO_IP.py / perturb_Flickr30K_IP.py


# -- helpers --------------------------------------------------------------------------------

def _gaussian(x: np.ndarray, sigma: float, **kw) -> np.ndarray:
    from skimage.filters import gaussian

    if x.ndim == 3:
        kw.setdefault("channel_axis", -1)  # the reference's multichannel=True (renamed in scikit-image)
    return gaussian(x, sigma=sigma, **kw)


def _plasma(mapsize: int, decay: float) -> np.ndarray:
    """Diamond-square height map in [0, 1] (ImageNet-C's plasma_fractal; draws U(-w, w) per step)."""
    grid = np.empty((mapsize, mapsize), dtype=np.float64)
    grid[0, 0] = 0.0
    step, wibble = mapsize, 100.0
    while step >= 2:
        half = step // 2
        corners = grid[0:mapsize:step, 0:mapsize:step]
        sq = corners + np.roll(corners, -1, axis=0)
        sq += np.roll(sq, -1, axis=1)
        grid[half:mapsize:step, half:mapsize:step] = sq / 4 + wibble * np.random.uniform(-wibble, wibble, sq.shape)
        centres = grid[half:mapsize:step, half:mapsize:step]
        corners = grid[0:mapsize:step, 0:mapsize:step]
        top = (centres + np.roll(centres, 1, axis=0)) + (corners + np.roll(corners, -1, axis=1))
        grid[0:mapsize:step, half:mapsize:step] = top / 4 + wibble * np.random.uniform(-wibble, wibble, top.shape)
        left = (centres + np.roll(centres, 1, axis=1)) + (corners + np.roll(corners, -1, axis=0))
        grid[half:mapsize:step, 0:mapsize:step] = left / 4 + wibble * np.random.uniform(-wibble, wibble, left.shape)
        step //= 2
        wibble /= decay
    grid -= grid.min()
    return grid / grid.max()


def _zoom_centre(img: np.ndarray, factor: float) -> np.ndarray:
    """Zoom the centre crop of ``img`` (H, W, C) by ``factor`` (linear) and cut back to H x W."""
    from scipy.ndimage import zoom

    h, w = img.shape[:2]
    ch, cw = int(np.ceil(h / factor)), int(np.ceil(w / factor))
    t, l = (h - ch) // 2, (w - cw) // 2
    out = zoom(img[t:t + ch, l:l + cw], (factor, factor, 1), order=1)
    t, l = (out.shape[0] - h) // 2, (out.shape[1] - w) // 2
    return out[t:t + h, l:l + w]


def _disk(radius: float, alias_blur: float) -> np.ndarray:
    import cv2

    span = np.arange(-8, 9) if radius <= 8 else np.arange(-radius, radius + 1)
    ksize = (3, 3) if radius <= 8 else (5, 5)
    xx, yy = np.meshgrid(span, span)
    k = ((xx ** 2 + yy ** 2) <= radius ** 2).astype(np.float32)
    k /= np.sum(k)
    return cv2.GaussianBlur(k, ksize=ksize, sigmaX=alias_blur)


def magick_motion_blur(img: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    """ImageMagick's MotionBlurImage on an 8-bit image, as Wand's PNG round trip returns it.

    One-sided Gaussian kernel of width 2*ceil(radius)+1 along ``angle`` (degrees), pixels
    outside the image are the nearest edge pixel, sums in 16-bit quantum (v * 257) rounded to
    the nearest quantum, written back to 8 bits by truncation (q // 257).
    """
    width = int(2 * math.ceil(radius) + 1)
    i = np.arange(width, dtype=np.float64)
    kernel = np.exp(-(i * i) / (2.0 * sigma * sigma)) / (math.sqrt(2 * math.pi) * sigma)
    kernel /= kernel.sum()
    px, py = width * math.sin(math.radians(angle)), width * math.cos(math.radians(angle))
    norm = math.hypot(px, py)
    h, w = img.shape[:2]
    shifts = [(math.ceil(j * py / norm - 0.5), math.ceil(j * px / norm - 0.5)) for j in range(width)]
    # edge pixels beyond the border: pad once by the largest shift (capped at the image size), then slice
    px_, py_ = min(max(abs(dx) for dx, _ in shifts), w), min(max(abs(dy) for _, dy in shifts), h)
    pad = ((py_, py_), (px_, px_)) + ((0, 0),) * (img.ndim - 2)
    q = np.pad(img, pad, mode="edge").astype(np.float64) * 257.0
    acc = np.zeros((h, w) + img.shape[2:], dtype=np.float64)
    for j, (dx, dy) in enumerate(shifts):
        dx, dy = max(-px_, min(px_, dx)), max(-py_, min(py_, dy))
        acc += kernel[j] * q[py_ + dy:py_ + dy + h, px_ + dx:px_ + dx + w]
    quantum = np.clip(np.floor(acc + 0.5), 0, 65535)
    return (quantum // 257).astype(np.uint8)


def _magick_png_roundtrip_blur(img: np.ndarray, radius, sigma, angle) -> np.ndarray:
    """What ``cv2.imdecode(MotionImage(png).motion_blur(...).make_blob(), IMREAD_UNCHANGED)`` gives.

    A colour PNG decodes to BGR (channels reversed); ImageMagick writes an image whose channels
    are all equal as a grey PNG, which decodes to 2-D.
    """
    out = magick_motion_blur(img, radius, sigma, angle)
    if out.ndim == 2:
        return out
    if np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2]):
        return out[..., 0]
    return out[..., ::-1]


def _reflect101(p: np.ndarray, n: int) -> np.ndarray:
    if n == 1:
        return np.zeros_like(p)
    p = np.abs(p)  # -p for p < 0
    period = 2 * n - 2
    p = p % period
    return np.where(p >= n, period - p, p)


def warp_affine_cv4(img: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT_101)`` as OpenCV 3.4 / 4.x
    computes it for a float32 image (bilinear): the inverse map in 10-bit fixed point, source
    positions on a 1/32-pixel grid, weights from the 32 x 32 table, float32 sums in the order
    (p00*w00 + p01*w01) + p10*w10 + p11*w11. OpenCV 5 changed this arithmetic; the reference
    ran on 3.4/4.x (ImageNet-C pins opencv-python 3.4).
    """
    h, w = img.shape[:2]
    m = np.asarray(m, dtype=np.float64).reshape(6).copy()
    det = m[0] * m[4] - m[1] * m[3]
    det = 1.0 / det if det != 0 else 0.0
    a11, a22 = m[4] * det, m[0] * det
    m[0] = a11
    m[1] *= -det
    m[3] *= -det
    m[4] = a22
    b1 = -m[0] * m[2] - m[1] * m[5]
    b2 = -m[3] * m[2] - m[4] * m[5]
    m[2], m[5] = b1, b2
    xs, ys = np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64)
    adelta = np.rint(m[0] * xs * 1024).astype(np.int64)
    bdelta = np.rint(m[3] * xs * 1024).astype(np.int64)
    x0 = np.rint((m[1] * ys + m[2]) * 1024).astype(np.int64) + 16
    y0 = np.rint((m[4] * ys + m[5]) * 1024).astype(np.int64) + 16
    fx_all = (x0[:, None] + adelta[None, :]) >> 5
    fy_all = (y0[:, None] + bdelta[None, :]) >> 5
    sx, sy = fx_all >> 5, fy_all >> 5
    ax = (fx_all & 31).astype(np.float32) * np.float32(1 / 32)
    ay = (fy_all & 31).astype(np.float32) * np.float32(1 / 32)
    one = np.float32(1)
    w00, w01, w10, w11 = (one - ay) * (one - ax), (one - ay) * ax, ay * (one - ax), ay * ax
    x_a, x_b = _reflect101(sx, w), _reflect101(sx + 1, w)
    y_a, y_b = _reflect101(sy, h), _reflect101(sy + 1, h)
    src = img.astype(np.float32, copy=False)
    if src.ndim == 2:
        src = src[..., None]
    out = src[y_a, x_a] * w00[..., None]
    out = out + src[y_a, x_b] * w01[..., None]
    out = out + src[y_b, x_a] * w10[..., None]
    out = out + src[y_b, x_b] * w11[..., None]
    return out.reshape(img.shape)


def to_uint8(out: np.ndarray) -> np.ndarray:
    """The uint8 array ``cv2.imwrite`` writes for ``out`` (round half to even, saturate)."""
    out = np.asarray(out)
    if out.dtype == np.uint8:
        return out
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# -- the corruptions (x: BGR uint8 as cv2.imread returns it) ---------------------------------

def gaussian_noise(x, severity, ctx=None):
    c = (0.08, 0.12, 0.18, 0.26, 0.38)[severity - 1]
    x = np.array(x) / 255.0
    return np.clip(x + np.random.normal(size=x.shape, scale=c), 0, 1) * 255


def shot_noise(x, severity, ctx=None):
    c = (60, 25, 12, 5, 3)[severity - 1]
    x = np.array(x) / 255.0
    return np.clip(np.random.poisson(x * c) / c, 0, 1) * 255


def impulse_noise(x, severity, ctx=None):
    amount = (0.03, 0.06, 0.09, 0.17, 0.27)[severity - 1]
    x = np.array(x) / 255.0
    # scikit-image <= 0.18 random_noise(mode='s&p', amount, salt_vs_pepper=0.5), global RNG
    flipped = np.random.choice([True, False], size=x.shape, p=[amount, 1 - amount])
    salted = np.random.choice([True, False], size=x.shape, p=[0.5, 0.5])
    out = x.copy()
    out[flipped & salted] = 1
    out[flipped & ~salted] = 0.0
    return np.clip(np.clip(out, 0.0, 1.0), 0, 1) * 255


def speckle_noise(x, severity, ctx=None):
    c = (0.15, 0.2, 0.35, 0.45, 0.6)[severity - 1]
    x = np.array(x) / 255.0
    return np.clip(x + x * np.random.normal(size=x.shape, scale=c), 0, 1) * 255


def gaussian_blur(x, severity, ctx=None):
    c = (1, 2, 3, 4, 6)[severity - 1]
    return np.clip(_gaussian(np.array(x) / 255.0, c), 0, 1) * 255


def defocus_blur(x, severity, ctx=None):
    import cv2

    radius, alias = ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))[severity - 1]
    x = np.array(x) / 255.0
    k = _disk(radius, alias)
    out = np.stack([cv2.filter2D(x[:, :, d], -1, k) for d in range(3)], axis=2)
    return np.clip(out, 0, 1) * 255


def glass_blur(x, severity, ctx=None):
    sigma, delta, _iterations = ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2))[severity - 1]
    h, w = x.shape[:2]
    x = np.uint8(_gaussian(np.array(x) / 255.0, sigma) * 255)
    # Only the first iteration's first row moves (see module doc); later iterations draw nothing.
    row = min(h, 224) - delta
    cols = range(min(w, 224) - delta, delta, -1)
    if row > delta and len(cols):
        offsets = np.random.randint(-delta, delta, size=(len(cols), 2))  # same stream as one (2,) draw per pixel
        for col, (dx, dy) in zip(cols, offsets):
            x[row, col] = x[row + dy, col + dx]  # the reference's "swap" is this copy
    return np.clip(_gaussian(x / 255.0, sigma), 0, 1) * 255


def zoom_blur(x, severity, ctx=None):
    factors = (np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01), np.arange(1, 1.21, 0.02),
               np.arange(1, 1.26, 0.02), np.arange(1, 1.33, 0.03))[severity - 1]
    x = (np.array(x) / 255.0).astype(np.float32)
    acc = np.zeros_like(x)
    for f in factors:
        acc = _zoom_centre(x, f) + acc
    return np.clip((x + acc) / (len(factors) + 1), 0, 1) * 255


def motion_blur(x, severity, ctx=None):
    radius, sigma = ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))[severity - 1]
    out = _magick_png_roundtrip_blur(np.asarray(x), radius, sigma, np.random.uniform(-45, 45))
    if out.shape != (224, 224):
        out = np.clip(out[..., [2, 1, 0]], 0, 255)  # ImageNet-C: "BGR to RGB" (undoes the decode's flip)
    else:
        out = np.clip(np.stack([out, out, out], axis=2), 0, 255)
    return np.uint8(out)


def fog(x, severity, ctx=None):
    amount, decay = ((1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4))[severity - 1]
    h, w = x.shape[:2]
    mapsize = int((ctx or {}).get("fog_mapsize") or 1024)
    while mapsize < max(h, w):  # the reference fails here; deviation: a larger map
        mapsize *= 2
    x = np.array(x) / 255.0
    peak = x.max()
    x = x + amount * _plasma(mapsize, decay)[:h, :w][..., np.newaxis]
    return np.clip(x * peak / (peak + amount), 0, 1) * 255


def _frost_texture(name: str, frost_dir: str | None, h: int, w: int) -> np.ndarray:
    import cv2

    if frost_dir:
        path = Path(frost_dir) / name
    else:
        import imagecorruptions

        path = Path(imagecorruptions.__file__).parent / "frost" / name
    tex = cv2.imread(str(path))
    if tex is None:
        raise InputError(f"frost texture {path} is missing or unreadable "
                         f"(corrupt.image.mm_robustness.frost_dir must hold {', '.join(FROST_FILES[:5])})")
    if tex.shape[0] < h or tex.shape[1] < w:  # the reference would fail; deviation: enlarge to cover
        scale = max(h / tex.shape[0], w / tex.shape[1])
        size = (max(w, math.ceil(tex.shape[1] * scale)), max(h, math.ceil(tex.shape[0] * scale)))
        tex = cv2.resize(tex, size, interpolation=cv2.INTER_CUBIC)
    return tex


def frost(x, severity, ctx=None):
    keep, amount = ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75))[severity - 1]
    h, w = x.shape[:2]
    name = FROST_FILES[np.random.randint(5)]
    tex = _frost_texture(name, (ctx or {}).get("frost_dir"), h, w)[0:h, 0:w][..., [2, 1, 0]]
    return np.clip(keep * np.array(x) + amount * tex, 0, 255)


def snow(x, severity, ctx=None):
    import cv2

    loc, scale, zoom, thresh, radius, sigma, keep = (
        (0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7), (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
        (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65), (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55))[severity - 1]
    h, w = x.shape[:2]
    x = np.array(x, dtype=np.float32) / 255.0
    flakes = np.random.normal(size=x.shape[:2], loc=loc, scale=scale)
    flakes = _zoom_centre(flakes[..., np.newaxis], zoom)
    flakes[flakes < thresh] = 0
    flakes = (np.clip(flakes.squeeze(), 0, 1) * 255).astype(np.uint8)
    flakes = _magick_png_roundtrip_blur(flakes, radius, sigma, np.random.uniform(-135, -45)) / 255.0
    flakes = flakes[..., np.newaxis]
    grey = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY).reshape(h, w, 1)
    x = keep * x + (1 - keep) * np.maximum(x, grey * 1.5 + 0.5)
    return np.clip(x + flakes + np.rot90(flakes, k=2), 0, 1) * 255


def spatter(x, severity, ctx=None):
    import cv2

    loc, scale, sigma, thresh, intensity, mud = (
        (0.65, 0.3, 4, 0.69, 0.6, 0), (0.65, 0.3, 3, 0.68, 0.6, 0), (0.65, 0.3, 2, 0.68, 0.5, 0),
        (0.65, 0.3, 1, 0.65, 1.5, 1), (0.67, 0.4, 1, 0.65, 1.5, 1))[severity - 1]
    x = np.array(x, dtype=np.float32) / 255.0
    liquid = np.random.normal(size=x.shape[:2], loc=loc, scale=scale)
    liquid = _gaussian(liquid, sigma)
    liquid[liquid < thresh] = 0
    if mud == 0:
        liquid = (liquid * 255).astype(np.uint8)
        dist = cv2.distanceTransform(255 - cv2.Canny(liquid, 50, 150), cv2.DIST_L2, 5)
        _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
        dist = cv2.equalizeHist(cv2.blur(dist, (3, 3)).astype(np.uint8))
        dist = cv2.filter2D(dist, cv2.CV_8U, np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]]))
        dist = cv2.blur(dist, (3, 3)).astype(np.float32)
        m = cv2.cvtColor(liquid * dist, cv2.COLOR_GRAY2BGRA)
        m /= np.max(m, axis=(0, 1))
        m *= intensity
        ones = np.ones_like(m[..., :1])
        colour = cv2.cvtColor(np.concatenate((175 / 255.0 * ones, 238 / 255.0 * ones, 238 / 255.0 * ones), axis=2),
                              cv2.COLOR_BGR2BGRA)
        x = cv2.cvtColor(x, cv2.COLOR_BGR2BGRA)
        return cv2.cvtColor(np.clip(x + m * colour, 0, 1), cv2.COLOR_BGRA2BGR) * 255
    m = _gaussian(np.where(liquid > thresh, 1, 0).astype(np.float32), intensity)
    m[m < 0.8] = 0
    ones = np.ones_like(x[..., :1])
    colour = np.concatenate((63 / 255.0 * ones, 42 / 255.0 * ones, 20 / 255.0 * ones), axis=2)
    colour *= m[..., np.newaxis]
    x *= 1 - m[..., np.newaxis]
    return np.clip(x + colour, 0, 1) * 255


def contrast(x, severity, ctx=None):
    c = (0.4, 0.3, 0.2, 0.1, 0.05)[severity - 1]
    x = np.array(x) / 255.0
    means = np.mean(x, axis=(0, 1), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1) * 255


def _hsv_op(x, channel: int, fn):
    from skimage.color import hsv2rgb, rgb2hsv

    hsv = rgb2hsv(np.array(x) / 255.0)
    hsv[:, :, channel] = np.clip(fn(hsv[:, :, channel]), 0, 1)
    return np.clip(hsv2rgb(hsv), 0, 1) * 255


def brightness(x, severity, ctx=None):
    c = (0.1, 0.2, 0.3, 0.4, 0.5)[severity - 1]
    return _hsv_op(x, 2, lambda v: v + c)


def saturate(x, severity, ctx=None):
    mul, add = ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2))[severity - 1]
    return _hsv_op(x, 1, lambda s: s * mul + add)


def pixelate(x, severity, ctx=None):
    import cv2

    c = (0.6, 0.5, 0.4, 0.3, 0.25)[severity - 1]
    h, w = x.shape[:2]
    small = cv2.resize(x, (int(224 * c), int(224 * c)), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (h, w), interpolation=cv2.INTER_AREA)  # dsize is (width, height): w x h out


def jpeg_compression(x, severity, ctx=None):
    from PIL import Image

    quality = (25, 18, 15, 10, 7)[severity - 1]
    buf = BytesIO()
    Image.fromarray(np.asarray(x)).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return np.uint8(Image.open(buf))


def elastic_transform(image, severity, ctx=None):
    import cv2
    from scipy.ndimage import map_coordinates

    alpha, sigma, shift = ((244 * 2, 244 * 0.7, 244 * 0.1), (244 * 2, 244 * 0.08, 244 * 0.2),
                           (244 * 0.05, 244 * 0.01, 244 * 0.02), (244 * 0.07, 244 * 0.01, 244 * 0.02),
                           (244 * 0.12, 244 * 0.01, 244 * 0.02))[severity - 1]
    image = np.array(image, dtype=np.float32) / 255.0
    shape = image.shape
    size = shape[:2]
    centre = np.float32(size) // 2
    half = min(size) // 3
    src = np.float32([centre + half, [centre[0] + half, centre[1] - half], centre - half])
    dst = src + np.random.uniform(-shift, shift, size=src.shape).astype(np.float32)
    image = warp_affine_cv4(image, cv2.getAffineTransform(src, dst))  # = cv2 4.x warpAffine, BORDER_REFLECT_101
    dx = (_gaussian(np.random.uniform(-1, 1, size=size), sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
    dy = (_gaussian(np.random.uniform(-1, 1, size=size), sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
    gx, gy, gz = np.meshgrid(np.arange(shape[1]), np.arange(shape[0]), np.arange(shape[2]))
    coords = (np.reshape(gy + dy[..., None], (-1, 1)), np.reshape(gx + dx[..., None], (-1, 1)),
              np.reshape(gz, (-1, 1)))
    return np.clip(map_coordinates(image, coords, order=1, mode="reflect").reshape(shape), 0, 1) * 255


FUNCTIONS = {f.__name__: f for f in (
    gaussian_noise, shot_noise, impulse_noise, speckle_noise, defocus_blur, glass_blur, zoom_blur, motion_blur,
    fog, frost, snow, contrast, brightness, pixelate, elastic_transform, jpeg_compression,
    gaussian_blur, spatter, saturate)}


def options(image_cfg: dict | None, dataset: str | None = None) -> dict:
    """The ``corrupt.image.mm_robustness`` options resolved for ``dataset``."""
    mm = dict((image_cfg or {}).get("mm_robustness") or {})
    mapsize = mm.get("fog_mapsize", "auto")
    if mapsize in (None, "auto"):
        mapsize = FOG_MAPSIZE.get(str(dataset), 1024)
    return {"fog_mapsize": int(mapsize), "frost_dir": mm.get("frost_dir") or None}


def reference_output(name: str, bgr: np.ndarray, severity: int, seed: int, ctx: dict | None = None) -> np.ndarray:
    """The reference function's raw output for a BGR uint8 image, numpy's global RNG seeded
    with ``seed`` (and restored afterwards)."""
    fn = FUNCTIONS[name]
    state = np.random.get_state()
    np.random.seed(int(seed) % 2**32)
    try:
        return fn(bgr, int(severity), ctx)
    finally:
        np.random.set_state(state)


def corrupt_bgr(name: str, bgr: np.ndarray, severity: int, seed: int, ctx: dict | None = None) -> np.ndarray:
    """The uint8 BGR array the reference writes (``cv2.imwrite`` of its output)."""
    return to_uint8(reference_output(name, bgr, severity, seed, ctx))
