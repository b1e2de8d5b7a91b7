"""The online query stream: one method over one (direction, corruption, severity) query set.

Queries arrive in a fixed seeded order, in batches; the model is never reset between
batches (continual). Per batch we keep only hit vectors and a few statistics, so memory
does not grow with the stream's length.

A multi-domain query set (:mod:`qshift.streams`) brings its own arrival order when it has
one (sequential streams) and per-query domains: the results then carry each batch's
majority domain (``online.domain``), R@K per domain (``metrics_by_domain``) and the
stream's definition (``stream``).

A run diverges when a batch's scores or the adapted parameters stop being finite: the stream
stops there and the results say ``status: diverged`` (the batch, the queries seen, the
reason) with no R@K, keeping the online curve of the batches before it (:mod:`qshift.results`).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict

import numpy as np
import torch
from .progress import tqdm

from .data.manifest import Split
from .errors import ConfigError
from .evaluation import average_precision, hits_and_ranks
from .gallery import gallery_owner_kind, make_loader, owners_for, query_owner
from .models.base import RetrievalModel
from .runtime import seed_everything
from .outcomes import query_outcomes
from .streams import majority, stream_info
from .tta import build_method


# adapt.order: `seeded` permutes with the run's seed; `reference` is the TCR reference code's
# order, a single-process DistributedSampler(shuffle=True) (seed 0, epoch 0): torch.randperm(n)
# with a torch.Generator seeded 0 + 0, whatever the run's seed
ORDERS = ("seeded", "reference")


def stream_order(n: int, seed: int, kind: str = "seeded") -> np.ndarray:
    if kind == "reference":
        return torch.randperm(n, generator=torch.Generator().manual_seed(0)).numpy()
    if kind != "seeded":
        raise ConfigError(f"adapt.order {kind!r}; valid: {', '.join(ORDERS)}")
    return np.random.default_rng(seed).permutation(n)


def run_stream(model: RetrievalModel, method: str, hparams: dict, direction: str, queries: Split, gallery: dict,
               batch_size: int = 64, steps: int = 3, seed: int = 42, num_workers: int = 0, amp: bool = False,
               progress: bool = True, desc: str = "", order_kind: str = "seeded") -> dict:
    """Adapt-and-score over the stream; returns the metrics/online/counters part of a results file."""
    from .tasks import all_directions, hook
    from .tasks import direction as task_direction

    if direction not in all_directions():
        raise ConfigError(f"direction {direction!r}; valid: {', '.join(all_directions())}")
    ks = task_direction(direction).recall_ks  # i2t/t2i: RECALL_KS (1, 5, 10); cir: (1, 5, 10, 50)
    seed_everything(seed)
    q_mod, _, g_emb, g_owner = owners_for(gallery, direction)
    owner_kind = gallery_owner_kind(gallery)
    if queries.owner_kind != owner_kind:  # e.g. a query set that lost the identities of a ReID manifest
        raise ConfigError(f"queries {queries.manifest} are scored per {queries.owner_kind}, but the gallery per "
                          f"{owner_kind}: rebuild them from the same prepared dataset")
    with_map = owner_kind == "identity"  # ReID: mAP over all relevant gallery items, beside R@K
    ap_sum = 0.0
    owners = torch.as_tensor(query_owner(queries, direction))  # cir: each triplet's target (qshift.cir)
    n = len(owners)
    info = stream_info(queries, direction)
    order = info["order"] if info is not None and info["order"] is not None else stream_order(n, seed, order_kind)
    if len(order) != n:
        raise ConfigError(f"query order has {len(order)} entries for {n} queries")
    q_dom = None if info is None else [info["query_domain"][i] for i in order]  # in arrival order
    dom_hits: dict[str, dict[int, int]] = defaultdict(lambda: {k: 0 for k in ks})
    dom_n: dict[str, int] = defaultdict(int)
    tta = build_method(method, model, q_mod, g_emb, hparams, steps=steps, amp=amp)
    task_scoring = hook(direction, "scoring")  # a benchmark's own rules (CIRR, FashionIQ: qshift.cir.Scoring)
    scoring = None if task_scoring is None else task_scoring(queries, gallery, ks)
    loader = make_loader(model, q_mod, queries, order=order, batch_size=batch_size, num_workers=num_workers,
                         cache=True)

    hits = {k: 0 for k in ks}
    ranks: list[torch.Tensor] = []  # per query, in arrival order (qshift.outcomes)
    online = defaultdict(list)
    done = 0
    diverged = None
    t0 = time.perf_counter()
    try:
        for batch in tqdm(loader, desc=desc or f"{method} {direction}", unit="batch", disable=not progress,
                          leave=False):
            b = len(batch)
            out = tta(batch)
            reason = _nonfinite(out.scores, tta.params)
            if reason is not None:  # NaN scores would still rank (topk): stop, report no R@K
                diverged = {"batch": len(online["batch_size"]), "queries_seen": done + b, "reason": reason}
                break
            idx = order[done:done + b]
            scores = out.scores if scoring is None else scoring.ranked(out.scores, idx)
            h, rank = hits_and_ranks(scores, owners[idx], g_owner, ks)
            if scoring is not None:  # e.g. CIRR's Recall_subset, FashionIQ's R@K per category
                scoring.observe(out.scores, idx, owners[idx], g_owner, h)
            if with_map:
                ap_sum += float(average_precision(out.scores.detach().float(), owners[idx],
                                                  g_owner).sum())
            ranks.append(rank.cpu())
            for k in ks:
                hits[k] += int(h[k].sum())
            if q_dom is not None:
                labels = q_dom[done:done + b]
                hk = {k: h[k].cpu().tolist() for k in ks}  # one device sync per batch
                for i, lab in enumerate(labels):
                    dom_n[lab] += 1
                    for k in ks:
                        dom_hits[lab][k] += int(hk[k][i])
                online["domain"].append(majority(labels, info["domains"]))
            done += b
            online["batch_size"].append(b)
            online["batch_r1"].append(100.0 * int(h[1].sum()) / b)
            online["cum_r1"].append(100.0 * hits[1] / done)
            for key, v in out.stats.items():
                online[f"stats.{key}"].append(v if not (isinstance(v, float) and math.isnan(v)) else None)
    finally:
        tta.close()  # the model leaves the stream as it came in
    seconds = time.perf_counter() - t0
    stats = {k[len("stats."):]: online.pop(k) for k in list(online) if k.startswith("stats.")}
    extra = {}
    if diverged is not None:
        extra = {"stream": {k: info[k] for k in ("name", "kind", "domains")}} if info is not None else {}
        return {
            "status": "diverged", "diverged": diverged, "metrics": None, **extra,
            "n_queries": n, "n_gallery": int(g_emb.shape[0]),
            "online": {"batch_size": [], "batch_r1": [], "cum_r1": [], **online, "stats": stats},  # batch 0: empty
            "counters": dict(tta.counters), "hparams": dict(tta.hp), "steps": steps if tta.adapts else 0,
            "timing": {"seconds": seconds, "queries_per_s": None},
        }
    if info is not None:
        ranked = [d for d in info["domains"] if d in dom_n] + sorted(set(dom_n) - set(info["domains"]))
        extra = {"stream": {k: info[k] for k in ("name", "kind", "domains")},
                 "metrics_by_domain": {d: {**{f"R@{k}": 100.0 * dom_hits[d][k] / dom_n[d] for k in ks},
                                           "n_queries": dom_n[d]} for d in ranked}}
    if scoring is not None:
        extra.update(scoring.extra())
    return {
        "status": "ok",
        "metrics": {**{f"R@{k}": 100.0 * hits[k] / n for k in ks},
                    **({"mAP": 100.0 * ap_sum / n} if with_map else {}),
                    **(scoring.metrics(n) if scoring is not None else {})},
        **extra,
        "n_queries": n,
        "n_gallery": int(g_emb.shape[0]),
        "online": {**online, "stats": stats},
        "counters": dict(tta.counters),
        "hparams": dict(tta.hp),
        "steps": steps if tta.adapts else 0,
        "timing": {"seconds": seconds, "queries_per_s": n / seconds if seconds > 0 else None},
        "outcomes": query_outcomes(queries, direction, order, torch.cat(ranks).numpy() if ranks else [], q_dom),
    }


def _nonfinite(scores: torch.Tensor, params: list) -> str | None:
    """Why a batch diverged ("non-finite scores" / "non-finite parameters"), or None (one sync)."""
    checks = [torch.isfinite(scores).all()] + [torch.isfinite(p.detach()).all() for p in params]
    ok = torch.stack(checks).cpu().tolist()
    if not ok[0]:
        return "non-finite scores"
    if not all(ok[1:]):
        return "non-finite parameters"
    return None
