"""SAR: sharpness-aware, reliable entropy minimisation with model recovery (docs/methods.md).

Per step, on logits q G^T / tau over the whole gallery (SAM with rho over AdamW):

1. First pass: entropies E; keep E_i <= thr, thr = the k-th smallest entropy, k = int(select_ratio * B).
   Loss = mean kept E; its gradient g gives the SAM perturbation e = rho * g / ||g|| (one norm
   over all adapted parameters, as SAM's ``first_step``).
2. Second pass at params + e: entropies E' of the samples kept in pass 1; keep E'_i < thr
   (strictly below the same threshold, as SAR's reference code). Restore the params exactly,
   then AdamW steps with the gradient of this second-pass loss.
3. Model recovery: after every step ema = ema_momentum * ema + (1 - ema_momentum) * loss2
   (first value: loss2 itself). When ema < reset_threshold the model, optimiser and ema are
   reset to the source (``self.reset()``, counted in ``counters["resets"]``).

Either pass with an empty selection or a non-finite loss takes no step (counted like
:meth:`TTAMethod.update`); the perturbation is always undone.
"""

from __future__ import annotations

import torch

from .base import TTAMethod, ema, entropy, register_method


def sar_select(ent: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask of E_i <= thr, thr) with thr the k-th smallest entropy, k = int(ratio * B);
    k < 1 selects nothing (thr = -inf)."""
    k = int(ratio * len(ent))
    if k < 1:
        return torch.zeros_like(ent, dtype=torch.bool), ent.new_tensor(float("-inf"))
    thr = ent.kthvalue(k).values
    return ent <= thr, thr


@register_method("sar")
class SAR(TTAMethod):
    defaults = {"lr": 3e-4, "weight_decay": 1e-4, "tau": 0.01, "select_ratio": 0.4, "rho": 0.05,
                "reset_threshold": 0.2, "ema_momentum": 0.9}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_ema: float | None = None

    def reset(self) -> None:
        super().reset()
        self.loss_ema = None

    def entropies(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(similarities, entropies of softmax(sims / tau)) for one forward pass."""
        sims = self.similarities(self.encode(x))
        return sims, entropy(sims / self.hp["tau"])

    @torch.no_grad()
    def perturb(self) -> list[torch.Tensor]:
        """Move the params to the SAM ascent point; returns their current values for restoring."""
        backup = [p.detach().clone() for p in self.params]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        scale = self.hp["rho"] / (torch.stack([g.norm() for g in grads]).norm() + 1e-12)
        for p, g in zip(self.params, grads):
            p.add_(g * scale)
        return backup

    @torch.no_grad()
    def restore(self, backup: list[torch.Tensor]) -> None:
        for p, b in zip(self.params, backup):
            p.copy_(b)

    def sam_step(self, x: torch.Tensor, ent: torch.Tensor, keep: torch.Tensor,
                 thr: torch.Tensor) -> tuple[float | None, float | None]:
        """One SAM step from the first pass's entropies and selection. Returns the (first,
        second)-pass losses; the second is ``None`` when no step was taken."""
        loss = ent[keep].mean() if bool(keep.any()) else None
        if not self.check_step(loss):
            return None if loss is None else loss.item(), None
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        backup = self.perturb()
        ent2 = self.entropies(x)[1][keep]
        keep2 = ent2.detach() < thr
        loss2 = ent2[keep2].mean() if bool(keep2.any()) else None
        self.optimizer.zero_grad(set_to_none=True)
        if loss2 is not None:
            loss2.backward()  # the gradient at the perturbed point...
        self.restore(backup)  # ...applied at the original one
        if not self.check_step(loss2):
            return loss.item(), None
        self.optimizer.step()
        self.counters["steps"] += 1
        return loss.item(), loss2.item()

    def begin_batch(self, x: torch.Tensor) -> dict:
        return {"resets": 0}

    def forward_step(self, x: torch.Tensor, step: int, batch: dict):
        sims, ent = self.entropies(x)
        keep, thr = sar_select(ent.detach(), self.hp["select_ratio"])
        return sims, (ent, keep, thr), {"entropy": ent.detach().mean().item(), "n_selected": int(keep.sum())}

    def update_step(self, x: torch.Tensor, objective, batch: dict) -> dict[str, float]:
        """A SAM step, then the loss EMA and (below ``reset_threshold``) a model reset."""
        hp = self.hp
        loss, loss2 = self.sam_step(x, *objective)
        if loss2 is not None:
            self.loss_ema = ema(self.loss_ema, loss2, hp["ema_momentum"])
            if self.loss_ema < hp["reset_threshold"]:
                self.reset()
                batch["resets"] += 1
        nan = float("nan")
        return {"loss": nan if loss is None else loss, "loss_second": nan if loss2 is None else loss2}

    def batch_stats(self, stats: dict[str, float], batch: dict) -> dict[str, float]:
        return {**stats, "resets": batch["resets"], "loss_ema": float("nan") if self.loss_ema is None else self.loss_ema}
