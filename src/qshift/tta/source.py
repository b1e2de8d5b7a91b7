"""Source: no adaptation. Encode the query, rank the gallery by cosine similarity."""

from __future__ import annotations

import torch

from .base import BatchOutput, TTAMethod, register_method


@register_method("source")
class Source(TTAMethod):
    defaults = {}
    adapts = False

    @torch.no_grad()
    def adapt_batch(self, x: torch.Tensor) -> BatchOutput:
        return BatchOutput(self.similarities(self.encode(x)))
