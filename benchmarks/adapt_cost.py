"""Adaptation cost per method, as a ratio to `source` inference on the same stream and model.

Prints, per method: seconds per batch, the ratio to `source`, and the method's floor — the
query-tower passes it must make per batch (source: 1 forward; entropy methods and TCR:
`steps` forwards + `steps` backwards, about 3x a forward each, i.e. ~9x for 3 steps; SAR
doubles that for its second SAM pass). TCR's measured ratio should be within 1.3x of its
floor. Also prints the peak memory of a stream of N and of 4N queries (it must not grow
with stream length), and checks the gallery is never re-encoded (one matrix product per
step, counted).

Uses the pipeline's trained model and data when they exist (run the pipeline first), else a
randomly initialised model of the same size on a freshly generated benchmark.

    python benchmarks/adapt_cost.py [--direction i2t] [--queries 640] [--methods source,tcr]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from qshift.config import GALLERY, MANIFEST, load_params
from qshift.data.manifest import load_split
from qshift.gallery import load_gallery, make_loader, owners_for
from qshift.models import load_model
from qshift.tta import METHODS, build_method

FLOOR = {"source": 1.0, "tcr_untrain": 1.0}  # forward-only methods; the rest: steps x (fwd + bwd)


def floor(method: str, steps: int) -> float:
    if method in FLOOR:
        return FLOOR[method]
    per_step = 3.0 * (2 if method == "sar" else 1)  # a backward costs ~2 forwards
    return steps * per_step


def setup(cfg: dict, direction: str):
    ds, model_name = cfg["benchmark"], cfg["model"]["name"]
    manifest, gallery_path = Path(MANIFEST.format(dataset=ds)), Path(GALLERY.format(model=model_name, dataset=ds))
    if manifest.is_file() and gallery_path.is_file():
        model = load_model(cfg["model"]["source"])
        return model, load_split(manifest, "test"), load_gallery(gallery_path), "pipeline artifacts"
    from qshift.data.builtin import generate_builtin
    from qshift.gallery import encode_gallery
    from qshift.models.openclip import build_from_config, save_local_dir, tiny_clip_config

    tmp = Path(tempfile.mkdtemp(prefix="qshift-bench-"))
    pc = cfg["pretrain"]
    conf = tiny_clip_config(pc["embed_dim"], pc["vision"], pc["text"], pc["init_temperature"])
    save_local_dir(build_from_config(conf), conf, tmp / "model")
    generate_builtin(tmp / "data", n_train=1, n_val=1, n_test=1000, image_size=pc["vision"]["image_size"],
                     progress=False)
    model = load_model(f"local-dir:{tmp / 'model'}")
    encode_gallery(model, tmp / "data/manifest.json", tmp / "gallery.pt")
    return model, load_split(tmp / "data/manifest.json", "test"), load_gallery(tmp / "gallery.pt"), \
        "random init model (no pipeline artifacts found)"


def time_bare_passes(model, modality, batches, steps: int, backward: bool) -> float:
    """Seconds per batch of the passes alone: ``steps`` x (forward [+ backward to the norm
    parameters]), no method logic — the measured floor of a gradient method."""
    params = [p for _, layer in model.norm_layers(modality) for p in (layer.weight, layer.bias) if p is not None]
    for p in params:
        p.requires_grad_(backward)
    t0 = time.perf_counter()
    for b in batches:
        for _ in range(steps):
            z = model.encode(modality, b)
            if backward:
                z.sum().backward()
    seconds = (time.perf_counter() - t0) / len(batches)
    for p in params:
        p.requires_grad_(False)
        p.grad = None
    return seconds


def time_method(model, method, hp, modality, gallery_emb, batches, steps) -> tuple[float, int]:
    tta = build_method(method, model, modality, gallery_emb, hp, steps=steps)
    calls = 0
    orig = tta.similarities

    def counted(z):
        nonlocal calls
        calls += 1
        return orig(z)

    tta.similarities = counted
    torch.manual_seed(0)
    tta(batches[0])  # warm-up (allocations, lazy init)
    t0 = time.perf_counter()
    for b in batches:
        tta(b)
    seconds = time.perf_counter() - t0
    tta.close()
    return seconds / len(batches), calls


def peak_rss_child(params: str, n: int, method: str) -> float:
    """Peak RSS (MiB) of a process that runs one i2t stream of ``n`` queries."""
    out = subprocess.run([sys.executable, __file__, "--params", params, "--child", str(n), method],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().split()[-1])


def child(params: str, n: int, method: str) -> None:
    """One i2t stream of ``n`` queries (the test images repeated as needed); prints peak RSS."""
    import numpy as np

    from qshift.adapt import run_stream

    cfg = load_params(params)
    model, split, gallery, _ = setup(cfg, "i2t")
    reps = n // split.n_images + 1
    split.image_paths = (split.image_paths * reps)[:n]
    split.image_ids = np.tile(split.image_ids, reps)[:n]
    run_stream(model, method, cfg["methods"][method], "i2t", split, gallery, progress=False)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--direction", default="i2t", choices=["i2t", "t2i"])
    p.add_argument("--queries", type=int, default=640)
    p.add_argument("--methods", default=",".join(METHODS.names()))
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.params, int(args.child[0]), args.child[1])
        return
    cfg = load_params(args.params)
    model, split, gallery, source_of = setup(cfg, args.direction)
    q_mod, _, g_emb, _ = owners_for(gallery, args.direction)
    steps, bs = cfg["adapt"]["steps"], cfg["adapt"]["batch_size"]
    loader = make_loader(model, q_mod, split, batch_size=bs)
    batches = []
    for b in loader:  # decode once: time the adaptation, not image decoding
        batches.append(b)
        if len(batches) * bs >= args.queries:
            break
    print(f"model: {model.name} ({source_of}); direction {args.direction}; {len(batches)} batches of {bs}; "
          f"gallery {g_emb.shape[0]} items; steps {steps}; torch threads {torch.get_num_threads()}")
    rows = {}
    for m in args.methods.split(","):
        rows[m] = time_method(model, m, cfg["methods"].get(m, {}), q_mod, g_emb, batches, steps)
    base = rows["source"][0]
    bare = time_bare_passes(model, q_mod, batches, steps, backward=True)
    print(f"\nbare passes ({steps} x forward+backward to the norm parameters): {bare:.4f} s/batch = "
          f"{bare / base:.1f}x source (the rule of thumb says ~{floor('tcr', steps):.0f}x)")
    print(f"\n{'method':<12}{'s/batch':>10}{'x source':>10}{'floor (x src)':>15}{'x measured floor':>18}"
          f"{'gallery products/batch':>24}")
    for m, (sec, calls) in rows.items():
        fl = floor(m, steps)
        measured_floor = base if fl == 1.0 else bare * fl / floor("tcr", steps)
        print(f"{m:<12}{sec:>10.4f}{sec / base:>10.2f}{fl:>15.1f}{sec / measured_floor:>18.2f}"
              f"{calls / (len(batches) + 1):>24.1f}")
    if "tcr" in rows:
        r = rows["tcr"][0] / bare
        print(f"\nTCR: time / measured floor = {r:.2f} (target <= 1.3) -> {'OK' if r <= 1.3 else 'ABOVE TARGET'}")
    n = 320
    small, big = (peak_rss_child(args.params, k, "tcr") for k in (n, 4 * n))
    print(f"peak RSS of a TCR i2t stream: {n} queries {small:.0f} MiB, {4 * n} queries {big:.0f} MiB "
          f"(growth {big - small:+.0f} MiB)")
    print(json.dumps({m: {"s_per_batch": s, "ratio": s / base} for m, (s, _) in rows.items()}))


if __name__ == "__main__":
    main()
