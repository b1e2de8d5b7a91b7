"""The interface every test-time adaptation method implements.

A method owns: the trainable parameters of the query tower (the affine weight and bias of
its normalisation layers — everything else frozen, model in eval mode), an optimiser, and
whatever state it keeps across the online stream (queues, EMAs). The gallery embeddings are
fixed; scoring is one matrix product per step.

The per-batch loop lives here, once (:meth:`TTAMethod.adapt_batch`): ``steps`` times, a
forward pass (:meth:`~TTAMethod.forward_step`: scores, the step's loss or whatever the update
needs, diagnostics) then an update (:meth:`~TTAMethod.update_step`: by default one guarded
optimiser step). By protocol the batch's scores come from the forward pass of the *last* step
and its statistics from the *first* (docs/methods.md). A method implements ``forward_step``;
SAR (a SAM step) and REST (decoupled gradients) also override ``update_step``; per-batch state
lives in the dict :meth:`~TTAMethod.begin_batch` returns, per-batch statistics are added by
:meth:`~TTAMethod.batch_stats`. Training-free methods (source, tcr_untrain) take one pass and
override ``adapt_batch`` itself.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import ConfigError
from ..method_catalog import coerce_hparam
from ..models.base import RetrievalModel
from ..registry import Registry
from ..runtime import autocast

METHODS: Registry[type["TTAMethod"]] = Registry("method")
# hparams[PROBE_KEY] = True: measure the gradient angle probe (qshift.tta.probe) at step 0 of each
# batch; an observation, not a hyperparameter (it changes nothing the method computes)
PROBE_KEY = "probe_angle"


def register_method(name: str):
    def deco(cls):
        cls.name = name
        return METHODS.register(name)(cls)

    return deco


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy of softmax(logits) per row (natural log)."""
    logp = logits.log_softmax(dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


@dataclass
class BatchOutput:
    scores: torch.Tensor  # (B, N_gallery) from the last step's forward pass, detached
    stats: dict[str, float] = field(default_factory=dict)  # per-batch diagnostics for logging


class TTAMethod:
    """Base class. Subclasses set ``defaults`` and implement :meth:`forward_step` (and, for a
    custom update, :meth:`update_step`)."""

    name: ClassVar[str] = "base"
    defaults: ClassVar[dict[str, Any]] = {}
    adapts: ClassVar[bool] = True  # False: no parameters train (source, training-free variants)

    def __init__(self, model: RetrievalModel, modality: str, gallery: torch.Tensor, hparams: dict | None = None,
                 steps: int = 3, amp: bool = False):
        hparams = dict(hparams or {})
        self.probe_angle = bool(hparams.pop(PROBE_KEY, False)) and self.adapts
        self._scored: dict[int, torch.Tensor] = {}  # scores' data_ptr -> the embeddings behind them
        self._step_z: torch.Tensor | None = None  # this step's first query embeddings with a graph
        self._angles: list[float] = []
        unknown = sorted(set(hparams or {}) - set(self.defaults))
        if unknown:
            raise ConfigError(f"unknown hyperparameter(s) {', '.join(unknown)} for method {self.name!r}; "
                              f"valid: {', '.join(sorted(self.defaults)) or '(none)'}")
        if steps < 1:
            raise ConfigError(f"adapt.steps must be >= 1, got {steps}")
        self.hp = {**self.defaults, **{k: coerce_hparam(self.name, k, v, self.defaults[k]) for k, v in (hparams or {}).items()}}
        self.model, self.modality, self.steps, self.amp = model, modality, steps, amp
        self.gallery = gallery.to(model.device).float()
        self.counters: Counter[str] = Counter()
        self.n_batches = 0
        self.params: list[nn.Parameter] = self.select_params() if self.adapts else []
        self._source_params = [p.detach().clone() for p in self.params]
        self.optimizer = self.make_optimizer() if self.adapts else None
        self._source_opt_state = copy.deepcopy(self.optimizer.state_dict()) if self.optimizer else None

    # -- parameters ---------------------------------------------------------------------------
    def select_params(self) -> list[nn.Parameter]:
        """The affine weight and bias of the query tower's normalisation layers."""
        params = []
        for _, layer in self.model.norm_layers(self.modality):
            for p in (layer.weight, layer.bias):
                if p is not None:
                    p.requires_grad_(True)
                    params.append(p)
        if not params:
            raise ConfigError(f"model {self.model.name!r} has no normalisation layers to adapt in its "
                              f"{self.modality} tower")
        return params

    def make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.params, lr=self.hp["lr"], weight_decay=self.hp["weight_decay"])

    def restore_source(self) -> None:
        """Put the source parameters and a fresh optimiser state back."""
        with torch.no_grad():
            for p, p0 in zip(self.params, self._source_params):
                p.copy_(p0)
        if self.optimizer is not None:
            self.optimizer.load_state_dict(copy.deepcopy(self._source_opt_state))

    def reset(self) -> None:
        """Model recovery mid-stream (counted); subclasses also clear their own state."""
        self.restore_source()
        self.counters["resets"] += 1

    def close(self) -> None:
        """End of stream: hand the model back exactly as it came (source weights, frozen)."""
        self.restore_source()
        for p in self.params:
            p.requires_grad_(False)
            p.grad = None

    # -- helpers -----------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(self.model.device, self.amp):
            return self.model.encode(self.modality, x)

    def similarities(self, z: torch.Tensor) -> torch.Tensor:
        sims = z @ self.gallery.T  # one matrix product over the whole gallery
        self._scored[sims.data_ptr()] = z.detach()  # for the observation statistics (probe.py)
        if self._step_z is None and z.requires_grad:
            self._step_z = z
        return sims

    def probe(self, g_t: torch.Tensor) -> None:
        """Record the gradient-angle probe once per batch (``probe_angle`` on), from the flattened
        adaptation gradient and this step's embeddings."""
        if self.probe_angle and not self._angles and self._step_z is not None:
            from .probe import general_angle

            self._angles.append(general_angle(g_t, self._step_z, self.gallery, self.params))

    def check_step(self, loss: torch.Tensor | None) -> bool:
        """Whether a step may be taken on ``loss``. ``None`` (empty selection) and non-finite
        losses may not; each refusal is counted. Methods with custom gradient handling call
        this before their own step; :meth:`update` calls it for everyone else."""
        if loss is None:
            self.counters["empty_selection"] += 1
            self.counters["skipped_steps"] += 1
            return False
        if not torch.isfinite(loss):
            self.counters["nonfinite_loss"] += 1
            self.counters["skipped_steps"] += 1
            return False
        return True

    def update(self, loss: torch.Tensor | None) -> bool:
        """One optimiser step on ``loss``; guarded: ``None`` (empty selection) or a non-finite
        loss takes no step and is counted."""
        if not self.check_step(loss):
            self._step_z = None
            return False
        self.optimizer.zero_grad(set_to_none=True)
        if self.probe_angle and not self._angles and self._step_z is not None:
            grads = torch.autograd.grad(loss, self.params, retain_graph=True, allow_unused=True)
            self.probe(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                                  for p, g in zip(self.params, grads)]))
            for p, g in zip(self.params, grads):  # the same gradients loss.backward() would leave
                p.grad = g
        else:
            loss.backward()
        self._step_z = None
        self.optimizer.step()
        self.counters["steps"] += 1
        return True

    # -- the per-batch contract ----------------------------------------------------------------
    def begin_batch(self, x: torch.Tensor) -> dict[str, Any]:
        """Per-batch state shared by this batch's steps (e.g. source embeddings, step records)."""
        return {}

    def forward_step(self, x: torch.Tensor, step: int, batch: dict[str, Any]) -> tuple[torch.Tensor, Any, dict[str, float]]:
        """One forward pass: (full-gallery similarities, what :meth:`update_step` needs — by
        default the loss, ``None`` for an empty selection —, this step's diagnostics)."""
        raise NotImplementedError

    def update_step(self, x: torch.Tensor, objective: Any, batch: dict[str, Any]) -> dict[str, float]:
        """The update after a forward pass; returns diagnostics known only after it."""
        self.update(objective)
        return {}

    def batch_stats(self, stats: dict[str, float], batch: dict[str, Any]) -> dict[str, float]:
        """The batch's statistics: the first step's, plus whatever the batch accumulated."""
        return stats

    def adapt_batch(self, x: torch.Tensor) -> BatchOutput:
        """``steps`` forward passes and updates on one batch; scores from the last forward
        pass, statistics from the first step."""
        batch = self.begin_batch(x)
        stats: dict[str, float] = {}
        scores = None
        for step in range(self.steps):
            sims, objective, step_stats = self.forward_step(x, step, batch)
            if step == self.steps - 1:
                scores = sims.detach()
            after = self.update_step(x, objective, batch)
            if step == 0:
                stats = {**step_stats, **after}
        return BatchOutput(scores, self.batch_stats(stats, batch))

    def __call__(self, x: torch.Tensor) -> BatchOutput:
        from .probe import embedding_stats

        self._scored, self._step_z, self._angles = {}, None, []
        out = self.adapt_batch(x)
        self.n_batches += 1
        z = self._scored.get(out.scores.data_ptr()) if out.scores is not None else None
        if z is not None and len(z) == len(out.scores):
            out.stats.update(embedding_stats(z, out.scores, self.gallery))
        if self.probe_angle:
            out.stats["grad_angle"] = self._angles[0] if self._angles else float("nan")
        self._scored, self._step_z = {}, None
        return out


class GalleryEntropyMethod(TTAMethod):
    """The entropy-style baselines (Tent, EATA, READ, DeYO): each step encodes the batch and
    takes logits ``q G^T / tau`` over the *whole* gallery; subclasses turn them into a loss
    (:meth:`objective`); the loop and the update are the base class's."""

    def objective(self, x: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor | None, dict[str, float]]:
        """(loss or ``None`` for an empty selection, per-step diagnostics) for one forward pass."""
        raise NotImplementedError

    def forward_step(self, x: torch.Tensor, step: int, batch: dict[str, Any]):
        sims = self.similarities(self.encode(x))
        loss, step_stats = self.objective(x, sims / self.hp["tau"])
        return sims, loss, {"loss": float("nan") if loss is None else loss.item(), **step_stats}


def ema(old, new, momentum: float):
    """Exponential moving average ``momentum * old + (1 - momentum) * new``; starts at ``new``."""
    return new if old is None else momentum * old + (1 - momentum) * new


def build_method(name: str, model: RetrievalModel, modality: str, gallery: torch.Tensor,
                 hparams: dict | None = None, steps: int = 3, amp: bool = False) -> TTAMethod:
    return METHODS.get(name)(model, modality, gallery, hparams, steps=steps, amp=amp)

