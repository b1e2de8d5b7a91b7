"""EATA as used for retrieval (docs/methods.md): reliable, non-redundant entropy minimisation.

Per step, on logits q G^T / tau over the whole gallery:

1. Reliability: keep the int(select_ratio * B) samples with the lowest entropy (exactly that
   many; ties broken by batch position).
2. Redundancy: of those, keep sample i only if |cos(ema_prob, p_i)| < d_margin. While
   ``ema_prob`` is ``None`` (start of the stream, or no sample ever kept) every sample passes.
3. ``ema_prob`` <- ema_momentum * ema_prob + (1 - ema_momentum) * mean(p of the kept samples);
   it is initialised to that mean the first time a sample is kept and left unchanged when
   none is (as EATA's reference code does). It is updated at every step, i.e. ``steps`` times
   per batch, because in EATA every forward that adapts updates it.
4. Loss = mean over kept samples of E_i / exp(E_i - weight_margin) (weights detached).
   No Fisher regulariser.
"""

from __future__ import annotations

import torch

from .base import GalleryEntropyMethod, ema, entropy, register_method


def eata_select(ent: torch.Tensor, probs: torch.Tensor, ema_prob: torch.Tensor | None, ratio: float,
                d_margin: float) -> torch.Tensor:
    """Boolean mask of the samples EATA learns from: the int(ratio * B) lowest entropies, then
    those with |cos(ema_prob, p_i)| < d_margin (all of them while ``ema_prob`` is ``None``)."""
    keep = torch.zeros_like(ent, dtype=torch.bool)
    keep[ent.argsort(stable=True)[:int(ratio * len(ent))]] = True
    if ema_prob is not None:
        keep &= torch.cosine_similarity(probs, ema_prob[None], dim=1).abs() < d_margin
    return keep


def update_ema_prob(ema_prob: torch.Tensor | None, kept_probs: torch.Tensor, momentum: float) -> torch.Tensor | None:
    """EMA of the mean prediction of the kept samples; unchanged when none was kept."""
    if len(kept_probs) == 0:
        return ema_prob
    return ema(ema_prob, kept_probs.mean(0), momentum)


@register_method("eata")
class EATA(GalleryEntropyMethod):
    defaults = {"lr": 3e-4, "weight_decay": 1e-4, "tau": 0.01, "select_ratio": 0.4, "d_margin": 0.05,
                "ema_momentum": 0.9, "weight_margin": 0.4}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ema_prob: torch.Tensor | None = None

    def reset(self) -> None:
        super().reset()
        self.ema_prob = None

    def objective(self, x: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor | None, dict[str, float]]:
        hp = self.hp
        ent = entropy(logits)
        probs = logits.detach().softmax(dim=-1)
        keep = eata_select(ent.detach(), probs, self.ema_prob, hp["select_ratio"], hp["d_margin"])
        self.ema_prob = update_ema_prob(self.ema_prob, probs[keep], hp["ema_momentum"])
        stats = {"entropy": ent.detach().mean().item(), "n_reliable": int(hp["select_ratio"] * len(ent)),
                 "n_selected": int(keep.sum())}
        if not bool(keep.any()):
            return None, stats
        kept = ent[keep]
        weights = torch.exp(-(kept.detach() - hp["weight_margin"]))
        return (weights * kept).mean(), stats
