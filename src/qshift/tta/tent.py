"""Tent: minimise the mean Shannon entropy of softmax(q G^T / tau) over the whole gallery."""

from __future__ import annotations

import torch

from .base import GalleryEntropyMethod, entropy, register_method


@register_method("tent")
class Tent(GalleryEntropyMethod):
    defaults = {"lr": 3e-4, "weight_decay": 1e-4, "tau": 0.01}

    def objective(self, x: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        ent = entropy(logits)
        return ent.mean(), {"entropy": ent.detach().mean().item(), "n_selected": len(ent)}
