"""Pre-training the built-in CLIP (src/qshift/models/train.py): the compact-vocabulary
speed-up is exact, training is deterministic, and the saved folder holds no timings."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file

from _tiny import one_torch_thread
from qshift.models import load_model
from qshift.models.openclip import CONFIG_NAME, WEIGHTS_NAME
from qshift.models.openclip import CLIP_MEAN, CLIP_STD
from qshift.models.train import TIMING_KEYS, compact_vocabulary, expand_vocabulary, normalise, pretrain

_one_thread = pytest.fixture(autouse=True, scope="module")(one_torch_thread)

CFG = {"embed_dim": 32, "vision": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "heads": 2},
       "text": {"context_length": 40, "width": 32, "layers": 1, "heads": 2}, "steps": 4, "batch_size": 16,
       "lr": 1.0e-3, "weight_decay": 0.1, "warmup": 2, "init_temperature": 0.07}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    from qshift.data.builtin import generate_builtin

    root = tmp_path_factory.mktemp("pretrain-data")
    generate_builtin(root, n_train=24, n_val=4, n_test=6, image_size=32, seed=0, progress=False)
    return root / "manifest.json"


def _train(manifest, out, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # e.g. "Converting a tensor with requires_grad=True ..."
        return pretrain(manifest, out, CFG, seed=3, device=torch.device("cpu"), progress=False, **kw)


def test_compact_vocabulary_trains_exactly_like_the_full_one(manifest, tmp_path):
    compact = _train(manifest, tmp_path / "compact")
    full = _train(manifest, tmp_path / "full", compact_vocab=False)
    assert 20 < compact["vocabulary"] < 200 and full["vocabulary"] == 49408
    a, b = load_file(tmp_path / "compact" / WEIGHTS_NAME), load_file(tmp_path / "full" / WEIGHTS_NAME)
    assert a.keys() == b.keys() and a["token_embedding.weight"].shape == (49408, 32)
    # bit-identical; allclose only if a kernel sums in another order
    diff = {k: (a[k] - b[k]).abs().max().item() for k in a}
    assert max(diff.values()) <= 1e-6, diff
    assert compact["final_loss"] == pytest.approx(full["final_loss"], abs=1e-5)


def test_same_seed_identical_weights_and_no_timings_in_the_model_folder(manifest, tmp_path):
    m1 = _train(manifest, tmp_path / "a")
    m2 = _train(manifest, tmp_path / "b")
    for name in (WEIGHTS_NAME, CONFIG_NAME):  # byte-identical: a retrain changes nothing DVC tracks
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    doc = json.loads((tmp_path / "a" / CONFIG_NAME).read_text())
    assert not any(k in json.dumps(doc) for k in TIMING_KEYS)
    assert doc["qshift"]["metrics"]["steps"] == 4
    # the timings are returned (for reports/pretrain.json)
    assert m1["train_seconds"] >= 0 and m1["steps_per_second"] > 0 and "data_seconds" in m1  # 0.0 s when fast
    assert {k: v for k, v in m1.items() if k not in TIMING_KEYS} == {k: v for k, v in m2.items() if k not in TIMING_KEYS}


def test_saved_model_loads_with_the_standard_tokenizer_and_trained_rows(manifest, tmp_path):
    from qshift.data.manifest import load_split

    _train(manifest, tmp_path / "m")
    model = load_model(f"local-dir:{tmp_path / 'm'}")
    caps = load_split(manifest, "test").captions
    toks = model.tokenize(caps)
    assert toks.max().item() == 49407  # open_clip's own ids: no mapping needed at load time
    z = model.encode("text", toks)
    assert z.shape == (len(caps), 32) and torch.isfinite(z).all()


def test_compact_and_expand_round_trip_keeps_argmax_pooling():
    import open_clip

    from qshift.models.openclip import build_from_config, tiny_clip_config

    torch.manual_seed(0)
    model = build_from_config(tiny_clip_config(CFG["embed_dim"], CFG["vision"], CFG["text"], 0.07)).eval()
    before = model.token_embedding.weight.clone()
    toks = open_clip.tokenize(["a red ball", "a blue box", "a red ball"], context_length=40)
    with torch.no_grad():
        ref = model.encode_text(toks)
        used, lut = compact_vocabulary(model, toks)
        assert model.token_embedding.num_embeddings == len(used) < 20
        assert (lut[toks].argmax(-1) == toks.argmax(-1)).all()  # EOT stays the largest id
        assert torch.equal(model.encode_text(lut[toks]), ref)
        model.token_embedding.weight.add_(1.0)  # "training"
        expand_vocabulary(model, used)
    after = model.token_embedding.weight
    assert after.shape == before.shape
    assert torch.equal(after[used], before[used] + 1.0)
    rest = torch.ones(len(before), dtype=torch.bool)
    rest[used] = False
    assert torch.equal(after[rest], before[rest])


def test_config_checks_the_choices_training_has_with_its_defaults_first():
    from qshift.config import PRETRAIN_CHOICES
    from qshift.models import muon, train

    assert PRETRAIN_CHOICES == {"matmul": train.MATMUL, "optimizer": train.OPTIMIZERS,
                                "muon_precision": tuple(muon.PRECISIONS)}
    assert muon.PRECISIONS and list(muon.PRECISIONS)[0] == muon.DEFAULT_PRECISION
    assert train.MATMUL[0] == "fp32" and train.OPTIMIZERS[0] == "adamw"  # what a recipe without the key runs


def test_normalise_in_place_is_the_plain_expression_bit_for_bit_and_leaves_its_input():
    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=g)
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    assert torch.equal(normalise(u8), (u8.float() / 255.0 - mean) / std)
    f32 = u8.float()  # a float input is copied, not normalised in place
    before = f32.clone()
    assert torch.equal(normalise(f32), (before / 255.0 - mean) / std) and torch.equal(f32, before)


def test_trimmed_text_batch_encodes_like_the_full_context():
    """Training trims each text batch to its longest caption; under the causal mask that is the
    same function as open_clip's encode_text (up to float rounding), for mixed lengths."""
    import open_clip

    from qshift.models.openclip import build_from_config, tiny_clip_config
    from qshift.models.train import encode_text_trimmed

    torch.manual_seed(0)
    model = build_from_config(tiny_clip_config(CFG["embed_dim"], CFG["vision"], CFG["text"], 0.07)).eval()
    caps = ["a red ball", "a small blue box to the left of a big green circle on stripes", "ball"]
    toks = open_clip.tokenize(caps, context_length=40)
    assert int((toks != 0).sum(1).max()) < 40  # there is padding to trim
    with torch.no_grad():
        full, trimmed = model.encode_text(toks), encode_text_trimmed(model, toks)
    assert trimmed.shape == full.shape
    torch.testing.assert_close(trimmed, full, atol=1e-5, rtol=1e-5)
    bad = toks.clone()
    bad[0, 2] = 49407  # a batch whose EOT sits elsewhere pools elsewhere: the check can fail
    with torch.no_grad():
        assert not torch.allclose(encode_text_trimmed(model, bad)[0], full[0])


def test_matmul_precision_runs_what_the_hardware_has_and_restores_it():
    from qshift.models.train import matmul_precision

    cpu = torch.device("cpu")
    before = torch.backends.mkldnn.matmul.fp32_precision
    with matmul_precision("fp32", cpu) as ran:
        assert ran == "fp32" and torch.backends.mkldnn.matmul.fp32_precision == before
    with matmul_precision("fast", cpu) as ran:  # the CPU stays fp32 (oneDNN bf16 measured slower)
        assert ran == "fp32" and torch.backends.mkldnn.matmul.fp32_precision == before
    cuda_before = torch.backends.cuda.matmul.fp32_precision
    with matmul_precision("fast", torch.device("cuda")) as ran:  # sets the flag only; nothing runs on CUDA here
        assert ran == "tf32" and torch.backends.cuda.matmul.fp32_precision == "tf32"
    assert torch.backends.cuda.matmul.fp32_precision == cuda_before
    with pytest.raises(ValueError, match="pretrain.matmul 'half'; valid: fp32, fast"):
        with matmul_precision("half", cpu):
            pass


def test_fast_matmul_is_recorded_and_deterministic(manifest, tmp_path):
    cfg = {**CFG, "matmul": "fast"}
    runs = [pretrain(manifest, tmp_path / n, cfg, seed=3, device=torch.device("cpu"), progress=False) for n in "ab"]
    assert runs[0]["matmul"] == "fp32"
    assert (tmp_path / "a" / WEIGHTS_NAME).read_bytes() == (tmp_path / "b" / WEIGHTS_NAME).read_bytes()
    assert torch.backends.mkldnn.matmul.fp32_precision == "none"  # evaluation and later stages: fp32


def test_fused_optimizer_is_deterministic_and_the_same_update_up_to_rounding(manifest, tmp_path):
    """pretrain.fused_optimizer: torch's fused AdamW kernel, the same update as the per-tensor loop
    up to float rounding (4 steps apart by ~1e-5), and the same bytes run after run."""
    fused = {**CFG, "fused_optimizer": True}
    for name, cfg in (("a", fused), ("b", fused), ("loop", CFG)):
        pretrain(manifest, tmp_path / name, cfg, seed=3, device=torch.device("cpu"), progress=False)
    a, b, loop = (load_file(str(tmp_path / n / WEIGHTS_NAME)) for n in ("a", "b", "loop"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert max((a[k] - loop[k]).abs().max().item() for k in a) < 1e-3


def test_muon_optimizer_is_deterministic_keeps_the_compact_vocabulary_exact_and_is_another_recipe(manifest, tmp_path):
    """pretrain.optimizer: muon — Muon on the transformer blocks' matrices, AdamW on the rest: the
    same bytes run after run, the compact vocabulary still exact (the embedding stays with AdamW),
    and a different update from AdamW's where (and only where) Muon steps."""
    from qshift.models.train import _muon_matrix, build_optimizer
    from qshift.models.openclip import build_from_config, tiny_clip_config

    muon = {**CFG, "optimizer": "muon"}
    for name, cfg, kw in (("a", muon, {}), ("b", muon, {}), ("full", muon, {"compact_vocab": False}),
                          ("adamw", CFG, {})):
        m = pretrain(manifest, tmp_path / name, cfg, seed=3, device=torch.device("cpu"), progress=False, **kw)
        assert m["optimizer"] == cfg.get("optimizer", "adamw")
    a, b, full, adamw = (load_file(str(tmp_path / n / WEIGHTS_NAME)) for n in ("a", "b", "full", "adamw"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert max((a[k] - full[k]).abs().max().item() for k in a) <= 1e-6
    stepped = [k for k in a if ".resblocks." in f".{k}" and a[k].ndim == 2]
    assert stepped and all(not torch.allclose(a[k], adamw[k], atol=1e-4) for k in stepped)
    # the optimizer split: every trainable parameter in exactly one of the two optimizers
    model = build_from_config(tiny_clip_config(CFG["embed_dim"], CFG["vision"], CFG["text"], CFG["init_temperature"]))
    opt = build_optimizer(model, muon)
    adam_ids, muon_ids = ([id(p) for g in o.param_groups for p in g["params"]] for o in opt.optimizers)
    names = {id(p): n for n, p in model.named_parameters()}
    assert set(adam_ids).isdisjoint(muon_ids) and len(adam_ids) + len(muon_ids) == len(list(model.parameters()))
    assert all(_muon_matrix(names[i], model.get_parameter(names[i])) for i in muon_ids)
    assert "token_embedding.weight" in {names[i] for i in adam_ids}


def test_muon_bf16_is_torch_muon_bit_for_bit_and_fp32_the_same_algorithm():
    """qshift's Muon: with ``precision="bf16"`` exactly torch.optim.Muon's update (same parameters
    after several steps, bit for bit); with ``fp32`` (params.yaml's) the same iteration with less
    rounding: close to bf16's, not equal, and its update orthogonal-ish (singular values in
    Muon's ~0.5-1.5 band, where a plain gradient step's are spread far wider)."""
    from qshift.models.muon import Muon, orthogonalise

    g = torch.Generator().manual_seed(0)
    shapes = [(48, 16), (16, 48), (32, 32)]
    start = [torch.randn(s, generator=g) for s in shapes]
    grads = [[torch.randn(s, generator=g) for s in shapes] for _ in range(4)]

    def run(make):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        opt = make(params)
        for step_grads in grads:
            for p, gr in zip(params, step_grads):
                p.grad = gr.clone()
            opt.step()
        return [p.detach() for p in params]

    ref = run(lambda ps: torch.optim.Muon(ps, lr=3e-3, weight_decay=0.1, momentum=0.95,
                                          adjust_lr_fn="match_rms_adamw"))
    bf16 = run(lambda ps: Muon(ps, lr=3e-3, weight_decay=0.1, momentum=0.95, precision="bf16"))
    fp32 = run(lambda ps: Muon(ps, lr=3e-3, weight_decay=0.1, momentum=0.95, precision="fp32"))
    assert all(torch.equal(a, b) for a, b in zip(ref, bf16))
    assert not all(torch.equal(a, b) for a, b in zip(ref, fp32))
    assert max((a - b).abs().max().item() for a, b in zip(ref, fp32)) < 2e-3
    for s in shapes:
        sv = torch.linalg.svdvals(orthogonalise(torch.randn(s, generator=g), torch.float32))
        assert 0.4 < sv.min() and sv.max() < 1.6, sv
    with pytest.raises(ValueError, match="precision 'fp16'; valid: fp32, bf16"):
        Muon([torch.nn.Parameter(torch.zeros(2, 2))], lr=1e-3, precision="fp16")
