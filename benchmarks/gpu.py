"""GPU-ready figures: gallery-encoding and adaptation throughput, and peak memory.

1. Gallery encoding: QShift's encode path (``qshift.gallery.encode_all``: DataLoader with
   ``num_workers`` decoding processes and pinned memory on CUDA, then ``RetrievalModel.encode``)
   against plain library batch inference of the *same* model, files, batch size and workers —
   open_clip ``create_model_and_transforms`` + ``encode_image``/``encode_text`` (open_clip
   sources) or transformers ``get_image_features``/``get_text_features`` (``hf-clip:``).
   Target: QShift >= 90 % of plain.
2. Adaptation throughput (queries/s) per method through ``qshift.adapt.run_stream``, in
   float32 and with bfloat16 autocast (``amp``; CUDA only: on CPU the column reads n/a).
3. Peak memory of each measurement: GPU memory (``torch.cuda.max_memory_allocated``) on
   CUDA, the process's peak RSS on CPU (a high-water mark: it never goes down).

The model: ``--source`` (any ``model.source``), else ``--arch`` (an open_clip architecture
with random weights, saved once as a local-dir folder — throughput needs no trained
weights), else the built-in tiny CLIP (random weights; the CPU default). Images: ``--manifest``
(e.g. data/coco/manifest.json), else a generated built-in test split of ``--n`` images.

    python benchmarks/gpu.py                                    # CUDA: ViT-B-16, batch 256
    python benchmarks/gpu.py --arch ViT-B-16 --n 5000 --workers 8
    python benchmarks/gpu.py --device cpu --n 256 --batch-size 64 --methods source,tent,tcr
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_model_source(args, cfg: dict, tmp: Path) -> str:
    """A model.source string for the run (a local-dir folder with random weights unless --source)."""
    if args.source:
        return args.source
    from qshift.models.openclip import CLIP_MEAN, CLIP_STD, build_from_config, save_local_dir, tiny_clip_config

    torch.manual_seed(0)
    if args.arch:
        import open_clip

        mcfg = open_clip.get_model_config(args.arch)
        if mcfg is None:
            raise SystemExit(f"unknown open_clip architecture {args.arch!r} (open_clip.list_models())")
        size = mcfg["vision_cfg"]["image_size"]
        config = {"model_cfg": mcfg, "preprocess_cfg": {"size": size, "mode": "RGB", "mean": list(CLIP_MEAN),
                                                        "std": list(CLIP_STD), "interpolation": "bicubic",
                                                        "resize_mode": "shortest", "fill_color": 0}}
        module = open_clip.create_model(args.arch)
    else:
        pc = cfg["pretrain"]
        config = tiny_clip_config(pc["embed_dim"], pc["vision"], pc["text"], pc["init_temperature"])
        module = build_from_config(config)
    folder = tmp / "model"
    save_local_dir(module, config, folder)
    return f"local-dir:{folder}"


def make_split(args, cfg: dict, tmp: Path):
    from qshift.data.manifest import load_split

    if args.manifest:
        split = load_split(args.manifest, "test")
    else:
        from qshift.data.builtin import generate_builtin

        size = args.image_size or cfg["datasets"]["builtin"]["image_size"]
        generate_builtin(tmp / "data", n_train=1, n_val=1, n_test=args.n, image_size=size, progress=False)
        split = load_split(tmp / "data/manifest.json", "test")
    n = min(args.n, split.n_images)
    keep = [i for i in range(split.n_images) if i < n]
    split.image_paths, split.image_ids = [split.image_paths[i] for i in keep], split.image_ids[:n]
    mask = split.txt2img < n
    split.captions = [c for c, m in zip(split.captions, mask) if m]
    split.sentids, split.txt2img = split.sentids[mask], split.txt2img[mask]
    return split


def timed(device: torch.device, fn) -> tuple[float, float, object]:
    """(seconds, peak MiB, result) of ``fn()``."""
    peak_reset(device)
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, peak_mib(device), out


# --- plain library inference: what a user writes without QShift ----------------------------

class _Files(torch.utils.data.Dataset):
    def __init__(self, paths, transform):
        self.paths, self.transform = list(paths), transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            return self.transform(im.convert("RGB"))


def plain_encoder(source: str, device: torch.device, cache_dir: str | None):
    """(encode_images(paths) -> tensor, encode_texts(captions) -> tensor, name) with the library
    alone, or None for a source without a plain baseline here."""
    scheme, _, ident = source.partition(":")
    if scheme in ("local-dir", "open_clip"):
        import open_clip

        if scheme == "local-dir":
            name = f"local-dir:{ident}"
            model, _, preprocess = open_clip.create_model_and_transforms(name, device=device)
        else:
            arch, _, tag = ident.partition("@")
            name = arch
            model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=tag or None, device=device,
                                                                          cache_dir=cache_dir)
        tokenizer = open_clip.get_tokenizer(name)
        model.eval()

        def images(paths, bs, workers):
            loader = torch.utils.data.DataLoader(_Files(paths, preprocess), batch_size=bs, num_workers=workers,
                                                 pin_memory=device.type == "cuda")
            with torch.inference_mode():
                return torch.cat([F.normalize(model.encode_image(x.to(device, non_blocking=True)).float(), dim=-1).cpu()
                                  for x in loader])

        def texts(caps, bs):
            with torch.inference_mode():
                return torch.cat([F.normalize(model.encode_text(tokenizer(caps[i:i + bs]).to(device)).float(),
                                              dim=-1).cpu() for i in range(0, len(caps), bs)])

        return images, texts, "open_clip"
    if scheme == "hf-clip":
        from transformers import CLIPModel, CLIPProcessor

        model = CLIPModel.from_pretrained(ident, cache_dir=cache_dir).to(device).eval()
        proc = CLIPProcessor.from_pretrained(ident, cache_dir=cache_dir)

        def images(paths, bs, workers):
            def tf(im):
                return proc(images=im, return_tensors="pt")["pixel_values"][0]

            loader = torch.utils.data.DataLoader(_Files(paths, tf), batch_size=bs, num_workers=workers,
                                                 pin_memory=device.type == "cuda")
            with torch.inference_mode():
                return torch.cat([F.normalize(model.get_image_features(pixel_values=x.to(device, non_blocking=True))
                                              .float(), dim=-1).cpu() for x in loader])

        def texts(caps, bs):
            out = []
            with torch.inference_mode():
                for i in range(0, len(caps), bs):
                    t = proc(text=caps[i:i + bs], return_tensors="pt", padding=True, truncation=True).to(device)
                    out.append(F.normalize(model.get_text_features(**t).float(), dim=-1).cpu())
            return torch.cat(out)

        return images, texts, "transformers"
    return None


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--source", help="a model.source (default: --arch, else the built-in tiny CLIP)")
    p.add_argument("--arch", help="an open_clip architecture with random weights (default on CUDA: ViT-B-16)")
    p.add_argument("--manifest", help="a manifest whose test split is encoded (default: generated scenes)")
    p.add_argument("--n", type=int, default=None, help="images (default: 2000 on CUDA, 256 on CPU)")
    p.add_argument("--image-size", type=int, default=None, help="generated image size (default: the builtin's)")
    p.add_argument("--batch-size", type=int, default=None, help="encoding batch (default: model.batch_size)")
    p.add_argument("--adapt-batch-size", type=int, default=None, help="default: adapt.batch_size")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: params num_workers)")
    p.add_argument("--methods", default=None, help="comma-separated (default: adapt.methods)")
    p.add_argument("--direction", default="i2t", choices=["i2t", "t2i"])
    args = p.parse_args(argv)

    from qshift.adapt import run_stream
    from qshift.config import load_params, method_hparams
    from qshift.gallery import encode_all
    from qshift.models import load_model
    from qshift.runtime import pick_device

    cfg = load_params(args.params)
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    if cuda and not args.source and not args.arch:
        args.arch = "ViT-B-16"
    args.n = args.n or (2000 if cuda else 256)
    bs = args.batch_size or cfg["model"]["batch_size"]
    abs_ = args.adapt_batch_size or cfg["adapt"]["batch_size"]
    workers = cfg["num_workers"] if args.workers is None else args.workers
    methods = (args.methods or ",".join(cfg["adapt"]["methods"])).split(",")
    cache_dir = cfg["model"].get("cache_dir")

    tmp = Path(tempfile.mkdtemp(prefix="qshift-gpu-"))
    source = make_model_source(args, cfg, tmp)
    split = make_split(args, cfg, tmp)
    model = load_model(source, device, cache_dir)
    dev_name = torch.cuda.get_device_name(device) if cuda else "CPU"
    mem_kind = "peak GPU MiB" if cuda else "peak RSS MiB"
    print(f"device: {device} ({dev_name}); model {model.name} ({source}); {split.n_images} images, "
          f"{split.n_captions} captions; encode batch {bs}, adapt batch {abs_}, workers {workers}; "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    report: dict = {"device": str(device), "device_name": dev_name, "model": model.name, "n_images": split.n_images,
                    "n_captions": split.n_captions, "batch_size": bs, "adapt_batch_size": abs_, "workers": workers,
                    "memory": mem_kind, "encode": {}, "adapt": {}}

    # 1. gallery encoding: QShift vs plain (a warm-up pass of one batch first, each path)
    encode_all(model, "image", dataclasses.replace(split, image_paths=split.image_paths[:bs]), bs, 0)
    q_img = timed(device, lambda: encode_all(model, "image", split, bs, workers))
    q_txt = timed(device, lambda: encode_all(model, "text", split, bs, workers))
    plain = plain_encoder(source, device, cache_dir)
    rows = [("image", q_img, split.n_images), ("text", q_txt, split.n_captions)]
    print(f"\n1. gallery encoding (items/s; QShift's encode path vs plain "
          f"{plain[2] if plain else 'library (n/a for this source)'})")
    print(f"{'modality':<10}{'QShift /s':>12}{'plain /s':>12}{'QShift/plain':>14}{'target':>8}{mem_kind:>16}")
    for modality, (sec, mem, emb), n in rows:
        p_rate = ratio = None
        if plain is not None:
            fn = (lambda: plain[0](split.image_paths, bs, workers)) if modality == "image" else \
                (lambda: plain[1](split.captions, bs))
            if modality == "image":
                plain[0](split.image_paths[:bs], bs, 0)  # warm-up
            p_sec, _, p_emb = timed(device, fn)
            p_rate, ratio = n / p_sec, (n / sec) / (n / p_sec)
            if not torch.allclose(emb, p_emb, atol=2e-2 if cuda else 1e-4):
                print(f"   warning: {modality} embeddings differ from plain (max |diff| "
                      f"{(emb - p_emb).abs().max():.2e})")
        ok = "-" if ratio is None else ("OK" if ratio >= 0.9 else "LOW")
        print(f"{modality:<10}{n / sec:>12.1f}{p_rate if p_rate else float('nan'):>12.1f}"
              f"{ratio if ratio else float('nan'):>14.2f}{ok:>8}{mem:>16.0f}")
        report["encode"][modality] = {"qshift_per_s": n / sec, "plain_per_s": p_rate, "ratio": ratio,
                                      "peak_mib": mem}

    # 2. adaptation throughput per method, float32 and bf16 autocast
    gallery = {"image": q_img[2], "text": q_txt[2], "image_owner": torch.as_tensor(split.image_ids),
               "text_owner": torch.as_tensor(split.image_ids[split.txt2img])}
    n_q = split.n_images if args.direction == "i2t" else split.n_captions
    print(f"\n2. adaptation ({args.direction}, {n_q} queries, {cfg['adapt']['steps']} steps per batch of {abs_}; "
          f"queries/s)")
    print(f"{'method':<13}{'fp32 /s':>10}{'bf16 /s':>10}{'bf16/fp32':>11}{mem_kind + ' fp32':>22}"
          f"{mem_kind + ' bf16':>22}{'R@1 fp32':>10}{'R@1 bf16':>10}")
    for method in methods:
        out = {}
        for amp in ((False, True) if cuda else (False,)):
            fresh = load_model(source, device, cache_dir)  # every run starts from the source model
            hp = method_hparams(cfg, method, args.direction)
            sec, mem, res = timed(device, lambda: run_stream(fresh, method, hp, args.direction, split, gallery,
                                                             batch_size=abs_, steps=cfg["adapt"]["steps"],
                                                             seed=cfg["seed"], num_workers=workers, amp=amp,
                                                             progress=False))
            out["bf16" if amp else "fp32"] = {"queries_per_s": n_q / sec, "peak_mib": mem,
                                              "R@1": res["metrics"]["R@1"]}
        f32, b16 = out["fp32"], out.get("bf16")

        def cell(d, key, fmt, width):
            return format(d[key], fmt).rjust(width) if d else "n/a".rjust(width)

        speedup = format(b16["queries_per_s"] / f32["queries_per_s"], ".2f") if b16 else "n/a"
        print(f"{method:<13}{cell(f32, 'queries_per_s', '.1f', 10)}{cell(b16, 'queries_per_s', '.1f', 10)}"
              f"{speedup:>11}{cell(f32, 'peak_mib', '.0f', 22)}{cell(b16, 'peak_mib', '.0f', 22)}"
              f"{cell(f32, 'R@1', '.2f', 10)}{cell(b16, 'R@1', '.2f', 10)}")
        report["adapt"][method] = out
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
