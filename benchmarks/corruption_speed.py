"""Image-corruption throughput: images per second per corruption on a pool of workers, and
what it means for building full COCO-C and Flickr-C.

Runs the corrupt_images stage's own per-image work (read JPEG -> corrupt -> write JPEG q95,
``qshift.corrupt.build._corrupt_file``) on one warm pool of ``--workers`` spawn-started
processes, over ``--n`` real photographs (scikit-image's data module, cropped/resized to
``--size``), for every corruption at each of ``--severities``. Prints a table, flags the
slowest corruption, reports glass_blur's numba compile cost separately (once per machine
with the on-disk cache qshift enables; once per process without it) and the pool start-up
cost (once per job), and estimates the CPU-hours to build the full benchmarks:
COCO-C = 5,000 test images x 16 x 5 severities, Flickr-C = 1,000 x 16 x 5 — at this image
size, from the mean cost over the measured severities. Both ``corrupt.image.implementation``
values are measured (``--implementations``): imagecorruptions, and mm_robustness (the
reference's path: cv2 read, the MM_Robustness function on BGR, cv2 JPEG write; frost with
``--frost-dir`` or imagecorruptions' textures).

    python benchmarks/corruption_speed.py [--n 32] [--workers 2] [--severities 3,5] [--size 640x480]
        [--implementations imagecorruptions,mm_robustness] [--frost-dir DIR]

Then the text corruptions' semantic filter (corrupt.text.filter): its cost per 1,000 captions on
CPU per filtered type (``--filter-captions N``, 0 skips it).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from qshift.corrupt.build import _corrupt_file, _ImageTask, _init_worker, resolve_workers
from qshift.corrupt import mm_robustness
from qshift.corrupt.image import BENCHMARK_IMAGE, IMAGE_CORRUPTIONS, IMPLEMENTATIONS
from qshift.io import derive_seed

FULL = {"COCO-C": 5000, "Flickr-C": 1000}
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
          "colorwheel")

_COMPILE = """
import time, numpy as np, numba
import imagecorruptions.corruptions as lib
img = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
kernel = lib._shuffle_pixels_njit_glass_blur
t = time.perf_counter(); numba.njit(cache=False)(kernel.py_func)(480, 640, img.copy(), (1, 2, 3), 1)
cold = time.perf_counter() - t
from qshift.corrupt.image import corrupt_image
t = time.perf_counter(); corrupt_image("glass_blur", img, 3, 1); first = time.perf_counter() - t
t = time.perf_counter(); corrupt_image("glass_blur", img, 3, 1); warm = time.perf_counter() - t
print(cold, first, warm)
"""


def photos(n: int, size: tuple[int, int], folder: Path) -> list[Path]:
    """n JPEGs (q95) of real photos at size (w, h): each photo centre-cropped to the aspect,
    resized, and varied by flips so files differ."""
    import skimage.data

    w, h = size
    base = []
    for name in PHOTOS:
        try:
            arr = getattr(skimage.data, name)()
        except Exception:  # an image that needs a download: skip it
            continue
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        im = Image.fromarray(arr[..., :3].astype(np.uint8))
        scale = max(w / im.width, h / im.height)
        im = im.resize((max(w, round(im.width * scale)), max(h, round(im.height * scale))), Image.BICUBIC)
        left, top = (im.width - w) // 2, (im.height - h) // 2
        base.append(im.crop((left, top, left + w, top + h)))
    if not base:
        raise SystemExit("no scikit-image sample photo could be loaded")
    paths = []
    for i in range(n):
        im = base[i % len(base)]
        if (i // len(base)) % 2:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        path = folder / f"{i:05d}.jpg"
        im.save(path, quality=95)
        paths.append(path)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=32, help="images per (corruption, severity) (default 32)")
    ap.add_argument("--workers", type=int, default=2, help="pool processes (default 2; 0 = all cores)")
    ap.add_argument("--severities", default="3,5")
    ap.add_argument("--size", default="640x480", help="WxH of the test images (COCO's typical size)")
    ap.add_argument("--names", default=",".join(BENCHMARK_IMAGE))
    ap.add_argument("--implementations", default=",".join(IMPLEMENTATIONS),
                    help="corrupt.image.implementation values to measure (default: both)")
    ap.add_argument("--frost-dir", default=None, help="mm_robustness frost textures (default: imagecorruptions')")
    ap.add_argument("--filter-captions", type=int, default=200,
                    help="captions per type for the semantic filter's cost (0 = skip)")
    ap.add_argument("--filter-types", default="random_swap,random_delete,insert_punct,synonym_replace")
    args = ap.parse_args()
    impls = args.implementations.split(",")
    for impl in impls:
        if impl not in IMPLEMENTATIONS:
            raise SystemExit(f"--implementations: {impl!r} is not one of {', '.join(IMPLEMENTATIONS)}")
    mm_options = tuple(sorted(mm_robustness.options({"mm_robustness": {"frost_dir": args.frost_dir}}, "coco").items()))
    names = [IMAGE_CORRUPTIONS.check(n) for n in args.names.split(",")]
    sevs = [int(s) for s in args.severities.split(",")]
    size = tuple(int(v) for v in args.size.lower().split("x"))
    workers = resolve_workers(args.workers)

    cold, first, warm = (float(v) for v in subprocess.run([sys.executable, "-c", _COMPILE], capture_output=True,
                                                          text=True, check=True).stdout.split())
    print(f"glass_blur numba kernel: compile {cold:.2f} s without cache (once per process); with qshift's "
          f"on-disk cache the first call in a fresh process takes {first:.2f} s, later calls {warm:.3f} s")

    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with tempfile.TemporaryDirectory(prefix="qshift-speed-") as tmp:
        tmp = Path(tmp)
        srcs = photos(args.n, size, tmp)
        t = time.perf_counter()
        pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker)
        list(pool.map(abs, range(workers)))  # start every worker (imports + initializer)
        startup = time.perf_counter() - t
        print(f"pool of {workers} spawn workers: {startup:.2f} s to start (once per corrupt_images job)")
        print(f"{args.n} images of {size[0]}x{size[1]} per cell, {workers} workers, JPEG q95 in and out\n")
        results = {}
        try:
            for impl in impls:
                rows = results[impl] = []
                options = mm_options if impl == "mm_robustness" else ()
                for name in names:
                    per_sev = []
                    for sev in sevs:
                        out = tmp / impl / f"{name}-s{sev}"
                        out.mkdir(parents=True)
                        tasks = [_ImageTask(str(p), str(out / p.name), name, sev, derive_seed("bench", i, name, sev),
                                            95, impl, options) for i, p in enumerate(srcs)]
                        t = time.perf_counter()
                        list(pool.map(_corrupt_file, tasks, chunksize=max(1, len(tasks) // (workers * 4))))
                        per_sev.append(time.perf_counter() - t)
                    rows.append((name, per_sev))
        finally:
            pool.shutdown()
    totals = {impl: report(impl, rows, sevs, workers, args.n, names, size) for impl, rows in results.items()}
    if len(totals) > 1:
        print("\nwhole suite, images/s on " + f"{workers} workers (mean over corruptions and severities): "
              + ", ".join(f"{impl} {len(names) * workers / t:.1f}" for impl, t in totals.items()))


def report(impl, rows, sevs, workers, n, names, size) -> float:
    """Print one implementation's table; return its CPU-seconds per image summed over the corruptions."""
    args_n = n
    print(f"\n== corrupt.image.implementation: {impl}")

    head = f"{'corruption':<18}" + "".join(f"{'s' + str(s) + ' img/s':>11}" for s in sevs) + f"{'cpu-ms/img':>12}"
    print(head + "\n" + "-" * len(head))
    cpu_s = {}  # CPU-seconds per image (mean over severities): wall x workers / n
    for name, per_sev in rows:
        cpu_s[name] = float(np.mean(per_sev)) * workers / args_n
        print(f"{name:<18}" + "".join(f"{args_n / w:>11.1f}" for w in per_sev) + f"{cpu_s[name] * 1e3:>12.1f}")
    total = sum(cpu_s.values())
    slowest = max(cpu_s, key=cpu_s.get)
    print(f"\nslowest: {slowest} ({cpu_s[slowest] * 1e3:.0f} cpu-ms/img, {100 * cpu_s[slowest] / total:.0f}% of the "
          f"suite's time)")
    if "glass_blur" in cpu_s:
        share = cpu_s["glass_blur"] / total
        rank = sorted(cpu_s, key=cpu_s.get, reverse=True).index("glass_blur") + 1
        verdict = "does not dominate" if share < 0.25 else "DOMINATES"
        print(f"glass_blur: {cpu_s['glass_blur'] * 1e3:.0f} cpu-ms/img, {100 * share:.0f}% of the suite, "
              f"rank {rank} of {len(cpu_s)} -> {verdict}")
    if len(names) == len(BENCHMARK_IMAGE):
        for bench, n_img in FULL.items():
            hours = n_img * 5 * total / 3600
            print(f"{bench}: {n_img:,} images x 16 corruptions x 5 severities ~ {hours:.1f} CPU-hours "
                  f"({hours / workers:.1f} h wall on {workers} cores) at {size[0]}x{size[1]}")
    else:
        print("(CPU-hour estimates need all 16 corruptions)")
    if args.filter_captions > 0:
        filter_cost(args.filter_captions, args.filter_types.split(","))
    return total


if __name__ == "__main__":
    main()


def filter_cost(n: int, names: list[str], level: int = 7, model: str = "all-MiniLM-L6-v2") -> None:
    """The semantic filter's cost (corrupt.text.filter, defaults min_cosine 0.9 / max_tries 100)
    on ``n`` built-in test captions per type, on CPU: seconds per 1,000 captions, draws per
    caption and captions that never reached the threshold."""
    import tempfile as _tf

    import torch

    from qshift.corrupt import semfilter
    from qshift.corrupt.text import corrupt_texts, corrupt_texts_info
    from qshift.data.builtin import make_example

    caps: list[str] = []
    i = 0
    while len(caps) < n:
        caps += make_example(42, "test", i)[2]
        i += 1
    caps = caps[:n]
    seeds = [derive_seed("bench", k) for k in range(n)]
    with _tf.TemporaryDirectory(prefix="qshift-filter-") as cache:
        cfg = {"corrupt": {"text": {"filter": {"model": model}}}, "model": {"cache_dir": cache}}
        t = time.perf_counter()
        semfilter.encoder_for(cfg)
        print(f"\nsemantic filter ({model}, CPU, {torch.get_num_threads()} threads): load {time.perf_counter() - t:.1f} s "
              f"(extracts the packaged weights once per cache)")
        print(f"{'type':<18}{'plain s/1k':>11}{'filter s/1k':>12}{'draws/cap':>10}{'never':>7}  (level {level}, "
              f"{n} built-in captions)")
        for name in names:
            t = time.perf_counter()
            corrupt_texts(name, caps, level, seeds)
            plain = time.perf_counter() - t
            t = time.perf_counter()
            _, info = corrupt_texts_info(name, caps, level, seeds, cfg)
            dt = time.perf_counter() - t
            s = info["summary"]
            print(f"{name:<18}{plain * 1000 / n:>11.2f}{dt * 1000 / n:>12.1f}{s['mean_tries']:>10.2f}"
                  f"{s['never_reached']:>7}")
