"""TCR (docs/methods.md "TCR") on small hand-computed cases.

Expected numbers are written from the formulas in docs/methods.md with plain arithmetic / numpy, never
with the implementation's helpers.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from _tiny import EMB_DIM, IN_DIM, TinyDual, make_tiny_clip_dir, one_torch_thread
from qshift.tta import build_method
from qshift.tta.tcr import (SourceLikeQueue, gap_loss, noise_robust_loss, refine, source_likeness,
                            uniformity_loss)

_one_thread = pytest.fixture(autouse=True, scope="module")(one_torch_thread)


def _t(a) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float32)


def _unit_rows(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)


def _queries(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, IN_DIM, generator=torch.Generator().manual_seed(seed))


def _np_entropy_rows(logits: np.ndarray) -> np.ndarray:
    x = logits - logits.max(1, keepdims=True)
    p = np.exp(x) / np.exp(x).sum(1, keepdims=True)
    return -(p * np.log(np.clip(p, 1e-300, None))).sum(1)


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.module.state_dict().items()}


# --------------------------------------------------------------------------------------------
# 1. query prediction refinement
# --------------------------------------------------------------------------------------------
GALLERY = _t([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]])
SIMS = _t([[0.1, 0.9, 0.3, -0.2],   # ranks: 1, 2, 0, 3
           [0.8, 0.2, 0.1, 0.0],    # ranks: 0, 1, 2, 3
           [0.05, 0.95, 0.5, 0.0]])  # ranks: 1, 2, 0, 3


def test_refine_top1_is_argmax_duplicates_allowed():
    candidates, positives = refine(SIMS, GALLERY, k=1)
    # g'(i) = argmax_j S_ij: queries 0 and 2 share gallery item 1 -> it appears twice
    expected = GALLERY[[1, 0, 1]]
    assert candidates.shape == (3, 2)
    assert torch.equal(candidates, expected)
    assert torch.equal(positives, expected)


def test_refine_k2_candidate_set():
    candidates, positives = refine(SIMS, GALLERY, k=2)
    # top-2 per query: {1, 2}, {0, 1}, {1, 2}  -> 6 candidates (B * K), duplicates kept
    expected_idx = [1, 2, 0, 1, 1, 2]
    assert candidates.shape == (6, 2)
    got = sorted(map(tuple, candidates.tolist()))
    want = sorted(map(tuple, GALLERY[expected_idx].tolist()))
    assert got == want
    # the positive of each query stays its top-1 item
    assert torch.equal(positives, GALLERY[[1, 0, 1]])


# --------------------------------------------------------------------------------------------
# 2. source-likeness SI_i = 2||zq_i - zg_i|| - ||zq_i - mean zq|| - ||zg_i - mean zg||
# --------------------------------------------------------------------------------------------
def test_source_likeness_two_vectors():
    zq = _t([[1.0, 0.0], [-1.0, 0.0]])  # mean (0, 0): both at distance 1
    zg = _t([[1.0, 0.0], [0.0, 1.0]])  # mean (.5, .5): both at distance sqrt(.5)
    # ||zq_0 - zg_0|| = 0, ||zq_1 - zg_1|| = ||(-1, -1)|| = sqrt(2)
    expected = [0.0 - 1.0 - math.sqrt(0.5), 2 * math.sqrt(2) - 1.0 - math.sqrt(0.5)]
    assert source_likeness(zq, zg).tolist() == pytest.approx(expected, abs=1e-6)


def test_source_likeness_three_vectors():
    zq = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    zg = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    mq, mg = zq.mean(0), zg.mean(0)  # (1.6/3, 1.8/3) for both
    expected = [2 * np.linalg.norm(zq[i] - zg[i]) - np.linalg.norm(zq[i] - mq) - np.linalg.norm(zg[i] - mg)
                for i in range(3)]
    # pair 0 is identical -> gap term 0 -> it is the most source-like
    got = source_likeness(_t(zq), _t(zg))
    assert got.tolist() == pytest.approx(expected, abs=1e-6)
    assert int(got.argmin()) == 0


# --------------------------------------------------------------------------------------------
# 3. the source-like queue
# --------------------------------------------------------------------------------------------
def _batch(seed: int, b: int = 10):
    g = torch.Generator().manual_seed(seed)
    si = torch.randn(b, generator=g)
    zq = torch.nn.functional.normalize(torch.randn(b, 2, generator=g), dim=1)
    zg = torch.nn.functional.normalize(torch.randn(b, 2, generator=g), dim=1)
    ent = torch.rand(b, generator=g) * 3
    return si, zq, zg, ent


def test_queue_keeps_smallest_per_push_and_smallest_overall():
    b = 10
    n = int(0.3 * b)  # 3 per push
    q = SourceLikeQueue(size=4)
    batches = [_batch(1), _batch(2)]
    pushed_si, pushed_zq, pushed_zg, pushed_ent = [], [], [], []
    for k, (si, zq, zg, ent) in enumerate(batches):
        q.push(si, zq, zg, ent, n)
        sel = np.argsort(si.numpy())[:n]  # the int(0.3 B) smallest SI of this batch
        pushed_si += si.numpy()[sel].tolist()
        pushed_zq += zq.numpy()[sel].tolist()
        pushed_zg += zg.numpy()[sel].tolist()
        pushed_ent += ent.numpy()[sel].tolist()
        assert len(q) == min(3 * (k + 1), 4)
    # after the 2nd push 6 candidates compete; the 4 smallest SI overall stay
    keep = np.argsort(pushed_si)[:4]
    order = np.argsort(q.si.numpy())
    assert q.si.numpy()[order].tolist() == pytest.approx(np.asarray(pushed_si)[keep].tolist())
    # rows stay aligned with their SI
    zq_q, zg_q, ent_q = (np.asarray(a)[keep] for a in (pushed_zq, pushed_zg, pushed_ent))
    np.testing.assert_allclose(q.zq.numpy()[order], zq_q, rtol=1e-6)
    np.testing.assert_allclose(q.zg.numpy()[order], zg_q, rtol=1e-6)
    np.testing.assert_allclose(q.ent.numpy()[order], ent_q, rtol=1e-6)
    # Delta_S = ||mean zq_queue - mean zg_queue||, E_m = max entropy in the queue
    assert float(q.delta_s) == pytest.approx(float(np.linalg.norm(zq_q.mean(0) - zg_q.mean(0))), rel=1e-5)
    assert float(q.e_max) == pytest.approx(float(ent_q.max()), rel=1e-6)


def test_queue_first_push_values_and_detached():
    si = _t([0.5, -1.0, 2.0, 0.0, 3.0])
    zq = _t([[1, 0], [0, 1], [1, 0], [0.6, 0.8], [0, 1]]).requires_grad_(True)
    zg = _t([[0, 1], [0, 1], [1, 0], [1, 0], [0, 1]])
    ent = _t([0.1, 0.7, 0.2, 0.4, 0.9]).requires_grad_(True)
    q = SourceLikeQueue(size=64)
    q.push(si, zq, zg, ent, n=0)
    assert len(q) == 0  # n = 0 pushes nothing
    q.push(si, zq, zg, ent, n=2)  # the two smallest SI: -1.0 (row 1) and 0.0 (row 3)
    assert sorted(q.si.tolist()) == [-1.0, 0.0]
    assert not q.zq.requires_grad and not q.ent.requires_grad
    # mean zq = ((0 + .6)/2, (1 + .8)/2) = (.3, .9); mean zg = (.5, .5)
    assert float(q.delta_s) == pytest.approx(math.hypot(0.3 - 0.5, 0.9 - 0.5), rel=1e-6)
    assert float(q.e_max) == pytest.approx(0.7)


# --------------------------------------------------------------------------------------------
# 4. losses
# --------------------------------------------------------------------------------------------
def test_noise_robust_loss_values_and_detached_weights():
    e = [0.5, 1.0, 2.0, 3.0]
    e_max = 2.0
    ent = _t(e).requires_grad_(True)
    loss = noise_robust_loss(ent, torch.tensor(e_max))
    # samples 0..2 pass (E <= E_m, inclusive); w_i = max(1 - E_i / (E_m + 1e-3), 0)
    w = [1 - x / (e_max + 1e-3) for x in e[:3]]
    expected = (w[0] * e[0] + w[1] * e[1] + w[2] * e[2]) / 3
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-6)
    # weights are detached: d loss / d E_i = w_i / 3 for passing samples, 0 otherwise
    # (with attached weights it would be (1 - 2 E_i / (E_m + 1e-3)) / 3, e.g. -0.333 for E = 2)
    loss.backward()
    assert ent.grad.tolist() == pytest.approx([w[0] / 3, w[1] / 3, w[2] / 3, 0.0], abs=1e-6)


def test_noise_robust_loss_threshold_is_inclusive():
    loss = noise_robust_loss(_t([1.0, 1.5]), torch.tensor(1.0))
    # only sample 0 passes: w = 1 - 1/1.001 -> loss = w * 1.0
    assert float(loss) == pytest.approx(1 - 1 / 1.001, rel=1e-4)


def test_noise_robust_loss_none_when_nothing_passes():
    assert noise_robust_loss(_t([2.5, 3.0, 4.0]), torch.tensor(2.0)) is None


def test_uniformity_loss_values():
    # symmetric pair around 0: both at distance 1 -> mean exp(-0.1 * 1)
    assert float(uniformity_loss(_t([[1, 0], [-1, 0]]), 0.1)) == pytest.approx(math.exp(-0.1), rel=1e-6)
    z = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    d = np.linalg.norm(z - z.mean(0), axis=1)
    for t in (0.1, 2.0):
        expected = float(np.mean(np.exp(-t * d)))
        assert float(uniformity_loss(_t(z), t)) == pytest.approx(expected, rel=1e-6)


def test_gap_loss_values():
    zq = _t([[1, 0], [0, 1]])  # mean (.5, .5)
    zg = _t([[1, 0], [1, 0]])  # mean (1, 0) -> Delta_T = ||(-.5, .5)|| = sqrt(.5)
    assert float(gap_loss(zq, zg, torch.tensor(0.2))) == pytest.approx((math.sqrt(0.5) - 0.2) ** 2, rel=1e-6)
    assert float(gap_loss(zq, zg, torch.tensor(math.sqrt(0.5)))) == pytest.approx(0.0, abs=1e-12)


# --------------------------------------------------------------------------------------------
# 5. the TCR method end to end on a toy dual encoder
# --------------------------------------------------------------------------------------------
def _tcr(model, gallery, steps=3, modality="image", **hp):
    return build_method("tcr", model, modality, gallery, hp, steps=steps)


@torch.no_grad()
def _source_embed(model, x, modality="image") -> torch.Tensor:
    return model.encode(modality, x)


def test_first_batch_stats_match_hand_computation():
    model = TinyDual(seed=0)
    gallery = _unit_rows(6, EMB_DIM, seed=1)  # 6 items for 20 queries: duplicates guaranteed
    x = _queries(20, seed=2)
    zq = _source_embed(model, x).double().numpy()
    G = gallery.double().numpy()
    tau, t, b = 0.02, 0.1, 20

    gp = G[(zq @ G.T).argmax(1)]  # refined positives, one per query
    assert len({tuple(r) for r in gp}) < b  # duplicates really occur
    ent = _np_entropy_rows(zq @ gp.T / tau)  # p_hat is B x B
    si = (2 * np.linalg.norm(zq - gp, axis=1) - np.linalg.norm(zq - zq.mean(0), axis=1)
          - np.linalg.norm(gp - gp.mean(0), axis=1))
    sel = np.argsort(si)[: int(0.3 * b)]
    delta_s = np.linalg.norm(zq[sel].mean(0) - gp[sel].mean(0))
    e_max = ent[sel].max()
    mask = ent <= e_max
    w = np.maximum(1 - ent / (e_max + 1e-3), 0)
    l_na = (w * ent)[mask].mean()
    l_mu = np.exp(-t * np.linalg.norm(zq - zq.mean(0), axis=1)).mean()
    delta_t = np.linalg.norm(zq.mean(0) - gp.mean(0))
    l_mg = (delta_t - delta_s) ** 2

    tta = _tcr(model, gallery)
    out = tta(x)
    s = out.stats
    assert len(tta.queue) == 6
    assert s["entropy"] == pytest.approx(ent.mean(), rel=1e-4)
    assert s["delta_s"] == pytest.approx(delta_s, rel=1e-4)
    assert s["e_max"] == pytest.approx(e_max, rel=1e-4)
    assert s["n_selected"] == int(mask.sum())
    assert s["delta_t"] == pytest.approx(delta_t, rel=1e-4)
    assert s["loss_na"] == pytest.approx(l_na, rel=1e-4, abs=1e-6)
    assert s["loss_mu"] == pytest.approx(l_mu, rel=1e-5)
    assert s["loss_mg"] == pytest.approx(l_mg, rel=1e-3, abs=1e-6)
    assert s["loss"] == pytest.approx(l_na + l_mu + l_mg, rel=1e-4)
    # the queue holds the step-0 (source) embeddings of the selected queries
    np.testing.assert_allclose(np.sort(tta.queue.si.numpy()), np.sort(si[sel]), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(tta.queue.zq.numpy()[np.argsort(tta.queue.si.numpy())],
                               zq[sel][np.argsort(si[sel])], rtol=1e-5, atol=1e-6)
    assert tta.counters["steps"] == 3


def test_queue_updated_only_at_step0_of_first_queue_batches():
    model = TinyDual(seed=0)
    gallery = _unit_rows(12, EMB_DIM, seed=1)
    tta = _tcr(model, gallery, steps=3, lr=1e-2, queue_size=1000, queue_batches=2)
    lengths, delta_s, e_max = [], [], []
    for k in range(5):
        out = tta(_queries(10, seed=10 + k))  # int(0.3 * 10) = 3 pushed per queue batch
        lengths.append(len(tta.queue))
        delta_s.append(out.stats["delta_s"])
        e_max.append(out.stats["e_max"])
    # 3 per batch, once per batch (step 0 only, not 3 x 3), during the first 2 batches only
    assert lengths == [3, 6, 6, 6, 6]
    # Delta_S and E_m are frozen afterwards
    assert delta_s[2:] == [delta_s[1]] * 3 and e_max[2:] == [e_max[1]] * 3
    assert tta.counters["steps"] == 15


def test_queue_capped_at_queue_size_inside_tcr():
    model = TinyDual(seed=0)
    tta = _tcr(model, _unit_rows(12, EMB_DIM, seed=1), queue_size=4, queue_batches=10)
    lengths = [(tta(_queries(10, seed=20 + k)), len(tta.queue))[1] for k in range(3)]
    assert lengths == [3, 4, 4]


def test_steps1_scores_equal_source_scores():
    model = TinyDual(seed=0)
    gallery = _unit_rows(12, EMB_DIM, seed=1)
    x = _queries(16, seed=3)
    source = _source_embed(model, x) @ gallery.T
    out = _tcr(model, gallery, steps=1, lr=0.5)(x)
    torch.testing.assert_close(out.scores, source, rtol=0, atol=1e-6)


def test_steps3_scores_come_from_the_last_forward_pass():
    gallery = _unit_rows(12, EMB_DIM, seed=1)
    x = _queries(16, seed=3)
    m3 = TinyDual(seed=0)
    source = _source_embed(m3, x) @ gallery.T
    out3 = _tcr(m3, gallery, steps=3, lr=0.5)(x)
    assert not torch.allclose(out3.scores, source, atol=1e-3)  # updated within the batch
    # the 3rd forward sees the model after 2 updates: run 2 steps on a fresh copy and re-encode
    m2 = TinyDual(seed=0)
    _tcr(m2, gallery, steps=2, lr=0.5)(x)
    after_two = _source_embed(m2, x) @ gallery.T
    torch.testing.assert_close(out3.scores, after_two, rtol=0, atol=1e-6)
    assert not out3.scores.requires_grad


def test_empty_selection_takes_no_step_and_is_counted():
    model = TinyDual(seed=0)
    gallery = _unit_rows(12, EMB_DIM, seed=1)
    tta = _tcr(model, gallery, steps=3, lr=1e-2, queue_batches=1)
    tta(_queries(10, seed=4))
    assert tta.counters["steps"] == 3 and tta.counters["empty_selection"] == 0
    # entropies are >= 0: with E_m = -1 no query passes the noise-robust filter
    tta.queue.ent = torch.full_like(tta.queue.ent, -1.0)
    before = _params(model)
    x = _queries(10, seed=5)
    expected_scores = _source_embed(model, x) @ gallery.T
    out = tta(x)
    assert tta.counters["empty_selection"] == 3
    assert tta.counters["skipped_steps"] == 3
    assert tta.counters["steps"] == 3  # unchanged
    assert all(torch.equal(before[k], v) for k, v in _params(model).items())
    assert out.stats["n_selected"] == 0 and math.isnan(out.stats["loss"])
    torch.testing.assert_close(out.scores, expected_scores, rtol=0, atol=1e-6)


def test_batch_too_small_for_the_queue_takes_no_step():
    model = TinyDual(seed=0)
    gallery = _unit_rows(12, EMB_DIM, seed=1)
    tta = _tcr(model, gallery, steps=3, lr=1e-2)
    before = _params(model)
    tta(_queries(3, seed=6))  # int(0.3 * 3) = 0: nothing source-like, no step
    assert len(tta.queue) == 0
    assert tta.counters["empty_selection"] == 3 and tta.counters["steps"] == 0
    assert all(torch.equal(before[k], v) for k, v in _params(model).items())
    tta(_queries(10, seed=7))  # a full batch fills the queue and adapts
    assert len(tta.queue) == 3 and tta.counters["steps"] == 3


# --------------------------------------------------------------------------------------------
# 6. only the query tower's normalisation layers change (real open_clip CLIP)
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return make_tiny_clip_dir(tmp_path_factory.mktemp("clip") / "tiny-clip")


@pytest.mark.parametrize("modality", ["image", "text"])
def test_only_norm_layer_params_change(clip_dir, modality):
    from qshift.models import load_model

    model = load_model(f"local-dir:{clip_dir}")
    if modality == "image":
        x = torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        expected = {"visual.ln_pre", "visual.ln_post", "visual.transformer.resblocks.0.ln_1",
                    "visual.transformer.resblocks.0.ln_2"}
    else:
        x = model.tokenize([f"a {c} {s} in the corner" for c in ("red", "blue") for s in
                            ("circle", "square", "star", "ring", "cross")])
        expected = {"transformer.resblocks.0.ln_1", "transformer.resblocks.0.ln_2"}  # not ln_final
    norm_params = {f"{n}.{p}" for n in expected for p in ("weight", "bias")}
    before = _params(model)
    tta = _tcr(model, _unit_rows(10, 32, seed=1), steps=3, modality=modality, lr=1e-2)
    tta(x)
    tta(x)
    assert tta.counters["steps"] == 6
    after = _params(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed <= norm_params, f"non-norm parameters changed: {sorted(changed - norm_params)}"
    assert {f"{n}.weight" for n in expected} <= changed
    assert not model.module.training  # eval mode kept (dropout off)
    assert {id(p) for p in tta.params} == {id(p) for n, p in model.module.named_parameters()
                                           if n in norm_params}
