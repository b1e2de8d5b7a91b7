"""REST v2 (a labelled reconstruction, src/qshift/tta/rest.py) on hand-made tensors and a toy model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from _tiny import EMB_DIM, IN_DIM, TinyDual, one_torch_thread
from qshift.errors import ConfigError
from qshift.tta import build_method
from qshift.tta.base import entropy
from qshift.tta.rest import (angle, candidate_logits, cosine_consistency, infonce_loss, project_conflict,
                             strength_scale)
from qshift.tta.tcr import noise_robust_loss, refine

_one_thread = pytest.fixture(autouse=True, scope="module")(one_torch_thread)


def _unit_rows(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def _queries(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, IN_DIM, generator=torch.Generator().manual_seed(seed))


def _rest(model, gallery, steps=3, **hp):
    return build_method("rest", model, "image", gallery, hp, steps=steps)


# -- refinement ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["per_query", "shared"])
def test_k1_candidates_are_exactly_todays_pool(mode):
    zq, gallery = _unit_rows(10, EMB_DIM, 0), _unit_rows(4, EMB_DIM, 1)  # 4 items: duplicates
    sims = zq @ gallery.T
    logits, positives, centroid = candidate_logits(zq, sims, gallery, 1, mode, 0.02)
    pool, pos = refine(sims, gallery, 1)  # TCR's refinement (today's pool)
    assert torch.equal(logits, zq @ pool.T / 0.02)
    assert torch.equal(positives, pos) and torch.equal(centroid, pool.mean(0))
    assert torch.equal(entropy(logits), entropy(zq @ pool.T / 0.02))


def test_per_query_candidates_add_each_querys_own_neighbours():
    zq, gallery = _unit_rows(5, EMB_DIM, 0), _unit_rows(9, EMB_DIM, 1)
    sims = zq @ gallery.T
    logits, positives, _ = candidate_logits(zq, sims, gallery, 3, "per_query", 1.0)
    assert logits.shape == (5, 5 + 2)
    ranked = sims.argsort(dim=1, descending=True)
    assert torch.allclose(logits[:, :5], zq @ gallery[ranked[:, 0]].T)  # the batch's positives
    for i in range(5):  # then query i's own 2nd and 3rd neighbours
        assert torch.allclose(logits[i, 5:], sims[i, ranked[i, 1:3]])
    shared, _, _ = candidate_logits(zq, sims, gallery, 3, "shared", 1.0)
    assert shared.shape == (5, 15)


# -- the objective ------------------------------------------------------------------------------
def test_rem_term_equals_tcrs_noise_robust_loss_on_the_same_tensors():
    model, gallery = TinyDual(seed=0), _unit_rows(6, EMB_DIM, 1)
    x = _queries(20, seed=2)
    rest, tcr = _rest(model, gallery, steps=1), build_method("tcr", TinyDual(seed=0), "image", gallery, steps=1)
    zq, _, logits, positives, centroid, ent = rest.refined_forward(x, 0)
    zq_t, _, candidates, _, ent_t = tcr.refined_forward(x, 0)
    parts = rest.objective(zq, positives, centroid, ent)
    tcr_parts = tcr.losses(zq_t, candidates, ent_t)
    assert parts["rem"].item() == tcr_parts["na"].item() > 0
    assert parts["rem"].item() == noise_robust_loss(ent, rest.queue.e_max).item()
    assert parts["mu"].item() == tcr_parts["mu"].item() and parts["mg"].item() == tcr_parts["mg"].item()
    rem_consistency = _rest(TinyDual(seed=0), gallery, steps=1, consistency="rem")
    zq, _, _, positives, centroid, ent = rem_consistency.refined_forward(x, 0)
    assert rem_consistency.objective(zq, positives, centroid, ent)["con"].item() == parts["rem"].item()


def test_cosine_consistency_hand_made():
    zq = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    pos = torch.tensor([[0.6, 0.8], [0.0, 1.0], [1.0, 0.0]])
    ent = torch.tensor([0.5, 0.2, 2.0])  # E_m = 1: the third query fails the filter
    w = [1 - 0.5 / 1.001, 1 - 0.2 / 1.001]
    expected = -(w[0] * 0.6 + w[1] * 1.0) / 2
    assert float(cosine_consistency(zq, pos, ent, torch.tensor(1.0))) == pytest.approx(expected, rel=1e-6)
    assert cosine_consistency(zq, pos, ent, torch.tensor(0.1)) is None


def test_infonce_hand_made():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    expected = -math.log(math.exp(1 / 0.5) / (math.exp(1 / 0.5) + 1))
    assert float(infonce_loss(z, z, 0.5)) == pytest.approx(expected, rel=1e-6)


def test_rest_without_rem_free_extras_reduces_to_tcr_exactly():
    """No consistency, no decoupling, no strength: REST v2 is TCR (REM = L_NA, same pool)."""
    gallery = _unit_rows(12, EMB_DIM, 1)
    m_rest, m_tcr = TinyDual(seed=0), TinyDual(seed=0)
    rest = _rest(m_rest, gallery, lr=1e-2, w_con=0.0, decouple="none", strength="none", general="distill")
    tcr = build_method("tcr", m_tcr, "image", gallery, {"lr": 1e-2}, steps=3)
    for k in range(4):
        x = _queries(16, seed=30 + k)
        a, b = rest(x), tcr(x)
        assert torch.equal(a.scores, b.scores)
        assert a.stats["loss_rem"] == b.stats["loss_na"]
    assert all(torch.equal(p, q) for p, q in zip(rest.params, tcr.params))
    assert rest.counters["steps"] == 12
    # and the default REST v2 does move differently
    m_v2 = TinyDual(seed=0)
    v2 = _rest(m_v2, gallery, lr=1e-2)
    for k in range(4):
        v2(_queries(16, seed=30 + k))
    assert not all(torch.equal(p, q) for p, q in zip(v2.params, tcr.params))


# -- decoupling and strength --------------------------------------------------------------------
def test_angle_is_180_for_opposite_gradients_and_90_after_projection():
    g_s = torch.tensor([1.0, 2.0, -0.5])
    assert angle(-3 * g_s, g_s) == pytest.approx(180.0, abs=1e-3)
    g_t = torch.tensor([-1.0, 0.5, 2.0]) - 2 * g_s  # conflicting, not parallel
    assert angle(g_t, g_s) > 90
    projected, did = project_conflict(g_t, g_s)
    assert did and angle(projected, g_s) == pytest.approx(90.0, abs=1e-4)
    same, did = project_conflict(-g_t, g_s)  # agreeing gradients are left alone
    assert not did and torch.equal(same, -g_t)


def test_adamw_ignores_a_gradient_norm_clip_but_not_the_strength_control():
    def adam_step(grad: torch.Tensor) -> torch.Tensor:
        p = torch.nn.Parameter(torch.tensor([0.5, -1.0, 2.0]))
        opt = torch.optim.AdamW([p], lr=1e-2, weight_decay=1e-4)
        p.grad = grad.clone()
        opt.step()
        return p.detach() - torch.tensor([0.5, -1.0, 2.0])

    g = torch.tensor([3.0, -4.0, 12.0])
    clipped = g * (1.0 / g.norm())  # a norm clip to 1.0 (what rest_v1 does)
    # Adam's first step is lr * sign-like m/sqrt(v): a uniform rescale of the gradient does not change it
    torch.testing.assert_close(adam_step(g), adam_step(clipped), rtol=1e-5, atol=1e-8)

    # REST v2's strength control acts on the update: at cos(g_t, g_s) = -0.5 the step halves
    def rest_update(strength: str, g_t: torch.Tensor, g_s: torch.Tensor) -> torch.Tensor:
        tta = _rest(TinyDual(seed=0), _unit_rows(6, EMB_DIM, 1), lr=1e-2, strength=strength, decouple="none")
        theta0 = tta._flat_params()
        info = tta.rest_step(g_t, g_s)
        return tta._flat_params() - theta0, info

    n = sum(p.numel() for p in _rest(TinyDual(seed=0), _unit_rows(6, EMB_DIM, 1)).params)
    g_s = torch.zeros(n)
    g_s[0] = 1.0
    g_t = torch.zeros(n)
    g_t[0], g_t[1] = -1.0, math.sqrt(3.0)  # 120 degrees from g_s
    plain, info_plain = rest_update("none", g_t, g_s)
    scaled, info = rest_update("conflict", g_t, g_s)
    assert info["before"] == pytest.approx(120.0, abs=1e-4) and info["scale"] == pytest.approx(0.5)
    assert info_plain["scale"] == 1.0 and float(plain.norm()) > 0
    torch.testing.assert_close(scaled, 0.5 * plain, rtol=1e-5, atol=1e-7)  # float32 rounding of theta
    assert float(scaled[:2].norm()) == pytest.approx(0.5 * float(plain[:2].norm()), rel=1e-5) and float(plain[:2].norm()) > 1e-3
    # whereas rescaling g_t itself (a clip) leaves AdamW's step unchanged
    clipped_step, _ = rest_update("none", 0.1 * g_t, g_s)
    torch.testing.assert_close(clipped_step, plain, rtol=1e-4, atol=1e-7)


def test_strength_scale_values():
    assert strength_scale(-1.0, "conflict", 1.0) == 0.0  # opposite: no step
    assert strength_scale(0.3, "conflict", 1.0) == 1.0
    assert strength_scale(-0.25, "conflict", 2.0) == pytest.approx(1.5)
    assert strength_scale(float("nan"), "conflict", 0.7) == 0.7 and strength_scale(-1.0, "none", 1.0) == 1.0


def test_update_decoupling_makes_adamws_step_non_conflicting():
    gallery = _unit_rows(6, EMB_DIM, 1)
    tta = _rest(TinyDual(seed=0), gallery, lr=1e-2, decouple="update", strength="none")
    n = sum(p.numel() for p in tta.params)
    gen = torch.Generator().manual_seed(5)
    conflicts = 0
    for _ in range(20):
        g_t, g_s = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
        theta0 = tta._flat_params()
        info = tta.rest_step(g_t, g_s)
        delta = tta._flat_params() - theta0
        assert float(delta @ g_s) <= 1e-5 * float(delta.norm() * g_s.norm())  # L_s does not rise to 1st order
        conflicts += info["projected"] == 1.0
        if info["projected"]:
            assert info["after"] == pytest.approx(90.0, abs=1e-3)
    assert conflicts > 0


def test_infonce_queue_keeps_raw_queries_aligned_and_gives_a_gradient_at_the_source():
    gallery = _unit_rows(6, EMB_DIM, 1)
    model = TinyDual(seed=0)
    tta = _rest(model, gallery, steps=1)
    x = _queries(20, seed=2)
    tta.refined_forward(x, 0)
    assert len(tta.queue) == 6 and tta.queue.x.shape == (6, IN_DIM)
    torch.testing.assert_close(tta.encode(tta.queue.x).detach(), tta.queue.zq)
    loss = tta.general_loss(None, None)
    assert float(tta.flat_grad(loss).norm()) > 0  # unlike distillation, non-zero before any step
    out = _rest(TinyDual(seed=0), gallery, steps=2)(x)
    assert not math.isnan(out.stats["angle_before"]) and out.stats["step_scale"] <= 1.0


def test_bad_choices_name_the_key_and_the_valid_values():
    with pytest.raises(ConfigError, match=r"rest\.decouple is 'sideways'; valid: gradient, update, none"):
        _rest(TinyDual(seed=0), _unit_rows(6, EMB_DIM, 1), decouple="sideways")
    with pytest.raises(ConfigError, match=r"rest\.topk must be >= 1"):
        _rest(TinyDual(seed=0), _unit_rows(6, EMB_DIM, 1), topk=0)
