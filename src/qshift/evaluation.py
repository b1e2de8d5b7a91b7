"""Recall@K for cross-modal retrieval, in both directions.

Every query and every gallery item carries an *owner id*: the image id it belongs to. For
i2t the query is an image and the gallery holds captions (a hit if any of the image's
captions is within the top K); for t2i the query is a caption and the gallery holds images.
Both reduce to: hit@K  <=>  some top-K gallery item has the query's owner id.

The owner is the image (``owner: image``, every dataset's default: COCO, Flickr30k, NoCaps,
Fashion-Gen, remote sensing). Person re-identification benchmarks (CUHK-PEDES, ICFG-PEDES)
evaluate at the *identity* level (``owner: identity``, set by the dataset's manifest): the
owner id of an image and of its captions is the person's identity, so a t2i query hits if any
gallery image of the same person is ranked within K, and several gallery items are relevant
to each query. ReID papers report mAP beside R@K: :func:`average_precision` is computed over
*all* relevant gallery items of a query. With image owners the same code gives the same
numbers as before (one relevant image per caption; R@K is unchanged by construction).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .results import RECALL_KS

# what a query's owner id names: the image (default) or the person identity (ReID benchmarks)
OWNERS = ("image", "identity")


def topk_hits(scores: torch.Tensor, query_owner: torch.Tensor, gallery_owner: torch.Tensor,
              ks: Sequence[int] = RECALL_KS) -> dict[int, torch.Tensor]:
    """Boolean hit vectors (B,) per K from a (B, N) score matrix."""
    kmax = min(max(ks), scores.shape[1])
    top = scores.topk(kmax, dim=1).indices  # (B, kmax)
    match = gallery_owner.to(top.device)[top] == query_owner.to(top.device)[:, None]
    return {k: match[:, :k].any(1) for k in ks}


def hits_and_ranks(scores: torch.Tensor, query_owner: torch.Tensor, gallery_owner: torch.Tensor,
                   ks: Sequence[int] = RECALL_KS) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """:func:`topk_hits` plus each query's 0-based rank of its first correct gallery item.

    The hits are exactly :func:`topk_hits`'s (the same top-K); a rank below ``max(ks)`` is the
    position of the first match in that top-K, so ``rank < K`` reproduces hit@K bit for bit
    (ties included). Beyond it, the rank counts the gallery items scoring strictly above the
    best correct one (at least ``max(ks)``); a query with no correct item in the gallery gets
    the gallery size.
    """
    kmax = min(max(ks), scores.shape[1])
    top = scores.topk(kmax, dim=1).indices  # (B, kmax)
    g_owner, q_owner = gallery_owner.to(top.device), query_owner.to(top.device)
    match = g_owner[top] == q_owner[:, None]
    hits = {k: match[:, :k].any(1) for k in ks}
    correct = g_owner[None, :] == q_owner[:, None]  # (B, N)
    best = scores.masked_fill(~correct, float("-inf")).max(1).values
    beyond = (scores > best[:, None]).sum(1).clamp(min=kmax)
    found = match.any(1)
    rank = torch.where(found, match.int().argmax(1), beyond)
    return hits, rank


def recall_at_k(scores: torch.Tensor | np.ndarray, query_owner, gallery_owner,
                ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
    """Recall@K in percent for a full (N_query, N_gallery) score matrix."""
    scores = torch.as_tensor(scores)
    hits = topk_hits(scores, torch.as_tensor(np.asarray(query_owner)), torch.as_tensor(np.asarray(gallery_owner)), ks)
    return {f"R@{k}": 100.0 * int(h.sum()) / len(h) for k, h in hits.items()}


def average_precision(scores: torch.Tensor, query_owner: torch.Tensor, gallery_owner: torch.Tensor) -> torch.Tensor:
    """Each query's average precision (0..1) over *all* its relevant gallery items.

    AP = mean over the relevant items r of (relevant items ranked at or above r) / (rank of r,
    1-based), the ReID papers' mAP definition. Ties are ranked by a stable sort of the scores
    (descending), so the result is deterministic. A query with no relevant item gets 0.
    """
    g_owner, q_owner = gallery_owner.to(scores.device), query_owner.to(scores.device)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices  # (B, N)
    rel = (g_owner[order] == q_owner[:, None]).to(torch.float64)
    positions = torch.arange(1, scores.shape[1] + 1, device=scores.device, dtype=torch.float64)
    precision = rel.cumsum(1) / positions
    n_rel = rel.sum(1)
    return torch.where(n_rel > 0, (precision * rel).sum(1) / n_rel.clamp(min=1), torch.zeros_like(n_rel))


def retrieval_metrics(scores: torch.Tensor | np.ndarray, query_owner, gallery_owner,
                      ks: Sequence[int] = RECALL_KS, with_map: bool = False) -> dict[str, float]:
    """:func:`recall_at_k` plus, with ``with_map``, ``mAP`` (percent) over all relevant items."""
    out = recall_at_k(scores, query_owner, gallery_owner, ks)
    if with_map:
        ap = average_precision(torch.as_tensor(scores), torch.as_tensor(np.asarray(query_owner)),
                               torch.as_tensor(np.asarray(gallery_owner)))
        out["mAP"] = 100.0 * float(ap.mean())
    return out
