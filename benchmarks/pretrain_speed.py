"""Seconds per pretraining step of the built-in CLIP, for what the speed-ups change.

Times ``--steps`` optimisation steps (after ``--warmup`` untimed ones) of the configured model
(params.yaml ``pretrain``) at its batch size on a synthetic batch, with the compact text
vocabulary training uses, in five variants: the text batch at the full context or trimmed to
its longest caption (``pretrain.trim_text``) x matmuls in fp32 or ``pretrain.matmul: fast``
(TF32 on CUDA; on the CPU fast is fp32), then trimmed text with torch's fused AdamW
(``pretrain.fused_optimizer``) and with Muon on the transformer blocks' matrices
(``pretrain.optimizer: muon``, params.yaml's: its Newton-Schulz iteration in fp32) and with
Muon's iteration in torch's bf16 (``pretrain.muon_precision: bf16``: a trap on a CPU without
bf16 matrix units, 3.6x the step on an AVX2-only one); each row's training time is projected over its
recipe's steps (``--adamw-steps`` 700, ``--muon-steps`` 550: Muon needs fewer for the same
clean R@1); ``--cpu-bf16`` adds the rows of oneDNN's implicit bf16 matmuls,
which ``fast`` does not use because they measured slower for this model. Prints one row per
variant: seconds per step, the speed-up over the first row, and the projected training time. It changes nothing on disk.

    python benchmarks/pretrain_speed.py [--params params.yaml] [--steps 10] [--warmup 2] [--threads 2]
                                        [--adamw-steps 700] [--muon-steps 550] [--cpu-bf16]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F

from qshift.config import load_params
from qshift.models.openclip import build_from_config, tiny_clip_config
from qshift.models.train import (_fp32_precision, build_optimizer, compact_vocabulary, encode_text_trimmed,
                                 matmul_precision, normalise)
from qshift.runtime import pick_device


def _batch(pc: dict, device, caption_len: int = 24):
    bs, size, ctx = int(pc["batch_size"]), int(pc["vision"]["image_size"]), int(pc["text"]["context_length"])
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (bs, 3, size, size), dtype=torch.uint8, generator=g)
    length = min(caption_len, ctx)
    tokens = torch.zeros(bs, ctx, dtype=torch.long)
    tokens[:, :length - 1] = torch.randint(1, 120, (bs, length - 1), generator=g)
    tokens[:, length - 1] = 49407  # EOT: the largest id, where open_clip pools
    return images.to(device), tokens.to(device)


def model_and_batch(pc: dict, device, seed: int = 0):
    """The configured model (initial weights from ``seed``) in training mode and a synthetic batch,
    its text over the compact vocabulary, as training does: the text tower over the ids the batch
    uses, not the 49,408-row table (its AdamW update over the full table adds a few per cent to the step)."""
    torch.manual_seed(seed)
    model = build_from_config(tiny_clip_config(pc["embed_dim"], pc["vision"], pc["text"],
                                               pc["init_temperature"])).to(device).train()
    images, tokens = _batch(pc, device)
    _, lut = compact_vocabulary(model, tokens.cpu())
    return model, images, lut[tokens.cpu()].to(device)


def make_step(model, opt, images, tokens, trim: bool, device):
    """One training step of the recipe on a fixed batch (symmetric InfoNCE); returns the loss."""
    labels = torch.arange(len(images), device=device)

    def step():
        img = F.normalize(model.encode_image(normalise(images.cpu()).to(device)), dim=-1)
        txt = F.normalize(encode_text_trimmed(model, tokens) if trim else model.encode_text(tokens), dim=-1)
        logits = model.logit_scale.exp() * img @ txt.T
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return loss.detach()

    return step


def time_steps(pc: dict, device, trim: bool, matmul: str, steps: int, warmup: int,
               optimizer: str = "adamw") -> tuple[float, str]:
    """Seconds per step; ``optimizer``: adamw, fused (AdamW's fused kernel), muon (its iteration in
    fp32) or muon-bf16 — built by training's own :func:`~qshift.models.train.build_optimizer`."""
    model, images, tokens = model_and_batch(pc, device)
    opt = build_optimizer(model, {**pc, "fused_optimizer": optimizer == "fused",
                                  "optimizer": "muon" if optimizer.startswith("muon") else "adamw",
                                  "muon_precision": "bf16" if optimizer == "muon-bf16" else "fp32"})
    step = make_step(model, opt, images, tokens, trim, device)
    ctx = _fp32_precision(torch.backends.mkldnn.matmul, "bf16") if matmul == "cpu-bf16" else matmul_precision(
        matmul, device)
    with ctx as ran:
        for _ in range(warmup):
            step()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        return (time.perf_counter() - t0) / steps, ran


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--adamw-steps", type=int, default=700, help="the AdamW recipe's steps (its rows' projected time)")
    ap.add_argument("--muon-steps", type=int, default=550, help="the Muon recipe's steps (its row's projected time)")
    ap.add_argument("--cpu-bf16", action="store_true", help="also time oneDNN's implicit bf16 matmuls (CPU)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_params(args.params)
    pc, device = cfg["pretrain"], pick_device(cfg["device"])
    rows = []
    # (trimmed text, matmul, optimizer): pretrain.trim_text, pretrain.matmul,
    # pretrain.fused_optimizer (fused) / pretrain.optimizer (muon)
    variants = [(False, "fp32", "adamw"), (True, "fp32", "adamw"), (False, "fast", "adamw"), (True, "fast", "adamw"),
                (True, "fp32", "fused"), (True, "fp32", "muon"), (True, "fp32", "muon-bf16")]
    if args.cpu_bf16 and device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        variants += [(False, "cpu-bf16", "adamw"), (True, "cpu-bf16", "adamw")]
    for trim, matmul, optimizer in variants:
        sec, ran = time_steps(pc, device, trim, matmul, args.steps, args.warmup, optimizer)
        sec = round(sec, 4)
        steps = args.muon_steps if optimizer.startswith("muon") else args.adamw_steps
        rows.append({"text": "trimmed" if trim else "full context", "matmul": ran,
                     "optimizer": optimizer, "s_per_step": sec,
                     "speedup": round(rows[0]["s_per_step"] / sec, 2) if rows else 1.0,
                     "steps": steps, "train_s": round(sec * steps, 1)})
    if args.json:
        print(json.dumps({"device": str(device), "threads": args.threads, "batch_size": pc["batch_size"],
                          "steps": pc["steps"], "rows": rows}))
        return
    print(f"pretraining step cost on {device} ({args.threads} threads), batch {pc['batch_size']}, "
          f"projected over each recipe's steps (AdamW {args.adamw_steps}, Muon {args.muon_steps})")
    print(f"{'text':<14}{'matmul':<8}{'optim':<11}{'s/step':>9}{'speed-up':>10}{'steps':>7}{'train s':>9}")
    for r in rows:
        print(f"{r['text']:<14}{r['matmul']:<8}{r['optimizer']:<11}{r['s_per_step']:>9.4f}{r['speedup']:>9.2f}x"
              f"{r['steps']:>7}{r['train_s']:>9.1f}")
    if not all(math.isfinite(r["s_per_step"]) for r in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
