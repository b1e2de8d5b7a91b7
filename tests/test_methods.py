"""The baselines and variants next to TCR: Tent, EATA, SAR, READ, DeYO, TCR-untrain, REST.

Selection rules, losses and transforms are checked on hand-made numbers through the small pure
functions each module exposes; every registered method is also driven through the real
stream (:func:`qshift.adapt.run_stream`) on a tiny open_clip CLIP.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from _tiny import make_tiny_clip_dir
from qshift.adapt import run_stream
from qshift.config import load_params, method_hparams
from qshift.data.manifest import Split
from qshift.models import load_model
from qshift.tta import METHODS, build_method
from qshift.tta.base import ema
from qshift.tta import rest as rest_mod
from qshift.tta import sar as sar_mod
from qshift.tta.deyo import deyo_weights, entropy_filter, patch_shuffle, plpd
from qshift.tta.eata import eata_select, update_ema_prob
from qshift.tta.read import read_loss
from qshift.tta.rest import consistency_loss, decouple, distillation_loss
from qshift.tta.sar import sar_select
from qshift.tta.tcr_untrain import scale_and_shift

ALL_METHODS = ["source", "tcr", "tent", "eata", "sar", "read", "deyo", "tcr_untrain", "rest", "rest_v1"]
ADAPTIVE = ["tcr", "tent", "eata", "sar", "read", "deyo", "rest", "rest_v1"]
ROOT = Path(__file__).resolve().parents[1]
N_IMAGES, CAPS_PER_IMAGE, EMBED_DIM, BATCH = 24, 2, 32, 8

# The untrained tiny CLIP embeds all images almost alike: at the defaults the SAM ascent lifts
# every kept entropy above the threshold and the second pass selects nothing.
SAR_TAU, SAR_RHO = 0.1, 0.005
SAR_HP = {"tau": SAR_TAU, "rho": SAR_RHO}


def _t(a) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float32)


# --------------------------------------------------------------------------------------------
# fixtures: a tiny real open_clip CLIP, random images/captions, a random gallery
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def clip_model(tmp_path_factory):
    return load_model(f"local-dir:{make_tiny_clip_dir(tmp_path_factory.mktemp('clip') / 'm')}")


@pytest.fixture
def model(clip_model):
    """The session model, restored (weights and frozen flags) after every test."""
    state = {k: v.clone() for k, v in clip_model.module.state_dict().items()}
    yield clip_model
    clip_model.module.load_state_dict(state)
    for p in clip_model.module.parameters():
        p.requires_grad_(False)


@pytest.fixture(scope="session")
def queries(tmp_path_factory) -> Split:
    root = tmp_path_factory.mktemp("queries")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(N_IMAGES):
        paths.append(root / f"{i:03d}.png")
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(paths[-1])
    words = ["red", "blue", "circle", "square", "small", "large", "left", "right"]
    captions = [" ".join(rng.choice(words, 5)) for _ in range(N_IMAGES * CAPS_PER_IMAGE)]
    return Split(dataset="toy", manifest=root / "manifest.json", image_ids=np.arange(N_IMAGES), image_paths=paths,
                 sentids=np.arange(len(captions)), captions=captions,
                 txt2img=np.repeat(np.arange(N_IMAGES), CAPS_PER_IMAGE))


@pytest.fixture(scope="session")
def gallery() -> dict:
    g = torch.Generator().manual_seed(1)
    return {"image": F.normalize(torch.randn(N_IMAGES, EMBED_DIM, generator=g), dim=1),
            "text": F.normalize(torch.randn(N_IMAGES * CAPS_PER_IMAGE, EMBED_DIM, generator=g), dim=1),
            "image_owner": torch.arange(N_IMAGES),
            "text_owner": torch.arange(N_IMAGES).repeat_interleave(CAPS_PER_IMAGE)}


def _stream(model, queries, gallery, method, direction="i2t", hparams=None, **kw) -> dict:
    return run_stream(model, method, hparams or {}, direction, queries, gallery, batch_size=BATCH,
                      progress=False, **kw)


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.module.state_dict().items()}


def _adapted_names(model, modality: str) -> set[str]:
    return {f"{name}.{p}" for name, layer in model.norm_layers(modality) for p in ("weight", "bias")
            if getattr(layer, p) is not None}


# --------------------------------------------------------------------------------------------
# registry and params.yaml
# --------------------------------------------------------------------------------------------
def _documented_defaults(text: str) -> dict[str, dict[str, str]]:
    """params.yaml's `# defaults: k v, ...` comment lines under each methods entry."""
    section = text[text.index("\nmethods:\n") + 1:]
    out: dict[str, dict[str, str]] = {}
    name = None
    for line in section.splitlines()[1:]:
        if re.match(r"^\S", line):
            break
        if m := re.match(r"^  ([a-z0-9_-]+):", line):
            name = m[1]
        elif name and (m := re.match(r"^    # (?:defaults:| ) (.*)$", line)):
            if "defaults:" in line or out.get(name):
                for item in filter(None, (x.strip() for x in m[1].split(","))):
                    key, value = item.split(" ", 1)
                    out.setdefault(name, {})[key] = value
    return out


def test_all_methods_registered_with_defaults_once_on_the_class():
    """Defaults live on the class; params.yaml's entries only override (the default file: none)
    and document them in a comment, which must list exactly the class's values."""
    assert sorted(ALL_METHODS) == METHODS.names()
    text = (ROOT / "params.yaml").read_text()
    entries = yaml.safe_load(text)["methods"]
    documented = _documented_defaults(text)
    for name in ALL_METHODS:
        assert entries[name] == {}, f"params.yaml methods.{name} repeats values: defaults live on the class"
        defaults = METHODS.get(name).defaults
        assert list(documented.get(name, {})) == list(defaults), name
        for key, value in defaults.items():
            shown = yaml.safe_load(documented[name][key])
            expected = value if isinstance(value, str) else pytest.approx(value, rel=1e-12)  # choices are strings
            assert shown == expected, (name, key, documented[name][key])
        # what a job runs with: the class defaults (a params entry overrides)
        assert method_hparams(load_params(ROOT / "params.yaml"), name) == defaults


def test_entropy_baselines_use_tau_001_and_tcr_family_002():
    for name in ("tent", "eata", "sar", "read", "deyo"):
        assert METHODS.get(name).defaults["tau"] == 0.01
    assert METHODS.get("rest").defaults["tau"] == 0.02 and METHODS.get("rest_v1").defaults["tau"] == 0.02


# --------------------------------------------------------------------------------------------
# every method through the real stream
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("modality", ["image", "text"])
@pytest.mark.parametrize("method", ALL_METHODS)
def test_only_selected_norm_params_change(model, queries, gallery, method, modality):
    g = gallery["text" if modality == "image" else "image"]
    tta = build_method(method, model, modality, g, SAR_HP if method == "sar" else None, steps=2)
    batches = ([_images(BATCH, seed) for seed in range(3)] if modality == "image" else
               [model.tokenize(queries.captions[i:i + BATCH]) for i in range(0, 3 * BATCH, BATCH)])
    before = _state(model)
    for batch in batches:
        tta(batch)
    after = _state(model)
    allowed = _adapted_names(model, modality)
    assert allowed and "ln_final.weight" not in allowed
    assert {n for n, p in model.module.named_parameters() if p.requires_grad} == (allowed if tta.adapts else set())
    for name in before:
        if name not in allowed or not tta.adapts:
            assert torch.equal(before[name], after[name]), name
    if method in ADAPTIVE:
        assert tta.counters["steps"] > 0
        assert any(not torch.equal(before[n], after[n]) for n in allowed)
    tta.close()
    assert all(torch.equal(v, _state(model)[k]) for k, v in before.items())


@pytest.mark.parametrize("method", ADAPTIVE)
def test_scores_come_from_the_last_steps_forward(model, gallery, method):
    x, g = _images(BATCH), gallery["text"]
    source_state = _state(model)
    source_scores = model.encode("image", x).detach() @ g.T
    hp = SAR_HP if method == "sar" else None
    two = build_method(method, model, "image", g, hp, steps=2)
    two(x)
    assert two.counters["steps"] > 0
    after_two = model.encode("image", x).detach() @ g.T  # the params the third step's forward sees
    model.module.load_state_dict(source_state)
    out = build_method(method, model, "image", g, hp, steps=3)(x)
    assert torch.allclose(out.scores, after_two, atol=1e-6)
    if not two.counters["resets"]:
        assert not torch.allclose(out.scores, source_scores, atol=1e-6)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_identical_seeds_identical_results(model, queries, gallery, method):
    source = _state(model)
    first = _stream(model, queries, gallery, method)
    model.module.load_state_dict(source)
    second = _stream(model, queries, gallery, method)
    assert first["metrics"] == second["metrics"]
    assert first["online"] == second["online"]
    assert first["counters"] == second["counters"]


@pytest.mark.parametrize("method", ALL_METHODS)
def test_stats_are_plain_numbers(model, queries, gallery, method):
    res = _stream(model, queries, gallery, method)
    for key, values in res["online"]["stats"].items():
        assert len(values) == N_IMAGES // BATCH
        assert all(v is None or type(v) in (int, float) for v in values), key


# --------------------------------------------------------------------------------------------
# guards: empty selections and non-finite losses take no step and are counted
# --------------------------------------------------------------------------------------------
def test_update_guard(model, gallery):
    tta = build_method("tent", model, "image", gallery["text"])
    before = [p.detach().clone() for p in tta.params]
    assert tta.update(None) is False
    assert tta.update(torch.tensor(float("nan"), requires_grad=True)) is False
    assert tta.update(torch.tensor(float("inf"), requires_grad=True)) is False
    assert tta.counters == Counter(empty_selection=1, nonfinite_loss=2, skipped_steps=3)
    assert all(torch.equal(p, b) for p, b in zip(tta.params, before))


@pytest.mark.parametrize("method", ["eata", "sar", "deyo", "tcr", "rest", "rest_v1"])
def test_empty_selection_takes_no_step(model, gallery, method):
    # two queries: int(0.4*2) = 0 for EATA/SAR, nothing strictly below the 1st smallest for
    # DeYO, int(0.3*2) = 0 queue pushes for TCR/REST
    tta = build_method(method, model, "image", gallery["text"], steps=3)
    before = _state(model)
    tta(_images(2))
    assert tta.counters["empty_selection"] == 3
    assert tta.counters["skipped_steps"] == 3
    assert tta.counters["steps"] == 0
    assert all(torch.equal(v, _state(model)[k]) for k, v in before.items())


@pytest.mark.parametrize("method", ADAPTIVE)
def test_nonfinite_embeddings_take_no_step(model, gallery, method, monkeypatch):
    tta = build_method(method, model, "image", gallery["text"], steps=2)
    encode = tta.encode
    monkeypatch.setattr(tta, "encode", lambda x: encode(x) * float("nan"))
    before = _state(model)
    tta(_images(BATCH))
    assert tta.counters["steps"] == 0
    assert tta.counters["skipped_steps"] == 2
    assert tta.counters["empty_selection"] + tta.counters["nonfinite_loss"] == 2
    assert all(torch.equal(v, _state(model)[k]) for k, v in before.items())


def test_sar_nonfinite_loss_is_counted(model, gallery, monkeypatch):
    entropy = sar_mod.entropy
    monkeypatch.setattr(sar_mod, "entropy", lambda logits: entropy(logits) * float("inf"))
    tta = build_method("sar", model, "image", gallery["text"], steps=2)
    before = _state(model)
    tta(_images(BATCH))
    assert tta.counters == Counter(nonfinite_loss=2, skipped_steps=2)
    assert all(torch.equal(v, _state(model)[k]) for k, v in before.items())


def test_rest_nonfinite_loss_is_counted(model, gallery, monkeypatch):
    monkeypatch.setattr(rest_mod, "uniformity_loss", lambda zq, t: zq.sum() * float("nan"))
    tta = build_method("rest", model, "image", gallery["text"], steps=2)
    before = _state(model)
    tta(_images(BATCH))
    assert tta.counters == Counter(nonfinite_loss=2, skipped_steps=2)
    assert all(torch.equal(v, _state(model)[k]) for k, v in before.items())


# --------------------------------------------------------------------------------------------
# Tent
# --------------------------------------------------------------------------------------------
def test_tent_loss_is_mean_entropy_over_the_whole_gallery(model, gallery):
    tta = build_method("tent", model, "image", gallery["text"], steps=1)
    x = _images(BATCH)
    with torch.no_grad():
        p = (model.encode("image", x) @ gallery["text"].T / 0.01).softmax(1).double()
    expected = float((-(p * p.log()).sum(1)).mean())
    out = tta(x)
    assert out.stats["loss"] == pytest.approx(expected, rel=1e-4)
    assert out.stats["n_selected"] == BATCH


# --------------------------------------------------------------------------------------------
# EATA
# --------------------------------------------------------------------------------------------
def test_eata_keeps_lowest_entropies_without_ema():
    ent = _t([0.5, 0.1, 0.9, 0.3, 0.2, 0.8, 0.7, 0.4, 0.6, 1.0])  # int(0.4*10) = 4 lowest
    probs = torch.full((10, 3), 1 / 3)
    assert eata_select(ent, probs, None, 0.4, 0.05).nonzero().squeeze(1).tolist() == [1, 3, 4, 7]


def test_eata_redundancy_filter_uses_abs_cosine_with_ema():
    ent = _t([0.1, 0.2, 0.3, 0.4, 0.9])  # int(0.4*5) = 2 -> samples 0 and 1 reliable
    ema = _t([1.0, 0.0, 0.0])
    probs = _t([[0.0, 0.6, 0.4],        # cos 0: kept
                [0.04, 0.96, 0.0],      # cos 0.0416 < 0.05: kept
                [0.0, 1.0, 0.0],        # orthogonal, but not reliable
                [0.0, 0.0, 1.0],
                [0.0, 0.5, 0.5]])
    assert eata_select(ent, probs, ema, 0.4, 0.05).tolist() == [True, True, False, False, False]
    probs[1] = _t([0.06, 0.94, 0.0])  # cos 0.0637: redundant
    assert eata_select(ent, probs, ema, 0.4, 0.05).tolist() == [True, False, False, False, False]


def test_eata_ema_initialised_then_updated_and_kept_when_nothing_is_selected():
    kept = _t([[1.0, 0.0], [0.0, 1.0]])
    ema = update_ema_prob(None, kept, 0.9)
    assert ema.tolist() == [0.5, 0.5]
    ema = update_ema_prob(ema, _t([[1.0, 0.0]]), 0.9)
    assert ema.tolist() == pytest.approx([0.55, 0.45])
    assert update_ema_prob(ema, kept[:0], 0.9) is ema
    assert update_ema_prob(None, kept[:0], 0.9) is None


def test_eata_weights_kept_samples_by_exp_margin(model, gallery):
    tta = build_method("eata", model, "image", gallery["text"], steps=1)
    x = _images(10)
    with torch.no_grad():
        p = (model.encode("image", x) @ gallery["text"].T / 0.01).softmax(1).double()
    ent = -(p * p.log()).sum(1)
    kept = ent.sort().values[:4]  # first batch: every reliable sample passes the redundancy filter
    expected = float((kept * torch.exp(-(kept - 0.4))).mean())
    out = tta(x)
    assert out.stats["n_selected"] == 4
    assert out.stats["loss"] == pytest.approx(expected, rel=1e-4)
    assert tta.ema_prob is not None


# --------------------------------------------------------------------------------------------
# SAR
# --------------------------------------------------------------------------------------------
def test_sar_select_keeps_entropies_up_to_the_kth_smallest_inclusive():
    ent = _t([0.5, 0.2, 0.9, 0.2, 0.7, 0.1, 0.8, 0.6, 0.3, 1.0])  # k = 4 -> 4th smallest = 0.3
    keep, thr = sar_select(ent, 0.4)
    assert float(thr) == pytest.approx(0.3)
    assert keep.nonzero().squeeze(1).tolist() == [1, 3, 5, 8]
    ties = _t([0.1, 0.2, 0.2, 0.9, 0.9])  # k = 2 -> thr 0.2: both tied samples pass
    assert sar_select(ties, 0.4)[0].tolist() == [True, True, True, False, False]
    assert not sar_select(_t([0.1, 0.2]), 0.4)[0].any()


def test_sar_loss_ema():
    assert ema(None, 0.5, 0.9) == 0.5
    assert ema(0.5, 0.1, 0.9) == pytest.approx(0.46)


def test_sar_runs_both_sam_passes_and_steps_with_the_perturbed_gradient(model, gallery, monkeypatch):
    tta = build_method("sar", model, "image", gallery["text"], steps=1, hparams={**SAR_HP, "reset_threshold": -1.0})
    x = _images(BATCH)
    seen = []
    encode = tta.encode

    def spy(batch):
        seen.append(torch.cat([p.detach().reshape(-1).clone() for p in tta.params]))
        return encode(batch)

    monkeypatch.setattr(tta, "encode", spy)
    source = torch.cat([p.detach().reshape(-1).clone() for p in tta.params])

    # the expected SAM perturbation, computed by hand at the same (source) parameters
    logits0 = tta.similarities(encode(x)) / SAR_TAU
    ent0 = -(logits0.log_softmax(1).exp() * logits0.log_softmax(1)).sum(1)
    keep, thr = sar_select(ent0.detach(), 0.4)
    grads = torch.autograd.grad(ent0[keep].mean(), tta.params)
    g = torch.cat([gr.reshape(-1) for gr in grads])
    eps = SAR_RHO * g / g.norm()

    out = tta(x)
    assert len(seen) == 2  # first pass + perturbed pass
    assert torch.equal(seen[0], source)
    assert torch.allclose(seen[1] - seen[0], eps, atol=1e-6)
    assert float((seen[1] - seen[0]).norm()) == pytest.approx(SAR_RHO, rel=1e-4)
    assert tta.counters["steps"] == 1 and out.stats["resets"] == 0
    # the AdamW step used the second pass's gradient, taken at the perturbed point
    perturbed = [s + e.view_as(s) for s, e in zip((p.detach() for p in tta._source_params),
                                                   eps.split([p.numel() for p in tta.params]))]
    with torch.no_grad():
        stepped = [p.clone() for p in tta.params]
        for p, q in zip(tta.params, perturbed):
            p.copy_(q)
    logits = tta.similarities(encode(x)) / SAR_TAU
    ent2 = -(logits.log_softmax(1).exp() * logits.log_softmax(1)).sum(1)[keep]
    g2 = torch.autograd.grad(ent2[ent2.detach() < thr].mean(), tta.params)
    ref = [p.detach().clone().requires_grad_(True) for p in tta._source_params]
    opt = torch.optim.AdamW(ref, lr=3e-4, weight_decay=1e-4)
    for r, gr in zip(ref, g2):
        r.grad = gr.clone()
    opt.step()
    for s, r in zip(stepped, ref):
        assert torch.allclose(s, r, atol=1e-7)


def test_sar_resets_to_source_when_the_loss_ema_drops_below_the_threshold(model, gallery):
    x = _images(BATCH)
    never = build_method("sar", model, "image", gallery["text"], steps=2, hparams={**SAR_HP, "reset_threshold": -1.0})
    out = never(x)
    assert out.stats["resets"] == 0 and never.counters["steps"] == 2
    assert any(not torch.equal(p, p0) for p, p0 in zip(never.params, never._source_params))
    never.reset()

    always = build_method("sar", model, "image", gallery["text"], steps=2, hparams={**SAR_HP, "reset_threshold": 1e9})
    out = always(x)
    assert out.stats["resets"] == 2 and always.counters["resets"] == 2 and always.counters["steps"] == 2
    assert all(torch.equal(p, p0) for p, p0 in zip(always.params, always._source_params))
    assert always.loss_ema is None and math.isnan(out.stats["loss_ema"])

    # the first EMA value is the (second-pass) loss itself; reset iff EMA < threshold
    probe = build_method("sar", model, "image", gallery["text"], steps=1, hparams={**SAR_HP, "reset_threshold": -1.0})
    probe(x)
    first = probe.loss_ema
    probe.reset()
    for thr, resets in ((first * (1 - 1e-4), 0), (first * (1 + 1e-4), 1)):
        tta = build_method("sar", model, "image", gallery["text"], steps=1, hparams={**SAR_HP, "reset_threshold": thr})
        assert tta(x).stats["resets"] == resets


# --------------------------------------------------------------------------------------------
# READ
# --------------------------------------------------------------------------------------------
def test_read_loss_matches_hand_computation():
    probs = _t([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    # confidence: p(1 - log p + log(1/e)) = -p log p for p_max = 0.7 and 0.6
    confidence = (-0.7 * math.log(0.7) - 0.6 * math.log(0.6)) / 2
    s = [0.8, 0.5, 0.7]  # column sums
    q = [math.exp(v) / sum(math.exp(u) for u in s) for v in s]
    diversity = -sum(v * math.log(v) for v in q)
    assert float(read_loss(probs)) == pytest.approx(confidence - diversity, rel=1e-6)
    # with gamma != 1/e the constant term appears: p_max * (1 + log gamma) extra
    assert float(read_loss(probs, gamma=1.0)) == pytest.approx(confidence + (0.7 + 0.6) / 2 - diversity, rel=1e-6)


# --------------------------------------------------------------------------------------------
# DeYO
# --------------------------------------------------------------------------------------------
def test_deyo_entropy_filter_is_strictly_below_the_kth_smallest():
    ent = _t([0.5, 0.2, 0.9, 0.1, 0.7, 0.3, 0.8, 0.6])  # k = 4 -> 4th smallest = 0.5
    assert entropy_filter(ent, 0.5).nonzero().squeeze(1).tolist() == [1, 3, 5]
    assert not entropy_filter(_t([0.3]), 0.5).any()


def test_patch_shuffle_permutes_whole_patches():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32)
    out = patch_shuffle(x, 4, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and not torch.equal(out, x)

    def patches(img):  # the 16 (C, 8, 8) patches of one image, as a sorted multiset
        return sorted(img[:, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8].flatten().tolist()
                      for r in range(4) for c in range(4))

    for i in range(2):
        assert patches(out[i]) == patches(x[i])
    again = patch_shuffle(x, 4, torch.Generator().manual_seed(0))
    assert torch.equal(again, out)


def test_patch_shuffle_keeps_pixels_when_not_divisible():
    x = torch.rand(1, 3, 34, 35)
    out = patch_shuffle(x, 4, torch.Generator().manual_seed(1))
    assert torch.equal(out[:, :, 32:], x[:, :, 32:]) and torch.equal(out[:, :, :, 32:], x[:, :, :, 32:])
    assert torch.equal(out.flatten().sort().values, x.flatten().sort().values)


def test_plpd_sign():
    probs = _t([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    shuffled = _t([[0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    # c = (0, 2): 0.7 - 0.2 = 0.5 (prediction relies on the object shape), 0.6 - 0.8 = -0.2
    assert plpd(probs, shuffled).tolist() == pytest.approx([0.5, -0.2])


def test_deyo_weights():
    ent = _t([0.1, 0.4, 0.2, 0.3, 0.6])  # k = max(int(0.4*5), 1) = 2 -> thr 0.2
    pl = _t([0.5, 0.0, 0.1, 0.2, 0.3])
    # the reference's grouping: the PLPD term is 1/exp(-PLPD) + 0.1 = exp(PLPD) + 0.1
    expected = [1 / (math.exp(e - 0.2) + 0.1) + math.exp(p) + 0.1 for e, p in zip(ent.tolist(), pl.tolist())]
    assert deyo_weights(ent, pl, 0.4).tolist() == pytest.approx(expected, rel=1e-6)
    # hand-computed: E = thr (0.2), PLPD 0.1 -> 1/1.1 + e^0.1 + 0.1; PLPD 0 (text queries) -> 1/1.1 + 1.1
    w = deyo_weights(_t([0.2, 0.2]), _t([0.1, 0.0]), 0.4).tolist()
    assert w == pytest.approx([1 / 1.1 + 1.1051709180756477 + 0.1, 1 / 1.1 + 1.1], rel=1e-6)


def test_deyo_keeps_only_positive_plpd_for_images(model, gallery, monkeypatch):
    tta = build_method("deyo", model, "image", gallery["text"], steps=1)
    x = _images(BATCH)
    forced = _t([0.3, -0.1, 0.2])  # PLPD of the 3 reliable samples (strictly below the 4th smallest)
    monkeypatch.setattr(tta, "shuffle_plpd", lambda xs, logits: forced[:len(xs)])
    out = tta(x)
    assert out.stats["n_reliable"] == 3 and out.stats["n_selected"] == 2


def test_deyo_text_queries_have_plpd_off(model, gallery):
    tta = build_method("deyo", model, "text", gallery["image"], steps=1)
    tokens = model.tokenize(["red circle left", "blue square", "a small red square", "large blue circle",
                             "two green triangles", "a tiny yellow star", "blue square right", "red on grey"])
    out = tta(tokens)
    assert out.stats["plpd"] == 0.0 and out.stats["n_selected"] == out.stats["n_reliable"] == 3


# --------------------------------------------------------------------------------------------
# TCR training-free variant
# --------------------------------------------------------------------------------------------
def test_scale_and_shift_hand_made():
    zq = _t([[1.0, 0.0], [0.0, 1.0]])  # mean (0.5, 0.5)
    zg_bar = _t([0.5, -1.5])  # Delta_T = ||(0.5, 0.5) - (0.5, -1.5)|| = 2
    out = scale_and_shift(zq, zg_bar, torch.tensor(0.5), 2.0)
    # scale: (0.5,0.5) + 2*((0.5,-0.5), (-0.5,0.5)) = (1.5,-0.5), (-0.5,1.5)
    # shift: (1 - 0.5/2) * ((0.5,-1.5) - (0.5,0.5)) = 0.75 * (0, -2) = (0, -1.5)
    assert torch.allclose(out, _t([[1.5, -2.0], [-0.5, 0.0]]))
    assert float((out.mean(0) - zg_bar).norm()) == pytest.approx(0.5)  # the gap becomes Delta_S
    assert torch.allclose(scale_and_shift(zq, zg_bar, None, 2.0), _t([[1.5, -0.5], [-0.5, 1.5]]))


def test_tcr_untrain_scores_hand_made(model, monkeypatch):
    gallery = _t([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    tta = build_method("tcr_untrain", model, "image", gallery, hparams={"con_ratio": 0.5})
    zq = F.normalize(_t([[1.0, 0.2], [0.3, 1.0], [0.9, -0.1], [0.2, 0.8]]), dim=1)
    monkeypatch.setattr(tta, "encode", lambda x: zq)
    out = tta(torch.zeros(4))
    # queue: SI from the pairs (zq_i, its argmax gallery item); push int(0.5*4) = 2 smallest
    pos = gallery[(zq @ gallery.T).argmax(1)]
    si = 2 * (zq - pos).norm(dim=1) - (zq - zq.mean(0)).norm(dim=1) - (pos - pos.mean(0)).norm(dim=1)
    sel = si.argsort()[:2]
    delta_s = (zq[sel].mean(0) - pos[sel].mean(0)).norm()
    delta_t = (zq.mean(0) - pos.mean(0)).norm()
    z = zq.mean(0) + 2 * (zq - zq.mean(0))
    z = z + (1 - delta_s / delta_t) * (pos.mean(0) - zq.mean(0))
    assert torch.allclose(out.scores, F.normalize(z, dim=1) @ gallery.T, atol=1e-6)
    assert out.stats["delta_s"] == pytest.approx(float(delta_s), rel=1e-5)
    assert not tta.adapts and tta.optimizer is None


# --------------------------------------------------------------------------------------------
# REST (reconstruction)
# --------------------------------------------------------------------------------------------
def test_decouple_removes_conflicts_and_bounds_the_norm():
    g = torch.Generator().manual_seed(0)
    n_conflicting = 0
    for _ in range(200):
        g_t, g_s = torch.randn(50, generator=g) * 3, torch.randn(50, generator=g)
        out, before, after = decouple(g_t, g_s, max_norm=1.0)
        conflicting = float(g_t @ g_s) < 0
        n_conflicting += conflicting
        assert float(out @ g_s) >= -1e-5 * float(out.norm() * g_s.norm())
        assert float(out.norm()) <= 1.0 + 1e-6
        assert (before > 90) == conflicting
        assert after == pytest.approx(90.0, abs=1e-3) if conflicting else after == pytest.approx(before, abs=1e-3)
        if not conflicting:  # agreeing gradients keep their direction
            assert torch.allclose(F.normalize(out, dim=0), F.normalize(g_t, dim=0), atol=1e-5)
    assert 50 < n_conflicting < 150


def test_decouple_hand_made():
    out, before, after = decouple(_t([-1.0, 1.0]), _t([1.0, 0.0]), max_norm=10.0)
    assert out.tolist() == [0.0, 1.0] and before == pytest.approx(135.0) and after == pytest.approx(90.0)
    out, _, _ = decouple(_t([3.0, 4.0]), _t([1.0, 0.0]), max_norm=1.0)
    assert out.tolist() == pytest.approx([0.6, 0.8])
    out, before, after = decouple(_t([3.0, 4.0]), _t([0.0, 0.0]), max_norm=10.0)  # g_s = 0: untouched
    assert out.tolist() == [3.0, 4.0] and math.isnan(before) and math.isnan(after)


def test_rest_consistency_and_distillation_losses():
    zq = _t([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    pos = _t([[0.6, 0.8], [0.0, 1.0], [1.0, 0.0]])
    ent = _t([0.5, 0.2, 2.0])  # E_m = 1: the third query fails the filter
    w = [1 - 0.5 / 1.001, 1 - 0.2 / 1.001]
    expected = (w[0] * (1 - 0.6) + w[1] * 0.0) / 2
    assert float(consistency_loss(zq, pos, ent, torch.tensor(1.0))) == pytest.approx(expected, rel=1e-6)
    assert consistency_loss(zq, pos, ent, torch.tensor(0.1)) is None
    assert float(distillation_loss(zq, pos)) == pytest.approx((0.4 + 0.0 + 0.4) / 3, rel=1e-6)


def test_rest_source_embeddings_use_source_params_and_restore_the_adapted_ones(model, gallery):
    tta = build_method("rest", model, "image", gallery["text"])
    x = _images(4)
    z0 = model.encode("image", x).detach()
    with torch.no_grad():
        for p in tta.params:
            p.add_(0.1)
    adapted = [p.detach().clone() for p in tta.params]
    assert torch.equal(tta.source_embeddings(x), z0)
    assert all(torch.equal(p, a) for p, a in zip(tta.params, adapted))


def test_rest_steps_with_the_decoupled_gradient(model, queries, gallery, monkeypatch):
    calls = []

    def spy(g_t, g_s, max_norm):
        out = decouple(g_t, g_s, max_norm)
        calls.append((g_t, g_s, out[0]))
        return out

    monkeypatch.setattr(rest_mod, "decouple", spy)
    res = _stream(model, queries, gallery, "rest_v1", hparams={"max_grad_norm": 0.05})
    assert len(calls) == res["counters"]["steps"] > 0
    assert float(calls[0][1].norm()) == 0.0  # at the source the distillation gradient vanishes
    assert any(float(g_s.norm()) > 0 for _, g_s, _ in calls)
    for _, g_s, g in calls:
        assert float(g @ g_s) >= -1e-5 * float(g.norm() * g_s.norm())
        assert float(g.norm()) <= 0.05 + 1e-6
    stats = res["online"]["stats"]
    for before, after in zip(stats["angle_before"], stats["angle_after"]):
        if after is not None:
            assert after <= 90.0 + 1e-3 and before is not None


@pytest.mark.parametrize("direction", ["i2t", "t2i"])
def test_rest_v1_reproduces_the_first_reconstructions_numbers(model, queries, gallery, direction):
    """``rest_v1`` is the REST of before REST v2, unchanged (tests/data/rest_v1_reference.json
    was recorded from that code on these fixtures)."""
    import json

    ref = json.loads((ROOT / "tests/data/rest_v1_reference.json").read_text())[direction]
    res = _stream(model, queries, gallery, "rest_v1", direction=direction, hparams={"lr": 0.01})
    assert res["metrics"] == pytest.approx(ref["metrics"], rel=1e-9)
    assert res["online"]["batch_r1"] == pytest.approx(ref["batch_r1"], rel=1e-9)
    assert res["counters"] == ref["counters"]
    assert res["online"]["stats"]["loss"] == pytest.approx(ref["loss"], rel=1e-5)
    assert res["online"]["stats"]["angle_before"] == pytest.approx(ref["angle_before"], rel=1e-4, abs=1e-3)
