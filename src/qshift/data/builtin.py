"""The built-in benchmark: procedurally rendered scenes with paraphrased captions.

An offline stand-in for COCO / Flickr30k. Each image shows one of five textured
backgrounds and one to three objects (7 shapes x 8 colours x 2 sizes x 5 positions);
each of its captions names every object by colour and shape, with synonyms, varying
templates and varying detail, so captions are diverse yet always faithful to the image.

Every image is drawn from random streams seeded by ``derive_seed(seed, split, index)``:
any single image and its captions are reproducible whatever the split sizes, the order of
generation or ``PYTHONHASHSEED``. The output is an ordinary Karpathy-style manifest
(:mod:`qshift.data.manifest`) whose entries carry an extra ``"scene"`` key describing
what was drawn.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw
from ..progress import tqdm

from ..errors import ConfigError
from ..io import atomic_dir, derive_seed
from .manifest import make_image_entry, write_manifest

VERSION = 1  # bump whenever the same seed would produce different files
SUPERSAMPLE = 4  # objects are drawn at this multiple of the image size, then box-averaged
MAX_WORDS = 30  # load_split keeps 30 words by default, so no caption is ever truncated

# --- vocabulary: every attribute value with its synonyms (the first one is canonical) ---
SHAPES: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc", "round disc", "ball"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle", "triangular shape", "three sided shape"),
    "star": ("star", "five pointed star", "star shape"),
    "cross": ("cross", "plus sign", "plus shape"),
    "diamond": ("diamond", "rhombus", "lozenge"),
    "ring": ("ring", "hoop", "donut"),
}
COLOURS: dict[str, tuple[str, ...]] = {
    "red": ("red", "crimson", "scarlet"),
    "green": ("green", "emerald", "grass green"),
    "blue": ("blue", "cobalt", "azure"),
    "yellow": ("yellow", "golden", "lemon"),
    "purple": ("purple", "violet", "plum"),
    "orange": ("orange", "amber", "tangerine"),
    "white": ("white", "snow white", "ivory"),
    "black": ("black", "jet black", "ebony"),
}
SIZES: dict[str, tuple[str, ...]] = {
    "small": ("small", "little", "tiny"),
    "large": ("large", "big", "huge"),
}
POSITIONS: dict[str, tuple[str, ...]] = {
    "top left": ("in the top left", "in the top left corner", "at the upper left corner"),
    "top right": ("in the top right", "in the top right corner", "at the upper right corner"),
    "bottom left": ("in the bottom left", "in the bottom left corner", "at the lower left corner"),
    "bottom right": ("in the bottom right", "in the bottom right corner",
                     "at the lower right corner"),
    "centre": ("in the centre", "in the middle", "at the center"),
}
BACKGROUNDS: dict[str, tuple[str, ...]] = {
    "plain": ("on a plain background", "against a flat backdrop", "on a uniform background"),
    "gradient": ("on a gradient background", "against a smooth gradient",
                 "on a shaded backdrop"),
    "stripes": ("on a striped background", "against stripes", "on a background of stripes"),
    "checker": ("on a checkered background", "against a checkerboard",
                "on a chequered backdrop"),
    "noise": ("on a noisy background", "against grainy noise", "on a speckled backdrop"),
}

# --- rendering constants (fractions of the image size unless stated) ---
RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 70, 225),
    "yellow": (245, 220, 30), "purple": (140, 40, 185), "orange": (250, 140, 20),
    "white": (250, 250, 250), "black": (15, 15, 15),
}
CENTRES: dict[str, tuple[float, float]] = {
    "top left": (0.22, 0.22), "top right": (0.78, 0.22),
    "bottom left": (0.22, 0.78), "bottom right": (0.78, 0.78), "centre": (0.5, 0.5),
}
RADII = {"small": 0.08, "large": 0.14}
JITTER = 0.03  # max shift of an object's centre
N_OBJECTS_P = {1: 0.2, 2: 0.4, 3: 0.4}  # few single-object scenes keep descriptions unique
# Backgrounds are muted mid-tones, so saturated colours, white and black all stand out.
BG_GREY = (90.0, 165.0)
BG_TINT = 20.0
BG_TEXTURE = 25.0  # max texture amplitude around the base colour

# --- caption templates: {objs} the object list, {bg} a background phrase, {count} ---
TEMPLATES = (
    "{objs}",
    "a picture of {objs}",
    "an image showing {objs}",
    "there is {objs}",
    "{objs} {bg}",
    "a scene with {objs} {bg}",
    "{bg} there is {objs}",
    "{count} {bg}: {objs}",
)
COUNTS = {1: "one shape", 2: "two shapes", 3: "three shapes"}
JOINERS = ("and", "as well as", "along with")
# Detail levels, tried from the drawn one onwards until the caption fits MAX_WORDS.
DETAILS = ("full", "no size", "no position", "bare")
DETAIL_P = (0.4, 0.2, 0.25, 0.15)


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    position: str


@dataclass(frozen=True)
class Scene:
    """What an image shows; objects are listed in ``POSITIONS`` order (a canonical form)."""

    background: str
    objects: tuple[SceneObject, ...]

    def key(self) -> tuple:
        """The full description: two scenes with equal keys are indistinguishable by caption."""
        return (self.background,
                tuple((o.shape, o.colour, o.size, o.position) for o in self.objects))

    def to_dict(self) -> dict:
        return {"background": self.background,
                "objects": [{"shape": o.shape, "colour": o.colour, "size": o.size,
                             "position": o.position} for o in self.objects]}


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def example_rngs(seed: int, split: str, index: int) -> tuple[np.random.Generator, ...]:
    """Independent (scene, render, caption) streams for image ``index`` of ``split``."""
    children = np.random.SeedSequence(derive_seed(seed, split, index)).spawn(3)
    return tuple(np.random.default_rng(c) for c in children)


def sample_scene(rng: np.random.Generator) -> Scene:
    """A background and 1-3 objects with random attributes at distinct positions."""
    n = int(rng.choice(list(N_OBJECTS_P), p=list(N_OBJECTS_P.values())))
    positions = sorted(rng.choice(len(POSITIONS), size=n, replace=False))
    names = list(POSITIONS)
    objects = tuple(
        SceneObject(shape=_pick(rng, list(SHAPES)), colour=_pick(rng, list(COLOURS)),
                    size=_pick(rng, list(SIZES)), position=names[p])
        for p in positions
    )
    return Scene(background=_pick(rng, list(BACKGROUNDS)), objects=objects)


# --- rendering ---

def _background(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A (size, size, 3) uint8 texture around a random muted base colour."""
    base = rng.uniform(*BG_GREY) + rng.uniform(-BG_TINT, BG_TINT, 3)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    amp = rng.uniform(0.6, 1.0) * BG_TEXTURE
    if kind == "plain":
        field = np.zeros_like(x)
    elif kind == "gradient":
        field = amp * (2 * y / (size - 1) - 1) * rng.choice((-1.0, 1.0))
    elif kind == "stripes":
        period = rng.uniform(6, 12) * size / 64
        coord = (x, y, (x + y) / math.sqrt(2), (x - y) / math.sqrt(2))[int(rng.integers(4))]
        field = amp * np.sign(np.sin(2 * np.pi * coord / period + rng.uniform(0, 2 * np.pi)))
    elif kind == "checker":
        cell = max(2, round(rng.uniform(4, 9) * size / 64))
        field = amp * (((x // cell + y // cell) % 2) * 2 - 1)
    elif kind == "noise":
        field = np.clip(rng.normal(0, amp / 2, x.shape), -amp, amp)
    else:
        raise ValueError(f"unknown background {kind!r}")
    return np.clip(base + field[..., None], 0, 255).astype(np.uint8)


def _polygon(cx: float, cy: float, radii: Sequence[float], n: int, start_deg: float) -> list:
    """Vertices at evenly spaced angles, cycling through ``radii`` (2 radii: a star)."""
    return [(cx + radii[k % len(radii)] * math.cos(math.radians(start_deg + 360 * k / n)),
             cy + radii[k % len(radii)] * math.sin(math.radians(start_deg + 360 * k / n)))
            for k in range(n)]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float,
                fill: tuple[int, int, int]) -> None:
    """Draw ``shape`` of nominal radius ``r`` centred on (cx, cy)."""
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=fill, width=round(0.45 * r))
    elif shape == "square":
        h = 0.85 * r
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy + 0.15 * r, (1.1 * r,), 3, -90), fill=fill)
    elif shape == "star":
        draw.polygon(_polygon(cx, cy + 0.05 * r, (1.1 * r, 0.45 * r), 10, -90), fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - 1.1 * r), (cx + 0.8 * r, cy), (cx, cy + 1.1 * r),
                      (cx - 0.8 * r, cy)], fill=fill)
    elif shape == "cross":
        w = 0.33 * r
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def render_scene(scene: Scene, size: int, rng: np.random.Generator) -> Image.Image:
    """Draw ``scene`` as a ``size`` x ``size`` RGB image (objects anti-aliased)."""
    bg = _background(scene.background, size, rng)
    hi = size * SUPERSAMPLE
    canvas = Image.fromarray(bg).resize((hi, hi), Image.NEAREST)
    draw = ImageDraw.Draw(canvas)
    for obj in scene.objects:
        fx, fy = np.asarray(CENTRES[obj.position]) + rng.uniform(-JITTER, JITTER, 2)
        r = RADII[obj.size] * rng.uniform(0.9, 1.1) * hi
        fill = np.clip(np.asarray(RGB[obj.colour]) + rng.integers(-10, 11, 3), 0, 255)
        _draw_shape(draw, obj.shape, fx * hi, fy * hi, r, tuple(int(v) for v in fill))
    return canvas.reduce(SUPERSAMPLE)  # box-average each block: the background is kept exactly


# --- captions ---

def _with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _object_phrase(obj: SceneObject, detail: str, rng: np.random.Generator) -> str:
    words = [_pick(rng, SIZES[obj.size])] if detail in ("full", "no position") else []
    words += [_pick(rng, COLOURS[obj.colour]), _pick(rng, SHAPES[obj.shape])]
    if detail in ("full", "no size"):
        words.append(_pick(rng, POSITIONS[obj.position]))
    return _with_article(" ".join(words))


def _join(phrases: list[str], rng: np.random.Generator) -> str:
    last = f" {_pick(rng, JOINERS)} {phrases[-1]}" if len(phrases) > 1 else phrases[-1]
    return ", ".join(phrases[:-1]) + last


def make_caption(scene: Scene, template: str, rng: np.random.Generator) -> str:
    """One caption of ``scene`` from ``template``: objects shuffled, synonyms drawn."""
    order = rng.permutation(len(scene.objects))
    bg = _pick(rng, BACKGROUNDS[scene.background])
    first = int(rng.choice(len(DETAILS), p=DETAIL_P))
    for detail in DETAILS[first:]:  # the barest detail always fits (tested)
        objs = _join([_object_phrase(scene.objects[i], detail, rng) for i in order], rng)
        text = template.format(objs=objs, bg=bg, count=COUNTS[len(scene.objects)]) + "."
        if len(text.split()) <= MAX_WORDS:
            break
    return text


def make_captions(scene: Scene, n: int, rng: np.random.Generator) -> list[str]:
    """``n`` different captions of ``scene``, each from a different template while any is left."""
    templates = [TEMPLATES[i] for i in rng.permutation(len(TEMPLATES))]
    captions: list[str] = []
    for k in range(n):
        for _ in range(100):
            text = make_caption(scene, templates[k % len(templates)], rng)
            if text not in captions:
                captions.append(text)
                break
        else:
            raise RuntimeError(f"could not find {n} different captions for {scene}")
    return captions


def make_example(seed: int, split: str, index: int, image_size: int = 64,
                 n_captions: int = 5) -> tuple[Scene, Image.Image, list[str]]:
    """Scene, image and captions of image ``index`` of ``split``; depends on nothing else."""
    scene_rng, render_rng, caption_rng = example_rngs(seed, split, index)
    scene = sample_scene(scene_rng)
    image = render_scene(scene, image_size, render_rng)
    return scene, image, make_captions(scene, n_captions, caption_rng)


CHUNK = 250  # images a pool worker renders per task


def _render_chunk(job: tuple) -> list[tuple[dict, tuple, list[str]]]:
    """Render images ``start..stop`` of a split into ``folder`` (``<imgid:06d>.png``, the ids
    running on from ``first_id``); returns each one's (scene dict, scene key, captions)."""
    seed, split, start, stop, first_id, image_size, n_captions, folder = job
    out = []
    for index in range(start, stop):
        scene, image, captions = make_example(seed, split, index, image_size, n_captions)
        image.save(Path(folder) / f"{first_id + index:06d}.png", format="PNG")
        out.append((scene.to_dict(), scene.key(), captions))
    return out


def _init_worker(parent: int) -> None:
    from ..runtime import die_with_parent

    die_with_parent(parent)


def generate_builtin(out_dir: str | Path, n_train: int, n_val: int, n_test: int,
                     image_size: int = 64, seed: int = 42, n_captions: int = 5,
                     progress: bool = True, workers: int = 1) -> dict:
    """Write the built-in benchmark to ``out_dir`` atomically and return its statistics.

    Writes ``out_dir/manifest.json`` and ``out_dir/images/<split>/<imgid:06d>.png``.
    imgids and sentids are consecutive across splits (train, then val, then test).
    ``workers`` > 1 renders on a process pool: the same bytes (every image is seeded on its
    own, and the manifest is assembled in order). Returns ``{"counts": {split: n_images},
    "unique_scenes": {split: n_distinct_keys}, "seconds": wall_time}``.
    """
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    for name, n in sizes.items():
        if not isinstance(n, int) or n < 0:
            raise ConfigError(f"n_{name} must be a non-negative integer, got {n!r}")
    if sum(sizes.values()) == 0:
        raise ConfigError("n_train + n_val + n_test must be positive")
    if image_size < 16:
        raise ConfigError(f"image_size must be at least 16, got {image_size}")
    if n_captions < 1:
        raise ConfigError(f"n_captions must be at least 1, got {n_captions}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a positive integer, got {workers!r}")

    start = time.perf_counter()
    images: list[dict] = []
    unique: dict[str, int] = {}
    workers = min(workers, max(1, math.ceil(sum(sizes.values()) / CHUNK)))
    pool = None
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(atomic_dir(out_dir))
        bar = stack.enter_context(tqdm(total=sum(sizes.values()), desc="builtin", unit="img", disable=not progress))
        if workers > 1:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            # spawn, not fork: the parent may hold threads (tqdm's) that fork would copy mid-state
            pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                       initargs=(os.getpid(),))
            stack.callback(pool.shutdown, wait=True, cancel_futures=True)  # an error: no chunk rendered after it
        first_id = 0
        for split, n in sizes.items():  # train, val, test: ids run on across splits
            folder = tmp / "images" / split
            folder.mkdir(parents=True)
            jobs = [(seed, split, a, min(a + CHUNK, n), first_id, image_size, n_captions, str(folder))
                    for a in range(0, n, CHUNK)]
            keys = set()
            for chunk in (pool.map(_render_chunk, jobs) if pool else map(_render_chunk, jobs)):  # in order
                for scene, key, captions in chunk:
                    imgid = len(images)
                    entry = make_image_entry(imgid, f"{imgid:06d}.png", split, captions,
                                             first_sentid=imgid * n_captions, filepath=split)
                    entry["scene"] = scene
                    images.append(entry)
                    keys.add(key)
                bar.update(len(chunk))
            unique[split] = len(keys)
            first_id += n
        meta = {"generator": "qshift.data.builtin", "version": VERSION, "seed": seed,
                "n_train": n_train, "n_val": n_val, "n_test": n_test,
                "image_size": image_size, "n_captions": n_captions}
        write_manifest(tmp / "manifest.json", "builtin", images, image_root="images", meta=meta)
    return {"counts": sizes, "unique_scenes": unique,
            "seconds": round(time.perf_counter() - start, 3)}
