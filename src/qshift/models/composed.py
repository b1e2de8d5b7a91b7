"""The composed encoder of composed image retrieval (CIR): two towers and a combiner.

A CIR query is a (reference image, modification text) pair. :class:`ComposedModel` wraps a
:class:`~qshift.models.base.RetrievalModel` (the built-in tiny CLIP, or any loaded model) and a
:class:`Combiner`; its modality ``composed`` encodes a query batch as
``normalize(combiner(normalize(f_img(ref)), normalize(f_txt(text))))``; the gallery (target
images) is encoded by the image tower alone, once, frozen.

Combiners (``model.combiner``):

- ``sum`` — the zero-shot composition, normalize(z_img + z_txt) (no parameters; the baseline of
  zero-shot CIR with a CLIP, e.g. the "Image + Text" row of Pic2Word, Saito et al., CVPR 2023);
- ``trained`` — the MLP + gate fitted by :func:`train_combiner` in the pretrain stage and stored
  beside the CLIP (``qshift_combiner.pt``): out = g * z_img + (1 - g) * z_txt + MLP([z_img, z_txt]),
  g = sigmoid(w . [z_img, z_txt] + b) — the gated residual form of CLIP4Cir's combiner
  (Baldrati et al., CVPR-W 2022), scaled down.
- a path to a CLIP4Cir checkpoint (``model.combiner: models/clip4cir/combiner.pt``) — CLIP4Cir's
  Combiner (Baldrati et al., CVPR-W 2022; github.com/ABaldrati/CLIP4Cir ``src/combiner.py``) with
  its state_dict names, so a released or self-trained checkpoint loads as its ``combiner_train.py``
  saves it (``{"epoch", "Combiner": state_dict}``, or a bare state_dict); the projection and hidden
  sizes are read from the weights. As in CLIP4Cir, it takes the towers' *raw* (un-normalised)
  features: text and image projection -> ReLU -> concat [text, image] -> Linear -> ReLU ->
  output Linear, plus the dynamic scalar l = sigmoid(MLP(concat)): out = normalize(output +
  l * f_txt + (1 - l) * f_img). Dropout is inactive (eval mode; no method puts it in train mode).
  Its feature size must be the loaded CLIP's (CLIP4Cir: RN50x4, 640-d).

TTA on CIR (RECONSTRUCTION — REST and TCR define no CIR variant, docs/rest.md §CIR): the methods
adapt the affine parameters of the LayerNorms of *both* towers (``norm_layers("composed")``: the
image tower's and the text transformer blocks', as for i2t/t2i queries), with everything else —
the combiner included — frozen. A query batch travels through the methods as one float tensor
(:func:`pack`: a 3-value header (C, H, W), the flattened pixels, then the token ids, exact in
float32), so every method's indexing, queues and re-encoding work unchanged.
"""

from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, InputError
from ..cir_plan import COMBINER_DEFAULTS, COMBINERS, is_checkpoint  # torch-free: planning reads them there
from .base import RetrievalModel

COMBINER_FILE = "qshift_combiner.pt"
COMBINER_INFO = "qshift_combiner.json"


def pack(images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) float pixels and (B, L) token ids -> one (B, 3 + C*H*W + L) float tensor."""
    b, c, h, w = images.shape
    if tokens.max() >= 2 ** 24:
        raise ConfigError("token ids >= 2**24 cannot be packed exactly into float32")
    header = torch.tensor([c, h, w], dtype=torch.float32).expand(b, 3)
    return torch.cat([header, images.float().reshape(b, -1), tokens.float()], dim=1)


def unpack(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    c, h, w = (int(v) for v in x[0, :3].tolist())
    n = c * h * w
    return x[:, 3:3 + n].reshape(len(x), c, h, w), x[:, 3 + n:].round().long()


class Combiner(nn.Module):
    def __init__(self, dim: int, hidden: int = 256, kind: str = "trained"):
        super().__init__()
        if kind not in COMBINERS:
            raise ConfigError(f"model.combiner {kind!r}; valid: {', '.join(COMBINERS)}")
        self.kind, self.dim, self.hidden = kind, dim, hidden
        if kind == "trained":
            self.mlp = nn.Sequential(nn.Linear(2 * dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
            self.gate = nn.Linear(2 * dim, 1)

    def forward(self, zi: torch.Tensor, zt: torch.Tensor) -> torch.Tensor:
        if self.kind == "sum":
            return zi + zt
        h = torch.cat([zi, zt], dim=-1)
        g = torch.sigmoid(self.gate(h))
        return g * zi + (1 - g) * zt + self.mlp(h)


class CLIP4CirCombiner(nn.Module):
    """CLIP4Cir's Combiner, written from the paper's Fig. 3 and ``src/combiner.py`` (same module
    names, so its checkpoints load; outputs checked against that code in tests/test_cir_real.py)."""

    raw_features = True  # CLIP4Cir combines the towers' un-normalised features

    def __init__(self, clip_feature_dim: int, projection_dim: int, hidden_dim: int):
        super().__init__()
        self.kind, self.dim, self.hidden, self.projection = "clip4cir", clip_feature_dim, hidden_dim, projection_dim
        self.text_projection_layer = nn.Linear(clip_feature_dim, projection_dim)
        self.image_projection_layer = nn.Linear(clip_feature_dim, projection_dim)
        self.dropout1, self.dropout2, self.dropout3 = nn.Dropout(0.5), nn.Dropout(0.5), nn.Dropout(0.5)
        self.combiner_layer = nn.Linear(projection_dim * 2, hidden_dim)
        self.output_layer = nn.Linear(hidden_dim, clip_feature_dim)
        self.dynamic_scalar = nn.Sequential(nn.Linear(projection_dim * 2, hidden_dim), nn.ReLU(), nn.Dropout(0.5),
                                            nn.Linear(hidden_dim, 1), nn.Sigmoid())

    def forward(self, zi: torch.Tensor, zt: torch.Tensor) -> torch.Tensor:
        t = self.dropout1(F.relu(self.text_projection_layer(zt)))
        v = self.dropout2(F.relu(self.image_projection_layer(zi)))
        h = torch.cat((t, v), -1)
        lam = self.dynamic_scalar(h)
        out = self.output_layer(self.dropout3(F.relu(self.combiner_layer(h)))) + lam * zt + (1 - lam) * zi
        return F.normalize(out, dim=-1)


def load_clip4cir(path: str | Path, dim: int) -> CLIP4CirCombiner:
    """A CLIP4Cir Combiner checkpoint (``{"Combiner": state_dict}`` or a bare state_dict)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"model.combiner: CLIP4Cir combiner checkpoint {path} not found (a path to the .pt file "
                         f"combiner_train.py saves, or sum / trained)")
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file
        raise InputError(f"CLIP4Cir combiner checkpoint {path} is unreadable: {e}") from None
    state = doc.get("Combiner", doc) if isinstance(doc, dict) else None
    need = ("text_projection_layer.weight", "combiner_layer.weight")
    if not isinstance(state, dict) or not all(k in state and hasattr(state[k], "shape") for k in need):
        keys = sorted(doc)[:6] if isinstance(doc, dict) else type(doc).__name__
        raise InputError(f"{path} is not a CLIP4Cir Combiner checkpoint: expected key 'Combiner' (or its "
                         f"state_dict) with {', '.join(need)}; found {keys}")
    proj, feat = (int(x) for x in state["text_projection_layer.weight"].shape)
    hidden = int(state["combiner_layer.weight"].shape[0])
    comb = CLIP4CirCombiner(feat, proj, hidden)
    try:
        comb.load_state_dict(state)
    except RuntimeError as e:
        raise InputError(f"CLIP4Cir combiner checkpoint {path} does not match the Combiner architecture: "
                         f"{str(e).splitlines()[0]} {' '.join(str(e).split())[:300]}") from None
    if feat != dim:
        raise InputError(f"CLIP4Cir combiner {path} combines {feat}-d features, the model's are {dim}-d; use the "
                         f"CLIP it was trained with (CLIP4Cir: RN50x4, 640-d)")
    return comb


def raw_encode(model: RetrievalModel, modality: str, batch: torch.Tensor) -> torch.Tensor:
    """:meth:`RetrievalModel.encode` without the final normalisation (CLIP4Cir's combiner input)."""
    batch = batch.to(model.device, non_blocking=True)
    if model.autocast_dtype is not None and model.device.type == "cuda":
        with torch.autocast("cuda", dtype=model.autocast_dtype):
            return model._encode(modality, batch).float()
    return model._encode(modality, batch).float()


class ComposedModel(RetrievalModel):
    """A retrieval model whose query modality ``composed`` is (reference image, modification text)."""

    def __init__(self, base: RetrievalModel, combiner: Combiner):
        self.base, self.combiner = base, combiner.to(base.device).eval()
        for p in self.combiner.parameters():
            p.requires_grad_(False)
        self.name, self.device = base.name, base.device
        self.preprocess, self.autocast_dtype = base.preprocess, base.autocast_dtype
        self.module = nn.ModuleDict({"model": base.module, "combiner": self.combiner})

    def image_transform(self) -> Callable:
        return self.base.image_transform()

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.base.tokenize(texts)

    def _encode(self, modality: str, batch: torch.Tensor) -> torch.Tensor:  # pragma: no cover - encode overrides
        raise NotImplementedError

    def encode(self, modality: str, batch: torch.Tensor) -> torch.Tensor:
        if modality != "composed":
            return self.base.encode(modality, batch)
        images, tokens = unpack(batch)
        if getattr(self.combiner, "raw_features", False):  # CLIP4Cir: un-normalised features in
            return self.compose(raw_encode(self.base, "image", images), raw_encode(self.base, "text", tokens))
        return self.compose(self.base.encode("image", images), self.base.encode("text", tokens))

    def compose(self, zi: torch.Tensor, zt: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.combiner(zi, zt).float(), dim=-1)

    def norm_layers(self, modality: str):
        if modality == "composed":
            return self.base.norm_layers("image") + self.base.norm_layers("text")
        return self.base.norm_layers(modality)


def embed_dim(model: RetrievalModel) -> int:
    with torch.no_grad():
        return int(model.encode("text", model.tokenize(["a"])).shape[-1])


def load_combiner(kind: str, model_dir: str | Path, dim: int) -> nn.Module:
    """``sum`` (no file), ``trained`` (``<model_dir>/qshift_combiner.pt``, from the pretrain stage)
    or a CLIP4Cir checkpoint's path."""
    if kind == "sum":
        return Combiner(dim, kind="sum")
    if is_checkpoint(kind):
        return load_clip4cir(kind, dim)
    if kind != "trained":
        raise ConfigError(f"params: model.combiner {kind!r}; valid: {', '.join(COMBINERS)} or the path of a "
                          f"CLIP4Cir combiner checkpoint (.pt)")
    path = Path(model_dir) / COMBINER_FILE
    if not path.is_file():
        raise InputError(f"model folder {model_dir} has no trained combiner {COMBINER_FILE} (model.combiner: trained); "
                         f"run the pretrain stage of a CIR benchmark, or set model.combiner: sum (zero-shot)")
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
        comb = Combiner(int(doc["dim"]), int(doc["hidden"]), "trained")
        comb.load_state_dict(doc["state_dict"])
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file
        raise InputError(f"combiner {path} is unreadable: {e}") from None
    if comb.dim != dim:
        raise InputError(f"combiner {path} is for {comb.dim}-d embeddings, the model's are {dim}-d; retrain it")
    return comb


def save_combiner(comb: Combiner, model_dir: str | Path, info: dict) -> None:
    from ..io import atomic_path, write_json

    buf = io.BytesIO()  # through a buffer: identical trainings give identical bytes
    torch.save({"dim": comb.dim, "hidden": comb.hidden,
                "state_dict": {k: v.detach().cpu().contiguous() for k, v in comb.state_dict().items()}}, buf)
    with atomic_path(Path(model_dir) / COMBINER_FILE, ".pt") as tmp:
        Path(tmp).write_bytes(buf.getvalue())
    write_json(Path(model_dir) / COMBINER_INFO, info)


def composed_recall(q: torch.Tensor, g: torch.Tensor, q_owner, g_owner, ks=(1, 5, 10, 50)) -> dict[str, float]:
    from ..evaluation import recall_at_k

    return recall_at_k(q @ g.T, q_owner, g_owner, ks)


def train_combiner(model: RetrievalModel, train: dict, val: dict | None, hp: dict, seed: int,
                   progress: bool = True) -> tuple[Combiner, dict]:
    """Fit the ``trained`` combiner over the frozen towers' embeddings.

    ``train``/``val``: {"zi", "zt" (query embeddings), "target" (index of each query's target
    in "gallery"), "distractor" (index or -1), "gallery" (image embeddings), "q_owner", "g_owner"}.
    Loss: InfoNCE (temperature ``tau``) of each composed query against the batch's targets and,
    with ``hard_negatives``, their distractors. Returns the combiner and its figures (val
    R@1/5/10/50 of the trained combiner and of the zero-shot sum)."""
    from ..runtime import seed_everything
    from ..progress import tqdm

    hp = {**COMBINER_DEFAULTS, **(hp or {})}
    seed_everything(seed)
    dim = int(train["zi"].shape[1])
    comb = Combiner(dim, int(hp["hidden"]), "trained")
    opt = torch.optim.AdamW(comb.parameters(), lr=float(hp["lr"]), weight_decay=float(hp["weight_decay"]))
    rng = np.random.default_rng(seed)
    n, bs, steps = len(train["zi"]), min(int(hp["batch_size"]), len(train["zi"])), int(hp["steps"])
    if n < 2:
        raise ConfigError(f"the combiner needs at least 2 training triplets, got {n} (datasets.<name>.n_restval)")
    t0, losses = time.perf_counter(), []
    for step in tqdm(range(steps), desc="combiner", unit="step", disable=not progress):
        idx = torch.as_tensor(rng.choice(n, bs, replace=False))
        lr = float(hp["lr"]) * 0.5 * (1 + math.cos(math.pi * step / max(1, steps)))
        for gr in opt.param_groups:
            gr["lr"] = lr
        q = F.normalize(comb(train["zi"][idx], train["zt"][idx]), dim=-1)
        cand = [train["gallery"][train["target"][idx]]]
        if hp["hard_negatives"]:
            neg = train["distractor"][idx]
            cand.append(train["gallery"][neg[neg >= 0]])
        logits = q @ torch.cat(cand).T / float(hp["tau"])
        loss = F.cross_entropy(logits, torch.arange(bs))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    comb.eval()
    info = {"steps": steps, "batch_size": bs, "n_train": n, "final_loss": round(float(np.mean(losses[-20:])), 4),
            "hparams": hp}
    if val is not None:
        with torch.no_grad():
            for name, c in (("trained", comb), ("sum", Combiner(dim, kind="sum"))):
                q = F.normalize(c(val["zi"], val["zt"]), dim=-1)
                r = composed_recall(q, val["gallery"], val["q_owner"], val["g_owner"])
                info.update({f"val_{name}_{k}": round(v, 2) for k, v in r.items()})
    info["train_seconds"] = round(time.perf_counter() - t0, 2)
    return comb, info
