"""READ adapted to retrieval (docs/methods.md): confidence term minus a diversity term.

With p_i = softmax(q_i G^T / tau) over the whole gallery and p_max,i = max_j p_ij:

    loss = mean_i[ p_max,i * (1 - log p_max,i + log gamma) ] - H( softmax( sum_i p_i ) ),

gamma = 1/e by default, so the first term is mean_i[-p_max,i log p_max,i]. Note the second
term is the entropy of the softmax of the *summed* probabilities (not of their mean), as
stated in docs/methods.md. Every sample contributes; there is no selection.
"""

from __future__ import annotations

import math

import torch

from .base import GalleryEntropyMethod, entropy, register_method


def read_loss(probs: torch.Tensor, gamma: float = math.exp(-1)) -> torch.Tensor:
    """READ's loss for a (B, N) matrix of predictions (rows sum to 1)."""
    p_max = probs.max(dim=1).values
    confidence = (p_max * (1 - p_max.log() + math.log(gamma))).mean()
    return confidence - entropy(probs.sum(dim=0))


@register_method("read")
class READ(GalleryEntropyMethod):
    defaults = {"lr": 3e-4, "weight_decay": 1e-4, "tau": 0.01, "gamma": math.exp(-1)}

    def objective(self, x: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        probs = logits.softmax(dim=-1)
        return read_loss(probs, self.hp["gamma"]), {"entropy": float(entropy(logits.detach()).mean()),
                                                    "p_max": float(probs.detach().max(dim=1).values.mean()),
                                                    "n_selected": len(probs)}
