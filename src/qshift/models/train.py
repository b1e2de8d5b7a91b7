"""Contrastive pre-training of the built-in tiny CLIP on the built-in train split (CPU-friendly).

Symmetric InfoNCE with a learnable temperature, AdamW (no weight decay on norms, biases,
embeddings and the temperature) — by default with Muon on the transformer blocks' matrices
(``pretrain.optimizer``, below) —, linear warm-up then cosine decay: the recipe of CLIP,
scaled down. Images of the train split are decoded once into memory (64 px), each step
pairs every image with one of its captions drawn at random.

Speed (CPU): the images are decoded in threads and the text tower trains on a *compact
vocabulary* — the ~120 BPE ids the train captions use instead of
open_clip's 49,408 — so the embedding's gradient and AdamW state are 400x smaller. This is
exact, not an approximation: an id that never occurs gets a zero gradient, and AdamW (no
weight decay on embeddings) leaves such a row untouched, so the trained rows are written
back into the full 49,408-row table at the end and the saved model is an ordinary open_clip
CLIP with the standard tokenizer (unseen ids keep their initial values, as they would with
full-vocabulary training; ``tests/test_pretrain.py`` checks both give identical weights).
The EOT id (49407, the largest) stays the largest compact id, so open_clip's argmax pooling
finds it.

Speed-ups (``benchmarks/pretrain_speed.py`` prints what they buy; each changes the trained
weights, so they are pretraining parameters, part of the stage's trigger; params.yaml turns on
``trim_text`` and ``optimizer: muon``, the others are opt-in):

``pretrain.trim_text: true`` trims each step's text batch to its longest caption
(:func:`encode_text_trimmed`: under the causal mask the padding after the EOT never reaches the
pooled token; equal to ``encode_text`` up to float rounding, tested), so the text tower runs
~23 positions, not 40.

``pretrain.fused_optimizer: true`` runs torch's fused AdamW (one kernel over every parameter
instead of a loop of small per-tensor ops): the same update up to float rounding.

``pretrain.matmul`` (``fp32`` | ``fast``): with ``fast`` the training matmuls run in TF32 on
CUDA (fp32 elsewhere: on the CPU oneDNN's bf16 path was measured slower for this model); what
ran is recorded as ``metrics.matmul``. Evaluation and every later stage compute in fp32.

``pretrain.optimizer: muon`` (params.yaml's; without the key: ``adamw``) updates the
transformer blocks' weight matrices with Muon (:mod:`qshift.models.muon`, torch.optim.Muon's
update: momentum orthogonalised by Newton-Schulz iterations, the update's RMS matched to AdamW's
so the same ``lr`` and schedule apply; the iteration in float32, ``pretrain.muon_precision:
fp32``, where torch's bfloat16 made the step 3.6x slower on a CPU without bf16 matrix units) and
everything else — embeddings, the patch convolution, the projections, norms,
biases, the temperature — with AdamW as before (so the compact vocabulary stays exact). Not a
rounding difference: a different recipe, which reaches the AdamW recipe's clean R@1 in fewer
steps (README: the measured step counts) with its own ``lr`` and ``steps`` (params.yaml's: 550
steps at 3e-3, warm-up 50; AdamW's were 700 at 1e-3, warm-up 100).
"""

from __future__ import annotations

import contextlib
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from ..progress import tqdm

from ..data.manifest import Split, load_split
from ..errors import InputError
from ..evaluation import recall_at_k
from ..runtime import autocast, seed_everything
from .muon import DEFAULT_PRECISION, Muon
from .openclip import CLIP_MEAN, CLIP_STD, build_from_config, save_local_dir, tiny_clip_config

# run-dependent figures: reported (reports/pretrain.json), never saved in the model folder
TIMING_KEYS = ("train_seconds", "steps_per_second", "data_seconds", "total_seconds")


def load_images_uint8(split: Split, size: int, progress: bool = True, workers: int = 2) -> torch.Tensor:
    """All images of ``split`` as one uint8 tensor (N, 3, size, size), decoded in ``workers``
    threads (PIL releases the GIL while decoding; the result does not depend on the count)."""
    arr = np.empty((split.n_images, size, size, 3), np.uint8)

    def decode(i: int) -> None:
        path = split.image_paths[i]
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                if im.size != (size, size):
                    im = im.resize((size, size), Image.BICUBIC)
                arr[i] = np.asarray(im)
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
            # a truncated or corrupt file: one clear line naming it, not a traceback
            raise InputError(f"cannot read training image {path} (listed in {split.manifest}): {e}") from None

    with ThreadPoolExecutor(max(1, workers)) as pool:
        for _ in tqdm(pool.map(decode, range(split.n_images)), total=split.n_images, desc="decode images",
                      unit="img", leave=False, disable=not progress):
            pass
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def compact_vocabulary(model: torch.nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Swap the text tower's embedding for one over the ids in ``tokens`` (plus padding 0).

    Returns (``used``: the sorted original ids, ``lut``: original id -> compact id); the
    compact rows start from the full table's rows, so training is unchanged. Undo with
    :func:`expand_vocabulary`."""
    full = model.token_embedding
    used = torch.unique(torch.cat([tokens.flatten(), torch.zeros(1, dtype=tokens.dtype)]))
    lut = torch.full((full.num_embeddings,), -1, dtype=torch.long)
    lut[used] = torch.arange(len(used))
    compact = torch.nn.Embedding.from_pretrained(full.weight.detach()[used.to(full.weight.device)].clone(),
                                                 freeze=False)  # no random init: the RNG stream is unchanged
    model.token_embedding = compact
    model._full_token_embedding = [full]  # a list: not registered as a submodule (no parameters twice)
    return used, lut


def expand_vocabulary(model: torch.nn.Module, used: torch.Tensor) -> None:
    """Write the trained compact rows back into the full embedding and put it back."""
    full = model._full_token_embedding[0]
    with torch.no_grad():
        full.weight[used.to(full.weight.device)] = model.token_embedding.weight
    model.token_embedding = full
    del model._full_token_embedding


def encode_text_trimmed(model: torch.nn.Module, text: torch.Tensor) -> torch.Tensor:
    """open_clip's ``encode_text`` (argmax/EOT pooling, no normalisation) on the first L
    positions, L = the longest caption of the batch: under the causal mask a position sees only
    earlier ones, so the padding after every EOT cannot change the pooled features."""
    length = max(1, int((text != 0).sum(1).max()))
    x = model.token_embedding(text[:, :length]) + model.positional_embedding[:length]
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), text[:, :length].argmax(dim=-1)]
    return x @ model.text_projection


MATMUL = ("fp32", "fast")


@contextlib.contextmanager
def matmul_precision(kind: str, device: torch.device):
    """TF32 matmuls on CUDA for the block (``fast``), restored after; yields what ran (``tf32`` or
    ``fp32``). On the CPU ``fast`` stays fp32: oneDNN's implicit bf16 (AMX) made this model's step
    2.4x *slower* on the 2-core reference machine (many small matmuls, a reorder each;
    ``benchmarks/pretrain_speed.py --cpu-bf16`` measures it)."""
    if kind not in MATMUL:
        raise ValueError(f"pretrain.matmul {kind!r}; valid: {', '.join(MATMUL)}")
    with _fp32_precision(torch.backends.cuda.matmul if kind == "fast" and device.type == "cuda" else None,
                         "tf32") as ran:
        yield ran


@contextlib.contextmanager
def _fp32_precision(backend, value: str):
    if backend is None:
        yield "fp32"
        return
    old = backend.fp32_precision
    backend.fp32_precision = value
    try:
        yield value
    finally:
        backend.fp32_precision = old


def normalise(images_u8: torch.Tensor) -> torch.Tensor:
    """``(x / 255 - mean) / std`` in float32, in place on the one float copy: bit for bit the
    out-of-place expression, without its two extra batch-sized allocations (13.3 -> 2.6 ms for a
    256-image batch of 64 px on 2 cores; each step normalises its batch)."""
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return images_u8.to(torch.float32, copy=True).div_(255.0).sub_(mean).div_(std)


def adamw_options(fused: bool) -> dict:
    """AdamW's keyword for ``pretrain.fused_optimizer``: ``fused=True``, or nothing at all (an
    explicit ``fused=False`` would also turn off the foreach kernels torch picks on CUDA)."""
    return {"fused": True} if fused else {}


OPTIMIZERS = ("adamw", "muon")


class _Chained:
    """Several optimizers stepped as one (what the training loop uses: the param groups for the
    schedule, ``zero_grad``, ``step``)."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.optimizers for g in o.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for o in self.optimizers:
            o.step()


def _muon_matrix(name: str, p: torch.Tensor) -> bool:
    """A weight matrix inside a transformer block (attention in/out, MLP fc/proj, both towers):
    what ``pretrain.optimizer: muon`` gives to Muon."""
    return p.ndim == 2 and ".resblocks." in f".{name}"


def build_optimizer(model: torch.nn.Module, pc: dict):
    """AdamW over every parameter (``pretrain.optimizer: adamw``), or Muon over the transformer
    blocks' matrices and AdamW over the rest (``muon``; its Newton-Schulz iteration in
    ``muon_precision``, fp32 without the key); ``fused_optimizer`` applies to the AdamW."""
    kind = pc.get("optimizer", "adamw")
    if kind not in OPTIMIZERS:
        raise ValueError(f"pretrain.optimizer is {kind!r}; valid: {', '.join(OPTIMIZERS)}")
    adamw = {"lr": pc["lr"], "betas": (0.9, 0.98), "eps": 1e-6, **adamw_options(pc.get("fused_optimizer", False))}
    if kind == "adamw":
        return torch.optim.AdamW(_param_groups(model, pc["weight_decay"]), **adamw)
    muon = [p for n, p in model.named_parameters() if p.requires_grad and _muon_matrix(n, p)]
    rest = _param_groups(model, pc["weight_decay"], skip=lambda n, p: _muon_matrix(n, p))
    return _Chained(torch.optim.AdamW(rest, **adamw),
                    Muon(muon, lr=pc["lr"], weight_decay=pc["weight_decay"], momentum=0.95,
                         precision=pc.get("muon_precision", DEFAULT_PRECISION)))


def _param_groups(model: torch.nn.Module, weight_decay: float, skip=lambda name, p: False):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad or skip(name, p):
            continue
        if p.ndim < 2 or "ln" in name or "embedding" in name or "logit_scale" in name or name.endswith("bias"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step: int, base: float, warmup: int, total: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * base * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate(model, tokenizer, images_u8: torch.Tensor, split: Split, device, batch_size: int = 512) -> dict:
    model.eval()
    img = torch.cat([F.normalize(model.encode_image(normalise(images_u8[i:i + batch_size]).to(device)), dim=-1)
                     for i in range(0, len(images_u8), batch_size)])
    toks = tokenizer(split.captions)
    txt = torch.cat([F.normalize(model.encode_text(toks[i:i + batch_size].to(device)), dim=-1)
                     for i in range(0, len(toks), batch_size)])
    sims = (img @ txt.T).cpu()
    owners_img, owners_txt = split.image_ids, split.image_ids[split.txt2img]
    i2t = recall_at_k(sims, owners_img, owners_txt)
    t2i = recall_at_k(sims.T, owners_txt, owners_img)
    return {**{f"i2t_{k}": v for k, v in i2t.items()}, **{f"t2i_{k}": v for k, v in t2i.items()}}


def _train_steps(model, opt, pc: dict, images: torch.Tensor, tokens: torch.Tensor, cap_start: np.ndarray,
                 caps_per: np.ndarray, rng: np.random.Generator, bar, losses: list, device, amp: bool) -> None:
    """The optimisation loop: each step a batch of images (a fresh permutation per epoch), one of
    each image's captions at random, symmetric InfoNCE."""
    steps, bs = int(pc["steps"]), int(pc["batch_size"])
    encode = encode_text_trimmed if pc.get("trim_text", False) else type(model).encode_text
    perm, pos = rng.permutation(len(images)), 0
    for step in bar:
        if pos + bs > len(perm):
            perm, pos = rng.permutation(len(images)), 0
        idx = perm[pos:pos + bs]
        pos += bs
        cap = cap_start[idx] + rng.integers(0, caps_per[idx])
        for g in opt.param_groups:
            g["lr"] = lr_at(step, pc["lr"], int(pc["warmup"]), steps)
        with autocast(device, amp):
            img = F.normalize(model.encode_image(normalise(images[idx]).to(device)), dim=-1)
            txt = F.normalize(encode(model, tokens[cap].to(device)), dim=-1)
            logits = model.logit_scale.exp() * img @ txt.T
            labels = torch.arange(len(idx), device=device)
            loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}", temp=f"{1 / model.logit_scale.exp().item():.3f}")


def pretrain(manifest: str | Path, out_dir: str | Path, cfg: dict, seed: int, device: torch.device,
             amp: bool = False, progress: bool = True, compact_vocab: bool = True,
             eval_splits: tuple[str, ...] = ("val", "test")) -> dict:
    """Train the tiny CLIP; write an open_clip local-dir folder; return train/val/test metrics
    and timings. ``compact_vocab=False`` trains the full 49,408-row embedding (same result,
    slower; kept to check the equivalence)."""
    import open_clip

    pc = cfg
    t_start = time.perf_counter()
    seed_everything(seed)
    config = tiny_clip_config(pc["embed_dim"], pc["vision"], pc["text"], pc["init_temperature"])
    model = build_from_config(config).to(device)
    tokenizer = open_clip.tokenize
    ctx = pc["text"]["context_length"]

    def tok(texts):
        return tokenizer(list(texts), context_length=ctx)

    size = pc["vision"]["image_size"]
    train = load_split(manifest, "train")
    images = load_images_uint8(train, size, progress)
    tokens = tok(train.captions)
    if compact_vocab:
        used, lut = compact_vocabulary(model, tokens)
        tokens = lut[tokens]
    caps_of = train.img2txt()
    caps_per = np.array([len(c) for c in caps_of])
    cap_start = np.array([c[0] if len(c) else 0 for c in caps_of])
    if not all(np.array_equal(c, np.arange(s, s + n)) for c, s, n in zip(caps_of, cap_start, caps_per)):
        raise AssertionError("captions of an image must be contiguous in the manifest")

    opt = build_optimizer(model, pc)
    rng = np.random.default_rng(seed)
    steps, bs = int(pc["steps"]), int(pc["batch_size"])
    data_seconds = time.perf_counter() - t_start
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc="pretrain", unit="step", disable=not progress)
    losses = []
    model.train()
    with matmul_precision(pc.get("matmul", "fp32"), device) as matmul:
        _train_steps(model, opt, pc, images, tokens, cap_start, caps_per, rng, bar, losses, device, amp)
    train_seconds = time.perf_counter() - t0
    if compact_vocab:
        expand_vocabulary(model, used)

    # deterministic figures only: they are saved inside the model folder (timings are not)
    optimizer = pc.get("optimizer", "adamw")
    metrics = {"steps": steps, "batch_size": bs, "matmul": matmul, "optimizer": optimizer,
               **({"muon_precision": pc.get("muon_precision", DEFAULT_PRECISION)} if optimizer == "muon" else {}),
               "vocabulary": len(used) if compact_vocab else model.vocab_size,
               "final_loss": float(np.mean(losses[-20:])), "temperature": 1 / model.logit_scale.exp().item()}
    for split_name in eval_splits:
        try:
            sp = load_split(manifest, split_name)
        except Exception:  # noqa: BLE001 - a dataset without that split
            continue
        m = evaluate(model, tok, load_images_uint8(sp, size, progress), sp, device)
        metrics.update({f"{split_name}_{k}": round(v, 2) for k, v in m.items()})
    model.eval()
    save_local_dir(model, config, out_dir, extra={"trained_on": str(manifest), "seed": seed, "metrics": metrics})
    timings = dict(zip(TIMING_KEYS, (round(train_seconds, 1), round(steps / max(train_seconds, 1e-9), 2),
                                     round(data_seconds, 1), round(time.perf_counter() - t_start, 1))))
    return {**metrics, **timings}  # timings go to reports/pretrain.json only
