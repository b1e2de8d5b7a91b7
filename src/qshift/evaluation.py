"""Recall@K for cross-modal retrieval, in both directions.

Every query and every gallery item carries an *owner id*: the image id it belongs to. For
i2t the query is an image and the gallery holds captions (a hit if any of the image's
captions is within the top K); for t2i the query is a caption and the gallery holds images.
Both reduce to: hit@K  <=>  some top-K gallery item has the query's owner id.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .results import RECALL_KS


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
