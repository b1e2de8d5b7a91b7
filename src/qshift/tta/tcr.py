"""TCR — test-time adaptation for cross-modal retrieval (ICLR 2025), reproduced per docs/methods.md.

Per batch, per step (``steps`` = 3; the batch's scores come from the last step's forward):

1. z^Q = enc_Q(queries), S = z^Q (Z^G)^T over the full gallery.
2. Query prediction refinement: each query's top-K gallery items form the candidate set
   G' (K = 1: g'(i) = argmax_j S_ij, duplicates allowed); p_hat = softmax(z^Q G'^T / tau).
3. Source-like queue (step 0 of the first ``queue_batches`` batches only): the
   int(con_ratio * B) pairs (z^Q_i, z^{G'}_i) with the smallest
   SI_i = 2||z^Q_i - z^G'_i|| - ||z^Q_i - zbar^Q|| - ||z^G'_i - zbar^G'||
   join a queue that keeps the ``queue_size`` smallest SI overall. From it:
   Delta_S = ||mean z^Q_queue - mean z^G'_queue|| and E_m = max entropy in the queue.
4. Loss = L_NA + L_MU + L_MG (weights 1):
   L_NA = mean_{i: E_i <= E_m} max(1 - E_i/(E_m + 1e-3), 0) * E_i  (weights detached);
   L_MU = mean_i exp(-t ||z^Q_i - zbar^Q||);  L_MG = (||zbar^Q - zbar^G'|| - Delta_S)^2.
   When no query passes the E_m filter the reference code yields NaN; here: no step, counted.
"""

from __future__ import annotations

import torch

from .base import TTAMethod, entropy, register_method


def refine(similarities: torch.Tensor, gallery: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Query prediction refinement. Returns (candidates (B*K, d), top-1 positive per query (B, d))."""
    idx = similarities.topk(k, dim=1).indices  # (B, K)
    return gallery[idx.reshape(-1)], gallery[idx[:, 0]]


def source_likeness(zq: torch.Tensor, zg: torch.Tensor) -> torch.Tensor:
    """SI_i: small = small modality gap and high uniformity (TCR eq. for the source-like set)."""
    zq_bar, zg_bar = zq.mean(0, keepdim=True), zg.mean(0, keepdim=True)
    return 2 * (zq - zg).norm(dim=1) - (zq - zq_bar).norm(dim=1) - (zg - zg_bar).norm(dim=1)


class SourceLikeQueue:
    """Keeps the ``size`` pairs with the smallest SI seen so far (detached)."""

    def __init__(self, size: int):
        self.size = size
        self.si = torch.empty(0)
        self.zq = self.zg = self.ent = None

    def push(self, si: torch.Tensor, zq: torch.Tensor, zg: torch.Tensor, ent: torch.Tensor, n: int) -> None:
        if n <= 0:
            return
        keep = si.topk(min(n, len(si)), largest=False).indices
        new = [t.detach()[keep] for t in (si, zq, zg, ent)]
        if self.zq is None:
            self.si, self.zq, self.zg, self.ent = new
        else:
            self.si, self.zq, self.zg, self.ent = (torch.cat([a, b]) for a, b in
                                                   zip((self.si, self.zq, self.zg, self.ent), new))
        if len(self.si) > self.size:
            keep = self.si.topk(self.size, largest=False).indices
            self.si, self.zq, self.zg, self.ent = (t[keep] for t in (self.si, self.zq, self.zg, self.ent))

    def __len__(self) -> int:
        return len(self.si)

    @property
    def delta_s(self) -> torch.Tensor:
        return (self.zq.mean(0) - self.zg.mean(0)).norm()

    @property
    def e_max(self) -> torch.Tensor:
        return self.ent.max()


def noise_robust_loss(ent: torch.Tensor, e_max: torch.Tensor) -> torch.Tensor | None:
    """L_NA: entropy of queries at or below the threshold E_m, weighted by 1 - E/(E_m + 1e-3).
    ``None`` when no query passes (the caller takes no step)."""
    mask = ent <= e_max
    if not bool(mask.any()):
        return None
    w = (1 - ent.detach() / (e_max + 1e-3)).clamp_min(0)
    return (w * ent)[mask].mean()


def uniformity_loss(zq: torch.Tensor, t: float) -> torch.Tensor:
    """L_MU = mean_i exp(-t * ||z_i - zbar||)."""
    return torch.exp(-(zq - zq.mean(0, keepdim=True)).norm(dim=1) * t).mean()


def gap_loss(zq: torch.Tensor, zg: torch.Tensor, delta_s: torch.Tensor) -> torch.Tensor:
    """L_MG = (||zbar^Q - zbar^G'|| - Delta_S)^2."""
    return ((zq.mean(0) - zg.mean(0)).norm() - delta_s) ** 2


def _item(x: torch.Tensor | None) -> float:
    return float("nan") if x is None else x.detach().item()


@register_method("tcr")
class TCR(TTAMethod):
    defaults = {"lr": 3e-4, "weight_decay": 1e-4, "tau": 0.02, "topk": 1, "uniformity_t": 0.1,
                "con_ratio": 0.3, "queue_size": 64, "queue_batches": 10,
                "w_na": 1.0, "w_mu": 1.0, "w_mg": 1.0}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.queue = SourceLikeQueue(int(self.hp["queue_size"]))

    def reset(self) -> None:
        super().reset()
        self.queue = SourceLikeQueue(int(self.hp["queue_size"]))

    def refined_forward(self, x: torch.Tensor, step: int):
        """Steps 1-3 of the method: encode, refine, entropies of p_hat, and (step 0 of the first
        ``queue_batches`` batches) the source-like queue update.
        Returns (z^Q, full-gallery similarities, candidates G', top-1 positives, entropies)."""
        hp = self.hp
        zq = self.encode(x)
        sims = self.similarities(zq)
        candidates, positives = refine(sims.detach(), self.gallery, int(hp["topk"]))
        ent = entropy(zq @ candidates.T / hp["tau"])
        if step == 0 and self.n_batches < hp["queue_batches"]:
            n_push = int(hp["con_ratio"] * len(zq))
            self.queue.push(source_likeness(zq.detach(), positives), zq, positives, ent, n_push)
        return zq, sims, candidates, positives, ent

    def losses(self, zq: torch.Tensor, candidates: torch.Tensor, ent: torch.Tensor) -> dict[str, torch.Tensor | None]:
        hp = self.hp
        return {"na": noise_robust_loss(ent, self.queue.e_max),
                "mu": uniformity_loss(zq, hp["uniformity_t"]),
                "mg": gap_loss(zq, candidates, self.queue.delta_s)}

    def forward_step(self, x: torch.Tensor, step: int, batch: dict):
        hp = self.hp
        zq, sims, candidates, positives, ent = self.refined_forward(x, step)
        if len(self.queue) == 0:  # nothing source-like yet (a batch smaller than 1/con_ratio)
            return sims, None, {}
        parts = self.losses(zq, candidates, ent)
        if parts["na"] is None:
            loss = None
        else:
            loss = hp["w_na"] * parts["na"] + hp["w_mu"] * parts["mu"] + hp["w_mg"] * parts["mg"]
        return sims, loss, {"loss": _item(loss), "loss_na": _item(parts["na"]),
                            "loss_mu": _item(parts["mu"]), "loss_mg": _item(parts["mg"]),
                            "entropy": ent.detach().mean().item(), "n_selected": int((ent <= self.queue.e_max).sum()),
                            "delta_s": float(self.queue.delta_s), "e_max": float(self.queue.e_max),
                            "delta_t": (zq.detach().mean(0) - candidates.mean(0)).norm().item()}
