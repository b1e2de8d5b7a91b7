"""DeYO adapted to retrieval (docs/methods.md): entropy + PLPD filtered, reweighted entropy.

Per step, on logits q G^T / tau over the whole gallery:

1. Entropy filter: keep E_i < thr_E, strictly below the k-th smallest entropy,
   k = int(ent_ratio * B) (so at most k - 1 samples; k < 1 keeps none).
2. PLPD (image queries): c_i = argmax p_i; p' = the prediction (no gradient) on the image
   with its grid x grid patches shuffled (:func:`patch_shuffle`, a fresh random permutation
   per image from a generator seeded with ``torch.initial_seed()`` when the method is built,
   i.e. the run's seed); PLPD_i = p_i(c_i) - p'_i(c_i); keep PLPD_i > plpd_threshold.
   Only the samples that passed step 1 are shuffled and re-encoded.
   Text queries: no patch shuffle exists, so PLPD is off (threshold -1: all pass) and PLPD_i
   is taken as 0 in the weight below.
3. Loss = mean over the n kept samples of w_i E_i with (detached)
   w_i = 1/(exp(E_i - thr) + 0.1) + (1/exp(-PLPD_i) + 0.1) = ... + exp(PLPD_i) + 0.1 (the
   reference's operator grouping: the +0.1 sits outside the PLPD reciprocal), thr = the k'-th
   smallest entropy among the kept samples, k' = max(int(weight_ratio * n), 1).
"""

from __future__ import annotations

import torch

from .base import GalleryEntropyMethod, entropy, register_method


def patch_shuffle(images: torch.Tensor, grid: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Split each (C, H, W) image into a grid x grid array of patches and permute the patches
    (one random permutation per image). When H or W is not divisible by ``grid`` the patches
    cover the top-left (grid * H//grid, grid * W//grid) region and the remaining border pixels
    stay in place, so the result is always a permutation of the pixels."""
    b, c, h, w = images.shape
    ph, pw = h // grid, w // grid
    region = images[:, :, :grid * ph, :grid * pw]
    patches = region.reshape(b, c, grid, ph, grid, pw).permute(0, 2, 4, 1, 3, 5).reshape(b, grid * grid, c, ph, pw)
    perm = torch.rand(b, grid * grid, generator=generator).argsort(dim=1).to(images.device)
    patches = patches[torch.arange(b, device=images.device)[:, None], perm]
    out = images.clone()
    out[:, :, :grid * ph, :grid * pw] = (patches.reshape(b, grid, grid, c, ph, pw).permute(0, 3, 1, 4, 2, 5)
                                         .reshape(b, c, grid * ph, grid * pw))
    return out


def plpd(probs: torch.Tensor, probs_shuffled: torch.Tensor) -> torch.Tensor:
    """Pseudo-label probability difference p(c) - p'(c), c = argmax of the original prediction."""
    c = probs.argmax(dim=1, keepdim=True)
    return (probs.gather(1, c) - probs_shuffled.gather(1, c)).squeeze(1)


def entropy_filter(ent: torch.Tensor, ratio: float) -> torch.Tensor:
    """E_i strictly below the k-th smallest entropy, k = int(ratio * B); none when k < 1."""
    k = int(ratio * len(ent))
    if k < 1:
        return torch.zeros_like(ent, dtype=torch.bool)
    return ent < ent.kthvalue(k).values


def deyo_weights(ent: torch.Tensor, plpd_values: torch.Tensor, ratio: float) -> torch.Tensor:
    """1/(exp(E - thr) + 0.1) + (1/exp(-PLPD) + 0.1), thr = k-th smallest E, k = max(int(ratio n), 1).

    The PLPD term is the reference's ``1 / torch.exp(-plpd) + 0.1``, i.e. exp(PLPD) + 0.1."""
    thr = ent.kthvalue(max(int(ratio * len(ent)), 1)).values
    return 1 / (torch.exp(ent - thr) + 0.1) + (1 / torch.exp(-plpd_values) + 0.1)


@register_method("deyo")
class DeYO(GalleryEntropyMethod):
    defaults = {"lr": 3e-4, "weight_decay": 1e-4, "tau": 0.01, "ent_ratio": 0.5, "plpd_threshold": 0.0,
                "grid": 4, "weight_ratio": 0.4}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.generator = torch.Generator().manual_seed(torch.initial_seed())

    @torch.no_grad()
    def shuffle_plpd(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """PLPD of each sample of ``x`` (its logits given); zeros for text queries."""
        if self.modality != "image":
            return logits.new_zeros(len(logits))
        shuffled = patch_shuffle(x, int(self.hp["grid"]), self.generator)
        probs_shuffled = (self.similarities(self.encode(shuffled)) / self.hp["tau"]).softmax(dim=-1)
        return plpd(logits.softmax(dim=-1), probs_shuffled)

    def objective(self, x: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor | None, dict[str, float]]:
        hp = self.hp
        ent = entropy(logits)
        idx = entropy_filter(ent.detach(), hp["ent_ratio"]).nonzero().squeeze(1)
        stats = {"entropy": ent.detach().mean().item(), "n_reliable": len(idx), "plpd": float("nan"), "n_selected": 0}
        if len(idx) == 0:
            return None, stats
        pl = self.shuffle_plpd(x[idx.to(x.device)], logits.detach()[idx])
        passed = pl > (hp["plpd_threshold"] if self.modality == "image" else -1.0)
        stats.update(plpd=float(pl.mean()), n_selected=int(passed.sum()))
        if not bool(passed.any()):
            return None, stats
        kept = ent[idx[passed]]
        return (deyo_weights(kept.detach(), pl[passed], hp["weight_ratio"]) * kept).mean(), stats
