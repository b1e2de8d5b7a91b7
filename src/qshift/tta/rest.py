"""REST (arXiv 2511.14416) — a DOCUMENTED RECONSTRUCTION: no reference code and no paper body
are available (the abstract, a third-party summary and Fig. 1 are; see the README's method table).

Two registered methods live here:

``rest`` — REST v2, the reconstruction as far as the paper is known
---------------------------------------------------------------------
Per batch, per step (the batch's scores come from the last step's forward, as for TCR):

1. z^Q = enc_Q(queries), S = z^Q G^T. **Candidate sets** (``candidates``, ``topk`` = K):
   - ``per_query`` (default): query i's refined prediction is a softmax over the batch's top-1
     positives {g'(j)} (TCR's pool, duplicates kept) plus its *own* ranks 2..K, i.e. B + K - 1
     logits per row, divided by ``tau``;
   - ``shared``: every query over the union of all queries' top-K (TCR's refinement with K).
   With K = 1 both are exactly TCR's pool. The positive of i is g'(i) (its top-1).
   The source-like queue, Delta_S and E_m are TCR's (tcr.py), filled from these entropies.
2. **QS-robust objective** L_t = w_rem L_REM + w_mu L_MU + w_mg L_MG + w_con L_C:
   - L_REM = TCR's noise-robust entropy (tcr.noise_robust_loss) of the refined predictions —
     the "REM" of the paper's theory (our reading: refined entropy minimisation);
   - L_MU, L_MG = TCR's uniformity and gap (the gap uses the positives' centroid for
     ``per_query``, the pool's for ``shared``: both TCR's zbar^{G'} at K = 1);
   - L_C, ``consistency``: ``cosine`` (default; our reading of Fig. 1(b)'s consistency, a
     query-candidate similarity):
     L_C = -mean_{i: E_i <= E_m} w_i cos(z^Q_i, z^{G'}_i), w_i TCR's noise weights;
     ``rem`` (the other reading: REM is the consistency term, as the paper's summary lists no separate
     entropy term): L_C = L_REM.
   No query passing the E_m filter: no step (counted), as TCR.
3. **General-knowledge gradient** g_s (``general``):
   - ``infonce`` (default): InfoNCE (temperature ``tau_general``) over the source-like queue
     pairs, the stored raw queries re-encoded by the *current* encoder against their stored
     gallery positives (pair i is the positive of row i);
   - ``distill``: mean_i ||z^Q_i - z^src_i||^2 / 2 to the frozen source model's embeddings of the
     batch (zero at the source, so nothing is decoupled until the model has moved).
4. **Decoupling** (``decouple``), on the flattened gradients over the adapted parameters:
   - ``gradient`` (default; the PCGrad-style projection): if g_t . g_s < 0 (angle > 90 deg),
     g_t <- g_t - (g_t . g_s / ||g_s||^2) g_s, then AdamW steps on it;
   - ``update``: AdamW steps on g_t, and its actual update Delta (Adam rescales each coordinate,
     so a projected gradient can still give a conflicting update) is projected instead when
     Delta . g_s > 0 (the step would raise the general-knowledge loss to first order);
   - ``none``: AdamW on g_t.
5. **Strength** (``strength``, acting on the *update*, not the gradient — Adam's step is
   invariant to a uniform rescaling of the gradient, so a gradient-norm clip barely acts):
   ``conflict`` (default): the update is scaled by s = strength_lambda * min(1, 1 + cos(g_t, g_s)),
   cos taken before decoupling: full steps while the gradients agree, shrinking to 0 as they
   oppose (180 deg); ``none``: s = 1 (the plain AdamW step).

Per-batch stats: ``angle_before``/``angle_after`` (degrees between g_t and g_s before/after
decoupling, averaged over the batch's steps where g_s != 0; NaN otherwise), ``n_projected``
(steps with angle > 90), ``step_scale`` (mean s) and the loss terms; ``grad_angle`` when the
observation probe is on (qshift.tta.probe: the same probe gradient as for Tent and TCR).

``rest_v1`` — the first reconstruction, kept so its numbers can be compared
----------------------------------------------------------------------------
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

import torch.nn.functional as F

from ..errors import ConfigError
from .base import entropy, register_method
from .tcr import TCR, SourceLikeQueue, gap_loss, noise_robust_loss, source_likeness, uniformity_loss


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


@register_method("rest_v1")
class RESTv1(TCR):
    """The first REST reconstruction (``rest`` until REST v2): TCR's K=1 pool, no REM term, cosine
    consistency, distillation g_s, gradient projection and a gradient-norm clip before AdamW."""

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

    def step_with_flat_grad(self, g: torch.Tensor) -> None:
        """One optimiser step with ``g`` (all adapted parameters, flattened) as the gradient."""
        self.optimizer.zero_grad(set_to_none=True)
        offset = 0
        for p in self.params:
            p.grad = g[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        self.optimizer.step()
        self.counters["steps"] += 1

    def decoupled_step(self, loss_t: torch.Tensor, loss_s: torch.Tensor) -> tuple[float, float, float, float]:
        """Step with the decoupled adaptation gradient; returns (angle before, angle after,
        ||g_t|| before, ||g_t|| after)."""
        g_t = self.flat_grad(loss_t, retain_graph=True)
        g_s = self.flat_grad(loss_s)
        g, before, after = decouple(g_t, g_s, self.hp["max_grad_norm"])
        self.step_with_flat_grad(g)
        return before, after, float(g_t.norm()), float(g.norm())

    def begin_batch(self, x: torch.Tensor) -> dict:
        # the source embeddings before any forward whose graph the weight swap would invalidate
        return {"z_src": self.source_embeddings(x), "angles": []}

    def forward_step(self, x: torch.Tensor, step: int, batch: dict):
        hp = self.hp
        zq, sims, candidates, positives, ent = self.refined_forward(x, step)
        if len(self.queue) == 0:  # nothing source-like yet (a batch smaller than 1/con_ratio)
            return sims, None, {}
        con = consistency_loss(zq, positives, ent, self.queue.e_max)
        mu = uniformity_loss(zq, hp["uniformity_t"])
        mg = gap_loss(zq, candidates, self.queue.delta_s)
        loss_t = None if con is None else hp["w_con"] * con + hp["w_mu"] * mu + hp["w_mg"] * mg
        loss_s = distillation_loss(zq, batch["z_src"])
        nan = float("nan")
        return sims, (loss_t, loss_s), {
            "loss": nan if loss_t is None else loss_t.item(), "loss_con": nan if con is None else con.item(),
            "loss_mu": mu.item(), "loss_mg": mg.item(), "loss_src": loss_s.item(),
            "entropy": ent.detach().mean().item(), "n_selected": int((ent.detach() <= self.queue.e_max).sum()),
            "delta_s": float(self.queue.delta_s), "e_max": float(self.queue.e_max)}

    def update_step(self, x: torch.Tensor, objective, batch: dict) -> dict[str, float]:
        """The decoupled step (no step, counted, on an empty queue or selection)."""
        loss_t, loss_s = objective if objective is not None else (None, None)
        if self.check_step(loss_t):
            batch["angles"].append(self.decoupled_step(loss_t, loss_s))
        return {}

    def batch_stats(self, stats: dict[str, float], batch: dict) -> dict[str, float]:
        return {**stats, **_mean_angles(batch["angles"])}



# ---------------------------------------------------------------------------------------------
# REST v2
# ---------------------------------------------------------------------------------------------
CANDIDATES = ("per_query", "shared")
CONSISTENCY = ("cosine", "rem")
GENERAL = ("infonce", "distill")
DECOUPLE = ("gradient", "update", "none")
STRENGTH = ("conflict", "none")


def candidate_logits(zq: torch.Tensor, sims: torch.Tensor, gallery: torch.Tensor, k: int, mode: str,
                     tau: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Refined predictions. Returns (logits (B, C) / tau, top-1 positives (B, d), the centroid
    zbar^{G'} the gap term uses). ``per_query``: the batch's top-1 positives plus each query's own
    ranks 2..K (C = B + K - 1); ``shared``: the union of every query's top-K (C = B K). K = 1:
    both are TCR's pool (tcr.refine), bit for bit."""
    idx = sims.detach().topk(k, dim=1).indices  # (B, K)
    positives = gallery[idx[:, 0]]
    if mode == "shared":
        pool = gallery[idx.reshape(-1)]
        return zq @ pool.T / tau, positives, pool.mean(0)
    logits = zq @ positives.T
    if k > 1:
        own = (zq.unsqueeze(1) * gallery[idx[:, 1:]]).sum(dim=-1)  # (B, K-1): query i's own neighbours
        logits = torch.cat([logits, own], dim=1)
    return logits / tau, positives, positives.mean(0)


def cosine_consistency(zq: torch.Tensor, positives: torch.Tensor, ent: torch.Tensor,
                       e_max: torch.Tensor) -> torch.Tensor | None:
    """Consistency as a noise-weighted cosine: -mean_{i: E_i <= E_m} w_i cos(z^Q_i, z^{G'}_i), w_i = max(1 - E_i/(E_m + 1e-3), 0)
    detached; ``None`` when no query passes."""
    mask = ent <= e_max
    if not bool(mask.any()):
        return None
    w = (1 - ent.detach() / (e_max + 1e-3)).clamp_min(0)
    return -(w * F.cosine_similarity(zq, positives, dim=1))[mask].mean()


def infonce_loss(z: torch.Tensor, zg: torch.Tensor, tau: float) -> torch.Tensor:
    """InfoNCE over pairs: row i's positive is zg[i], the other rows' are its negatives."""
    return F.cross_entropy(z @ zg.T / tau, torch.arange(len(z), device=z.device))


def angle(a: torch.Tensor, b: torch.Tensor) -> float:
    """Angle between two flattened gradients in degrees (in float64: acos is ill-conditioned
    near 0 and 180 deg); NaN when either is zero."""
    return _angle(a.double(), b.double())


def project_conflict(g: torch.Tensor, g_s: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """g - (g . g_s / ||g_s||^2) g_s when g . g_s < 0 (angle > 90 deg), else g unchanged."""
    dot = g @ g_s
    if dot < 0:
        return g - dot / (g_s @ g_s) * g_s, True
    return g, False


def strength_scale(cos_ts: float, mode: str, lam: float) -> float:
    """The factor on AdamW's update: ``conflict``: lam * min(1, 1 + cos(g_t, g_s)) (NaN cos: lam);
    ``none``: 1."""
    if mode == "none":
        return 1.0
    if math.isnan(cos_ts):
        return lam
    return lam * min(1.0, 1.0 + cos_ts)


class RawSourceLikeQueue(SourceLikeQueue):
    """TCR's queue, also keeping each pair's raw query (for re-encoding by the current encoder)."""

    def __init__(self, size: int):
        super().__init__(size)
        self.x = None

    def push(self, si, zq, zg, ent, n, x=None) -> None:
        if n <= 0:
            return
        keep = si.topk(min(n, len(si)), largest=False).indices
        new = [t.detach()[keep] for t in (si, zq, zg, ent)] + [x.detach()[keep] if x is not None else None]
        if self.zq is None:
            self.si, self.zq, self.zg, self.ent, self.x = new
        else:
            old = (self.si, self.zq, self.zg, self.ent, self.x)
            self.si, self.zq, self.zg, self.ent, self.x = (
                None if a is None else torch.cat([a, b]) for a, b in zip(old, new))
        if len(self.si) > self.size:
            keep = self.si.topk(self.size, largest=False).indices
            self.si, self.zq, self.zg, self.ent, self.x = (
                None if t is None else t[keep] for t in (self.si, self.zq, self.zg, self.ent, self.x))


@register_method("rest")
class REST(RESTv1):
    """REST v2, a labelled reconstruction: see the module docstring for every choice."""

    defaults = {"lr": 3e-4, "weight_decay": 1e-4, "tau": 0.02, "topk": 1, "candidates": "per_query",
                "uniformity_t": 0.1, "con_ratio": 0.3, "queue_size": 64, "queue_batches": 10,
                "w_rem": 1.0, "w_mu": 1.0, "w_mg": 1.0, "w_con": 1.0, "consistency": "cosine",
                "general": "infonce", "tau_general": 0.02, "decouple": "gradient",
                "strength": "conflict", "strength_lambda": 1.0}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for key, valid in (("candidates", CANDIDATES), ("consistency", CONSISTENCY), ("general", GENERAL),
                           ("decouple", DECOUPLE), ("strength", STRENGTH)):
            if self.hp[key] not in valid:
                raise ConfigError(f"hyperparameter {self.name}.{key} is {self.hp[key]!r}; valid: {', '.join(valid)}")
        if int(self.hp["topk"]) < 1:
            raise ConfigError(f"hyperparameter {self.name}.topk must be >= 1, got {self.hp['topk']!r}")
        self.queue = RawSourceLikeQueue(int(self.hp["queue_size"]))

    def reset(self) -> None:
        super().reset()
        self.queue = RawSourceLikeQueue(int(self.hp["queue_size"]))

    def refined_forward(self, x: torch.Tensor, step: int):
        """Encode, refine into per-query candidate sets, entropies, and (step 0 of the first
        ``queue_batches`` batches) the source-like queue update (with the raw queries).
        Returns (z^Q, similarities, logits, positives, zbar^{G'}, entropies)."""
        hp = self.hp
        zq = self.encode(x)
        sims = self.similarities(zq)
        logits, positives, centroid = candidate_logits(zq, sims, self.gallery, int(hp["topk"]),
                                                       hp["candidates"], hp["tau"])
        ent = entropy(logits)
        if step == 0 and self.n_batches < hp["queue_batches"]:
            n_push = int(hp["con_ratio"] * len(zq))
            self.queue.push(source_likeness(zq.detach(), positives), zq, positives, ent, n_push,
                            x.to(zq.device) if hp["general"] == "infonce" else None)
        return zq, sims, logits, positives, centroid, ent

    def objective(self, zq, positives, centroid, ent) -> dict[str, torch.Tensor | None]:
        """The QS-robust terms on one forward pass (``rem`` None: empty selection)."""
        hp, q = self.hp, self.queue
        rem = noise_robust_loss(ent, q.e_max)
        con = rem if hp["consistency"] == "rem" else cosine_consistency(zq, positives, ent, q.e_max)
        parts = {"rem": rem, "mu": uniformity_loss(zq, hp["uniformity_t"]),
                 "mg": gap_loss(zq, centroid.unsqueeze(0), q.delta_s), "con": con}
        if rem is None:
            parts["total"] = None
        else:
            parts["total"] = (hp["w_rem"] * rem + hp["w_mu"] * parts["mu"] + hp["w_mg"] * parts["mg"]
                              + hp["w_con"] * con)
        return parts

    def general_loss(self, zq: torch.Tensor, z_src: torch.Tensor | None) -> torch.Tensor:
        if self.hp["general"] == "distill":
            return distillation_loss(zq, z_src)
        return infonce_loss(self.encode(self.queue.x), self.queue.zg, self.hp["tau_general"])

    def _flat_params(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.params])

    def _set_params(self, flat: torch.Tensor) -> None:
        offset = 0
        with torch.no_grad():
            for p in self.params:
                p.copy_(flat[offset:offset + p.numel()].view_as(p))
                offset += p.numel()

    def rest_step(self, g_t: torch.Tensor, g_s: torch.Tensor) -> dict[str, float]:
        """One AdamW step with decoupling (of the gradient, or of AdamW's update) and the
        strength factor on the update. Returns the step's diagnostics."""
        hp = self.hp
        before = angle(g_t, g_s)
        cos_ts = math.cos(math.radians(before)) if not math.isnan(before) else float("nan")
        g, projected = project_conflict(g_t, g_s) if hp["decouple"] == "gradient" else (g_t, False)
        scale = strength_scale(cos_ts, hp["strength"], float(hp["strength_lambda"]))
        theta0 = self._flat_params()
        self.step_with_flat_grad(g)
        after = angle(g, g_s)
        if hp["decouple"] == "update" or scale != 1.0:
            delta = self._flat_params() - theta0
            if hp["decouple"] == "update":
                # the step changes L_s by ~ g_s . delta: remove the part that raises it
                delta, projected = project_conflict(delta, -g_s)
                after = angle(-delta, g_s)  # the update as a descent direction
            self._set_params(theta0 + scale * delta)
        return {"before": before, "after": after, "scale": scale, "projected": float(projected)}

    def begin_batch(self, x: torch.Tensor) -> dict:
        return {"z_src": self.source_embeddings(x) if self.hp["general"] == "distill" else None, "steps": []}

    def forward_step(self, x: torch.Tensor, step: int, batch: dict):
        self._step_z = None  # the angle probe (qshift.tta.probe) reads this step's embeddings
        zq, sims, logits, positives, centroid, ent = self.refined_forward(x, step)
        if len(self.queue) == 0:  # nothing source-like yet (a batch smaller than 1/con_ratio)
            return sims, None, {}
        parts = self.objective(zq, positives, centroid, ent)
        nan = float("nan")
        return sims, (zq, parts["total"]), {
            **{f"loss_{k}" if k != "total" else "loss": nan if v is None else v.item() for k, v in parts.items()},
            "entropy": ent.detach().mean().item(), "n_selected": int((ent.detach() <= self.queue.e_max).sum()),
            "delta_s": float(self.queue.delta_s), "e_max": float(self.queue.e_max)}

    def update_step(self, x: torch.Tensor, objective, batch: dict) -> dict[str, float]:
        """g_t from the QS-robust loss, g_s from the general loss, one REST step."""
        zq, total = objective if objective is not None else (None, None)
        if not self.check_step(total):
            return {}
        g_t = self.flat_grad(total, retain_graph=True)
        self.probe(g_t)
        loss_s = self.general_loss(zq, batch["z_src"])
        g_s = self.flat_grad(loss_s)
        batch["steps"].append(self.rest_step(g_t, g_s))
        return {"loss_general": loss_s.item()}

    def batch_stats(self, stats: dict[str, float], batch: dict) -> dict[str, float]:
        return {**stats, **_step_stats(batch["steps"])}


def _step_stats(steps: list[dict[str, float]]) -> dict[str, float]:
    def nanmean(values):
        values = [v for v in values if not math.isnan(v)]
        return sum(values) / len(values) if values else float("nan")

    return {"angle_before": nanmean([s["before"] for s in steps]),
            "angle_after": nanmean([s["after"] for s in steps]),
            "n_projected": int(sum(s["projected"] for s in steps)),
            "step_scale": nanmean([s["scale"] for s in steps])}
