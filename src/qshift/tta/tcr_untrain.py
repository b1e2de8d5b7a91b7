"""TCR's training-free variant ("tcr_untrain", docs/methods.md): no gradients, one pass per batch.

z^Q = enc_Q(queries); G' = the refined candidates (TCR's top-K refinement); then

    z <- zbar^Q + scale * (z - zbar^Q)                         (scale = 2: spread the queries)
    z <- z + (1 - Delta_S / Delta_T) (zbar^{G'} - zbar^Q)      (shift: the gap becomes Delta_S)
    scores = normalise(z) @ G^T

Delta_S comes from TCR's source-like queue (filled the same way, during the first
``queue_batches`` batches, then frozen); Delta_T = ||zbar^Q - zbar^{G'}|| on the current batch.
While the queue is empty (batches smaller than 1/con_ratio), or when Delta_T = 0, the shift
is skipped and only the scaling applies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import BatchOutput, register_method
from .tcr import TCR, refine, source_likeness


def scale_and_shift(zq: torch.Tensor, zg_bar: torch.Tensor, delta_s: torch.Tensor | None,
                    scale: float) -> torch.Tensor:
    """The unnormalised training-free update of the query embeddings (see the module doc)."""
    zq_bar = zq.mean(0)
    z = zq_bar + scale * (zq - zq_bar)
    delta_t = (zq_bar - zg_bar).norm()
    if delta_s is None or delta_t == 0:
        return z
    return z + (1 - delta_s / delta_t) * (zg_bar - zq_bar)


@register_method("tcr_untrain")
class TCRUntrain(TCR):
    """Reuses TCR's source-like queue (and its reset); nothing trains."""

    defaults = {"topk": 1, "con_ratio": 0.3, "queue_size": 64, "queue_batches": 10, "scale": 2.0}
    adapts = False

    @torch.no_grad()
    def adapt_batch(self, x: torch.Tensor) -> BatchOutput:
        hp = self.hp
        zq = self.encode(x)
        candidates, positives = refine(self.similarities(zq), self.gallery, int(hp["topk"]))
        if self.n_batches < hp["queue_batches"]:
            # the entropy slot of the queue is unused here (no noise-robust loss)
            self.queue.push(source_likeness(zq, positives), zq, positives, zq.new_zeros(len(zq)),
                            int(hp["con_ratio"] * len(zq)))
        delta_s = self.queue.delta_s if len(self.queue) else None
        zg_bar = candidates.mean(0)
        z = F.normalize(scale_and_shift(zq, zg_bar, delta_s, hp["scale"]), dim=-1)
        return BatchOutput(self.similarities(z), {
            "delta_s": float("nan") if delta_s is None else float(delta_s),
            "delta_t": float((zq.mean(0) - zg_bar).norm())})
