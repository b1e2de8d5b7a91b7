"""Observation probes computed while a method adapts (they never change what it computes).

- :func:`embedding_stats`: per batch, on the query embeddings that produced the batch's scores
  (after adaptation, by protocol the last step's forward): query uniformity, query-gallery gap
  and query-gallery consistency (QShift's definitions, see qshift.observations).
- :func:`general_angle`: the angle between a method's adaptation gradient g_t and a
  general-knowledge gradient g_s, measured at step 0 of a batch. QShift's probe g_s (REST's is
  not published): the gradient of an InfoNCE loss (tau 0.02) over the batch's source-like pairs
  (z^Q_i, g'(i)) — TCR's selection, the int(0.3 B) smallest SI_i, g'(i) the top-1 gallery
  item, one pair per distinct g'(i) — on the *current* embeddings. It needs no extra forward pass, and is non-zero at the
  source model (unlike a distillation gradient).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

PROBE_TAU = 0.02
PROBE_RATIO = 0.3


@torch.no_grad()
def embedding_stats(z: torch.Tensor, scores: torch.Tensor, gallery: torch.Tensor) -> dict[str, float]:
    """obs_uniformity = mean_i ||z_i - zbar||; obs_gap = ||zbar - mean_i g'(i)|| with g'(i) the top-1
    gallery item of the scores; obs_consistency = mean_i cos(z_i, g'(i))."""
    z = z.float()
    positives = gallery[scores.argmax(dim=1)].float()
    zbar = z.mean(0)
    return {"obs_uniformity": float((z - zbar).norm(dim=1).mean()),
            "obs_gap": float((zbar - positives.mean(0)).norm()),
            "obs_consistency": float(F.cosine_similarity(z, positives, dim=1).mean())}


def general_angle(g_t: torch.Tensor, z: torch.Tensor, gallery: torch.Tensor, params: list) -> float:
    """Angle (degrees) between the flattened adaptation gradient ``g_t`` and the probe's
    general-knowledge gradient on the current batch embeddings ``z`` (with their graph; the graph
    is retained). NaN when fewer than 2 pairs are source-like or either gradient is zero."""
    from .tcr import source_likeness

    n = int(PROBE_RATIO * len(z))
    if n < 2:
        return float("nan")
    zd = z.detach().float()
    top1 = (zd @ gallery.T).argmax(dim=1)
    positives = gallery[top1].float()
    sel = source_likeness(zd, positives).topk(n, largest=False).indices
    # one pair per gallery item (the most source-like): a shared positive would make two rows'
    # InfoNCE terms cancel
    seen: set[int] = set()
    sel = torch.stack([i for i in sel if not (int(top1[i]) in seen or seen.add(int(top1[i])))])
    n = len(sel)
    if n < 2:
        return float("nan")
    logits = z[sel].float() @ positives[sel].T / PROBE_TAU
    loss = F.cross_entropy(logits, torch.arange(n, device=z.device))
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    g_s = torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)])
    a, b = g_t.double(), g_s.double()
    denom = a.norm() * b.norm()
    if denom == 0:
        return float("nan")
    return math.degrees(math.acos(max(-1.0, min(1.0, float(a @ b / denom)))))
