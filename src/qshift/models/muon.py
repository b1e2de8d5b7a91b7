"""Muon — momentum orthogonalised by a Newton–Schulz iteration — with the iteration's precision
a parameter (``pretrain.muon_precision``).

The update is torch.optim.Muon's (Nesterov momentum 0.95, five quintic Newton–Schulz steps with
Keller Jordan's coefficients, the step's RMS matched to AdamW's, decoupled weight decay; K.
Jordan et al., "Muon: An optimizer for hidden layers in neural networks", 2024). torch runs the
iteration in bfloat16, which is free on a GPU or a CPU with bf16 matrix units (AMX) but a trap on
one without them: on a 2-core AVX2-only AMD EPYC the bf16 matmuls took 0.86 s of the built-in
CLIP's 1.08 s training step, where the same iteration in float32 makes the step 0.30 s (the
float32 matmuls of the forward and backward pass run at 100-150 GFLOP/s there, the bf16 ones in
a slow fallback). ``precision="fp32"`` (params.yaml's) runs it in float32 — the same
algorithm, with less rounding, so a different trained model from bf16's; ``"bf16"`` is
torch.optim.Muon bit for bit (``tests/test_pretrain.py`` checks both). Small named helpers, one
parameter at a time, as torch's single-tensor path does.
"""

from __future__ import annotations

import math

import torch

# the quintic iteration's coefficients (Keller Jordan's; torch.optim.Muon's defaults)
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
EPS = 1e-7
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
DEFAULT_PRECISION = "fp32"  # a recipe without `pretrain.muon_precision` (params.yaml sets it)


def orthogonalise(update: torch.Tensor, dtype: torch.dtype, steps: int = NS_STEPS,
                  coefficients: tuple[float, float, float] = NS_COEFFICIENTS, eps: float = EPS) -> torch.Tensor:
    """~U V^T of ``update`` = U S V^T by ``steps`` quintic Newton–Schulz iterations in ``dtype``
    (the singular values land near 1, not on it: what Muon wants, not an exact polar factor)."""
    a, b, c = coefficients
    x = update.to(dtype)
    tall = update.size(0) > update.size(1)
    if tall:
        x = x.T
    x.div_(x.norm().clamp(min=eps))  # spectral norm <= Frobenius norm = 1
    for _ in range(steps):
        gram = x @ x.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, poly, x, beta=a)
    return x.T if tall else x


def rms_matched_lr(lr: float, shape: torch.Size) -> float:
    """The step size that gives an orthogonalised update AdamW's RMS (~0.2), so Muon and AdamW
    share one ``lr`` and one schedule (torch's ``adjust_lr_fn="match_rms_adamw"``)."""
    return lr * 0.2 * math.sqrt(max(shape[0], shape[1]))


def nesterov_update(grad: torch.Tensor, buf: torch.Tensor, momentum: float) -> torch.Tensor:
    """Advance the momentum buffer in place; return the Nesterov look-ahead."""
    buf.lerp_(grad, 1 - momentum)
    return grad.lerp(buf, momentum)


class Muon(torch.optim.Optimizer):
    """Muon over 2-D parameters, the Newton–Schulz iteration in ``precision`` (fp32 | bf16)."""

    def __init__(self, params, lr: float, weight_decay: float = 0.1, momentum: float = 0.95,
                 precision: str = DEFAULT_PRECISION):
        if precision not in PRECISIONS:
            raise ValueError(f"Muon precision {precision!r}; valid: {', '.join(PRECISIONS)}")
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "momentum": momentum,
                                  "precision": precision})
        for group in self.param_groups:
            if any(p.ndim != 2 for p in group["params"]):
                raise ValueError("Muon updates 2-D weight matrices only")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, dtype = group["lr"], PRECISIONS[group["precision"]]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
                update = orthogonalise(nesterov_update(p.grad, state["momentum_buffer"], group["momentum"]), dtype)
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update, alpha=-rms_matched_lr(lr, p.shape))
        return loss
