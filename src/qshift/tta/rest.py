"""REST (arXiv 2511.14416) — a DOCUMENTED RECONSTRUCTION: no reference code is public.

What the paper states and this module keeps: TCR's query prediction refinement; an objective
of three terms (query uniformity, query-gallery gap, query-gallery consistency); and gradient
decoupling, which removes the part of the adaptation gradient that conflicts with the
gradient of "general knowledge" and bounds its strength. The concrete choices below are ours.

Per batch, per step (the batch's scores come from the last step's forward, as for TCR):

1. z^Q = enc_Q(queries); refinement and the source-like queue exactly as TCR (tcr.py): G' the
   top-K gallery candidates, z^{G'}_i the top-1 positive of query i, E_i = H(softmax(z^Q G'^T / tau)),
   queue filled at step 0 of the first ``queue_batches`` batches -> Delta_S and E_m.
2. QS objective L_t = w_con L_con + w_mu L_MU + w_mg L_MG with TCR's L_MU and L_MG and
   L_con = mean over {i : E_i <= E_m} of w_i (1 - cos(z^Q_i, z^{G'}_i)),
   w_i = max(1 - E_i / (E_m + 1e-3), 0) detached (noise-weighted like TCR's L_NA).
   No query passing the E_m filter is an empty selection: no step, counted.
3. General-knowledge loss L_s: distillation to the frozen *source* model's embeddings of the
   same batch, L_s = mean_i ||z^Q_i - z^src_i||^2 / 2 (= mean_i (1 - cos(z^Q_i, z^src_i))).
   z^src is computed once per batch (before the first forward) with the source norm
   parameters swapped in.
   (At the source itself g_s = 0, so nothing is projected until the model has moved.)
4. Gradient decoupling (:func:`decouple`) on the flattened gradients over the adapted
   parameters: if g_t . g_s < 0, g_t <- g_t - (g_t . g_s / ||g_s||^2) g_s; then
   ||g_t|| is clipped to ``max_grad_norm``. The result is written to the params' ``.grad``
   and AdamW steps; g_s itself is not applied.

Per-batch stats include ``angle_before``/``angle_after``, the angle in degrees between g_t and
g_s before/after decoupling, averaged over the batch's steps where g_s != 0 (NaN otherwise),
and ``n_projected``, the number of steps whose g_t conflicted with g_s.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch

from .base import BatchOutput, register_method
from .tcr import TCR, gap_loss, uniformity_loss


def _angle(a: torch.Tensor, b: torch.Tensor) -> float:
    """Angle between two vectors in degrees; NaN when either is zero."""
    denom = a.norm() * b.norm()
    if denom == 0:
        return float("nan")
    return math.degrees(math.acos(max(-1.0, min(1.0, float(a @ b / denom)))))


def decouple(g_t: torch.Tensor, g_s: torch.Tensor, max_norm: float) -> tuple[torch.Tensor, float, float]:
    """Remove g_t's component against g_s when they conflict (negative dot product), then clip
    its norm to ``max_norm``. Returns (g_t', angle before, angle after) in degrees."""
    before = _angle(g_t, g_s)
    dot = g_t @ g_s
    if dot < 0:
        g_t = g_t - dot / (g_s @ g_s) * g_s
    norm = g_t.norm()
    if norm > max_norm:
        g_t = g_t * (max_norm / norm)
    return g_t, before, _angle(g_t, g_s)


def consistency_loss(zq: torch.Tensor, positives: torch.Tensor, ent: torch.Tensor,
                     e_max: torch.Tensor) -> torch.Tensor | None:
    """Noise-weighted mean (1 - cos(z^Q_i, z^{G'}_i)) over queries with E_i <= E_m; ``None`` if none."""
    mask = ent <= e_max
    if not bool(mask.any()):
        return None
    w = (1 - ent.detach() / (e_max + 1e-3)).clamp_min(0)
    return (w * (1 - (zq * positives).sum(dim=1)))[mask].mean()


def distillation_loss(zq: torch.Tensor, z_src: torch.Tensor) -> torch.Tensor:
    """mean_i ||z_i - z^src_i||^2 / 2, i.e. mean_i (1 - cos(z_i, z^src_i)) for unit vectors;
    written as a distance so that its gradient is exactly zero at the source."""
    return (zq - z_src).pow(2).sum(dim=1).mean() / 2


def _mean_angles(angles: list[tuple[float, float, float, float]]) -> dict[str, float]:
    """Per-batch means of the per-step decoupling diagnostics (angles over the steps where defined)."""
    def nanmean(values):
        values = [v for v in values if not math.isnan(v)]
        return sum(values) / len(values) if values else float("nan")

    before, after, norm_before, norm_after = zip(*angles) if angles else ((), (), (), ())
    return {"angle_before": nanmean(before), "angle_after": nanmean(after),
            "n_projected": sum(b > 90 for b in before),
            "grad_norm": nanmean(norm_before), "grad_norm_after": nanmean(norm_after)}


@register_method("rest")
class REST(TCR):
    """REST, reconstructed (no public reference code): see the module docstring for every choice."""

    defaults = {"lr": 3e-4, "weight_decay": 1e-4, "tau": 0.02, "topk": 1, "uniformity_t": 0.1,
                "con_ratio": 0.3, "queue_size": 64, "queue_batches": 10,
                "w_con": 1.0, "w_mu": 1.0, "w_mg": 1.0, "max_grad_norm": 1.0}

    @contextmanager
    def source_weights(self):
        """Temporarily put the source norm parameters back."""
        current = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, p0 in zip(self.params, self._source_params):
                p.copy_(p0)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, c in zip(self.params, current):
                    p.copy_(c)

    def source_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen source model's embeddings of ``x`` (detached). Encoded in the same
        grad-enabled mode as the adapting forward: inference-only fast paths (e.g. fused
        attention) differ numerically, and at the source both must agree so that g_s = 0."""
        with self.source_weights():
            return self.encode(x).detach()

    def flat_grad(self, loss: torch.Tensor, retain_graph: bool = False) -> torch.Tensor:
        grads = torch.autograd.grad(loss, self.params, retain_graph=retain_graph, allow_unused=True)
        return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(self.params, grads)])

    def decoupled_step(self, loss_t: torch.Tensor, loss_s: torch.Tensor) -> tuple[float, float, float, float]:
        """Step with the decoupled adaptation gradient; returns (angle before, angle after,
        ||g_t|| before, ||g_t|| after)."""
        g_t = self.flat_grad(loss_t, retain_graph=True)
        g_s = self.flat_grad(loss_s)
        g, before, after = decouple(g_t, g_s, self.hp["max_grad_norm"])
        self.optimizer.zero_grad(set_to_none=True)
        offset = 0
        for p in self.params:
            p.grad = g[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        self.optimizer.step()
        self.counters["steps"] += 1
        return before, after, float(g_t.norm()), float(g.norm())

    def adapt_batch(self, x: torch.Tensor) -> BatchOutput:
        hp = self.hp
        stats: dict[str, float] = {}
        scores = None
        angles = []
        z_src = self.source_embeddings(x)  # before any forward whose graph the swap would invalidate
        for step in range(self.steps):
            zq, sims, candidates, positives, ent = self.refined_forward(x, step)
            if step == self.steps - 1:
                scores = sims.detach()
            if len(self.queue) == 0:  # nothing source-like yet (a batch smaller than 1/con_ratio)
                self.check_step(None)
                continue
            con = consistency_loss(zq, positives, ent, self.queue.e_max)
            mu = uniformity_loss(zq, hp["uniformity_t"])
            mg = gap_loss(zq, candidates, self.queue.delta_s)
            loss_t = None if con is None else hp["w_con"] * con + hp["w_mu"] * mu + hp["w_mg"] * mg
            loss_s = distillation_loss(zq, z_src)
            if step == 0:
                nan = float("nan")
                stats = {"loss": nan if loss_t is None else loss_t.item(),
                         "loss_con": nan if con is None else con.item(), "loss_mu": mu.item(),
                         "loss_mg": mg.item(), "loss_src": loss_s.item(), "entropy": ent.detach().mean().item(),
                         "n_selected": int((ent.detach() <= self.queue.e_max).sum()),
                         "delta_s": float(self.queue.delta_s), "e_max": float(self.queue.e_max)}
            if self.check_step(loss_t):
                angles.append(self.decoupled_step(loss_t, loss_s))
        stats.update(_mean_angles(angles))
        return BatchOutput(scores, stats)

