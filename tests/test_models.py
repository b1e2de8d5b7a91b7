"""Model sources beyond the built-in CLIP: open_clip checkpoints and tags, transformers BLIP
(ITC) and CLIP — all offline.

Each model is a tiny randomly initialised config saved to disk with its tokenizer and image
processor (BLIP: a BERT WordPiece vocab.txt; CLIP: a byte-level BPE vocab.json + merges.txt;
open_clip: a registered architecture with a checkpoint file) and loaded through
``load_model`` — exactly the code path real weights take. Hub ids are served from a hub-layout
cache folder built here, with the network switched off.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _tiny import TINY_CLIP_ARGS, one_torch_thread
from qshift.errors import ConfigError, InputError, UnknownNameError
from qshift.models import load_model
from qshift.models.base import schemes
from qshift.models.hf import BLIP_MAX_TOKENS, pre_caption
from qshift.models.openclip import CLIP_MEAN, CLIP_STD, build_from_config, tiny_clip_config
from qshift.tta import build_method

KINDS = ("open_clip", "hf-blip", "hf-clip")
RES = 32  # every tiny model's input resolution
OC_ARCH = "qshift-test-tiny"
CAPTIONS = ["A dog, on the grass!", "", "café 日本 über", "the red cat", "a blue dog on a cat",
            "Two (2) dogs: playing; #fun ~ ok", "grass", "cat " * 80]

_thread = pytest.fixture(autouse=True, scope="module")(one_torch_thread)


# --------------------------------------------------------------------------------------------
# tiny models on disk
# --------------------------------------------------------------------------------------------
def _seeded(seed: int, build):
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return build()
    finally:
        torch.random.set_rng_state(state)


def make_tiny_blip(path: Path, seed: int = 0, retrieval: bool = True) -> Path:
    """A BlipForImageTextRetrieval (or, ``retrieval=False``, a plain BlipModel, which lacks the
    ITC projections) with a BERT WordPiece tokenizer and a 32x32 BlipImageProcessor."""
    from transformers import BertTokenizer, BlipConfig, BlipForImageTextRetrieval, BlipImageProcessor, BlipModel, \
        BlipProcessor

    path.mkdir(parents=True)
    words = ["a", "dog", "cat", "red", "blue", "on", "the", "grass", "cafe", "two", "##s"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"] + words + [c for c in letters if c not in words]
             + ["##" + c for c in letters])
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(vocab=str(path / "vocab.txt"), do_lower_case=True)
    config = BlipConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=40, encoder_hidden_size=32,
                         pad_token_id=0, bos_token_id=5, sep_token_id=3),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=RES, patch_size=8,
                           initializer_range=0.02),  # BLIP's default 1e-10 makes every image embed alike
        image_text_hidden_size=16)
    cls = BlipForImageTextRetrieval if retrieval else BlipModel
    _seeded(seed, lambda: cls(config)).save_pretrained(path)
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": RES, "width": RES}),
                  tokenizer=tokenizer).save_pretrained(path)
    return path


def make_tiny_hf_clip(path: Path, seed: int = 0) -> Path:
    """A CLIPModel with a byte-level BPE tokenizer (every byte a token, a few merges; the special
    tokens last, as in CLIP's vocabulary) and a 32x32 resize + centre-crop processor."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    path.mkdir(parents=True)
    alphabet = sorted(ByteLevel.alphabet())
    merges = ["d o", "do g</w>", "c a", "ca t</w>"]
    tokens = (alphabet + [a + "</w>" for a in alphabet] + ["do", "dog</w>", "ca", "cat</w>"]
              + ["<|startoftext|>", "<|endoftext|>"])
    (path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(vocab=str(path / "vocab.json"), merges=str(path / "merges.txt"))
    eos = len(tokens) - 1
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokens), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=eos - 1,
                         eos_token_id=eos, pad_token_id=eos),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=RES, patch_size=8),
        projection_dim=16)
    _seeded(seed, lambda: CLIPModel(config)).save_pretrained(path)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": RES},
                                                     crop_size={"height": RES, "width": RES}),
                  tokenizer=tokenizer).save_pretrained(path)
    return path


def register_tiny_open_clip_arch(folder: Path, name: str = OC_ARCH, width: int = 32) -> str:
    """A tiny architecture registered with open_clip like its built-in configs (a JSON file)."""
    import open_clip

    args = list(TINY_CLIP_ARGS)
    args[1] = {**args[1], "width": width}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(tiny_clip_config(*args)["model_cfg"]))
    open_clip.add_model_config(folder / f"{name}.json")
    return name


def make_open_clip_checkpoint(path: Path, seed: int = 0) -> Path:
    from safetensors.torch import save_file

    module = _seeded(seed, lambda: build_from_config(tiny_clip_config(*TINY_CLIP_ARGS)))
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def hub_cache_entry(cache: Path, repo: str, files: dict[str, Path]) -> None:
    """Put files into ``cache`` the way huggingface_hub lays out a downloaded repo."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, src in files.items():
        (snap / name).write_bytes(src.read_bytes())


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    register_tiny_open_clip_arch(root / "configs")
    return {"hf-blip": make_tiny_blip(root / "blip"), "hf-clip": make_tiny_hf_clip(root / "clip"),
            "open_clip": make_open_clip_checkpoint(root / "tiny-oc.safetensors"), "root": root}


def source(dirs, kind: str) -> str:
    return f"open_clip:{OC_ARCH}@{dirs[kind]}" if kind == "open_clip" else f"{kind}:{dirs[kind]}"


@pytest.fixture
def offline(monkeypatch):
    """No network, as on a compute node (HF_HUB_OFFLINE=1, read at call time)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def images(n: int, seed: int = 0) -> list[Image.Image]:
    """Random RGB images of assorted sizes and aspect ratios."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (int(rng.integers(20, 90)), int(rng.integers(20, 90)), 3),
                                         dtype=np.uint8)) for _ in range(n)]


def pixels(model, ims) -> torch.Tensor:
    t = model.image_transform()
    return torch.stack([t(im) for im in ims])


# --------------------------------------------------------------------------------------------
# loading, encoding, preprocessing
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_encodes_images_and_captions_to_unit_vectors(dirs, kind):
    model = load_model(source(dirs, kind), cache_dir=dirs["root"] / "cache")
    assert not model.module.training and not any(p.requires_grad for p in model.module.parameters())
    dim = 32 if kind == "open_clip" else 16
    with torch.no_grad():
        zi = model.encode("image", pixels(model, images(3)))
        zt = model.encode("text", model.tokenize(CAPTIONS))
    assert zi.shape == (3, dim) and zt.shape == (len(CAPTIONS), dim)
    for z in (zi, zt):
        assert torch.isfinite(z).all()
        torch.testing.assert_close(z.norm(dim=-1), torch.ones(len(z)))
    assert not torch.allclose(zi[0], zi[1]) and not torch.allclose(zt[0], zt[3])


@pytest.mark.parametrize("kind", KINDS)
def test_preprocessing_gives_the_configured_resolution_and_normalisation(dirs, kind):
    model = load_model(source(dirs, kind))
    x = pixels(model, [Image.new("RGB", (70, 45), (255, 0, 0)), Image.new("L", (33, 90), 128)])
    assert x.shape == (2, 3, RES, RES) and x.dtype == torch.float32
    if kind != "open_clip":  # PIL resizing, as the reference BLIP/CLIP pipelines do
        assert type(model.image_processor).__name__.endswith("ImageProcessorPil")
    # a constant red image: (1 - mean) / std and (0 - mean) / std per channel, CLIP's constants
    expected = [(1 - CLIP_MEAN[0]) / CLIP_STD[0], (0 - CLIP_MEAN[1]) / CLIP_STD[1], (0 - CLIP_MEAN[2]) / CLIP_STD[2]]
    torch.testing.assert_close(x[0].mean(dim=(1, 2)), torch.tensor(expected), atol=1e-3, rtol=0)
    grey = [(128 / 255 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD)]  # greyscale became RGB
    torch.testing.assert_close(x[1].mean(dim=(1, 2)), torch.tensor(grey), atol=1e-2, rtol=0)


def test_blip_and_clip_crop_differently(dirs):
    """BLIP squashes the whole image to 384x384; CLIP resizes the short side and centre-crops."""
    blip, clip = load_model(source(dirs, "hf-blip")), load_model(source(dirs, "hf-clip"))
    im = Image.new("RGB", (96, 32), (0, 0, 255))
    im.paste((255, 255, 255), (0, 0, 32, 32))  # the leftmost third white
    xb, xc = pixels(blip, [im])[0], pixels(clip, [im])[0]
    white = (1 - CLIP_MEAN[1]) / CLIP_STD[1]
    assert xb[1, :, :8].mean() == pytest.approx(white, abs=0.05)  # squashed: still on the left
    assert xc[1].max() < white - 1  # cropped away


@pytest.mark.parametrize("kind", KINDS)
def test_tokenize_handles_empty_non_ascii_and_long_captions(dirs, kind):
    model = load_model(source(dirs, kind))
    ids = model.tokenize(CAPTIONS)
    assert ids.dtype == torch.long and ids.shape[0] == len(CAPTIONS)
    width = {"open_clip": TINY_CLIP_ARGS[2]["context_length"], "hf-blip": BLIP_MAX_TOKENS, "hf-clip": 16}[kind]
    assert ids.shape[1] == width  # fixed length: long captions truncated, short ones padded
    assert len(set(ids[2].tolist())) > 3  # the non-ASCII caption is not all padding
    assert model.tokenize([""]).shape == (1, width)


def test_blip_caption_cleanup_follows_blip_retrieval():
    assert pre_caption('A man (left) rides: a "horse"!  ~ Now.') == "a man left rides a horse now"
    assert pre_caption(" ".join(f"w{i}" for i in range(40))) == " ".join(f"w{i}" for i in range(30))
    assert pre_caption("") == ""
    once = pre_caption("Héllo, WORLD; #1 ...")
    assert once == "héllo, world 1" and pre_caption(once) == once  # commas kept; idempotent


def test_blip_tokens_see_the_cleaned_caption(dirs):
    blip = load_model(source(dirs, "hf-blip"))
    assert torch.equal(blip.tokenize(["The RED dog!!! (on grass)"]), blip.tokenize(["the red dog on grass"]))


def test_blip_itc_matches_the_retrieval_models_own_scores(dirs):
    """Our two-tower encoding reproduces BlipForImageTextRetrieval(use_itm_head=False)."""
    blip = load_model(source(dirs, "hf-blip"))
    x, caps = pixels(blip, images(2)), ["a red dog", "the blue cat on the grass"]
    ids = blip.tokenize(caps)
    with torch.no_grad():
        ours = blip.encode("image", x) @ blip.encode("text", ids).T
        enc = blip.tokenizer([pre_caption(c) for c in caps], padding=True, return_tensors="pt")
        ref = blip.module(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], pixel_values=x,
                          use_itm_head=False).itm_score
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)


def test_hf_clip_matches_get_features_with_attention_mask(dirs):
    """Fixed-length padding without a mask gives what HF's own padded+masked call gives."""
    clip = load_model(source(dirs, "hf-clip"))
    caps = ["a dog", "the red cat on a dog"]
    with torch.no_grad():
        ours = clip.encode("text", clip.tokenize(caps))
        enc = clip.tokenizer(caps, padding=True, return_tensors="pt")
        ref = clip.module.get_text_features(**enc).pooler_output
        ref_img = clip.module.get_image_features(pixel_values=pixels(clip, images(2))).pooler_output
        ours_img = clip.encode("image", pixels(clip, images(2)))
    torch.testing.assert_close(ours, torch.nn.functional.normalize(ref, dim=-1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours_img, torch.nn.functional.normalize(ref_img, dim=-1), atol=1e-5, rtol=1e-4)


def test_local_dir_still_loads_the_built_in_layout(tmp_path):
    from _tiny import make_tiny_clip_dir

    model = load_model(f"local-dir:{make_tiny_clip_dir(tmp_path / 'm')}", cache_dir=tmp_path / "unused")
    assert model.name == "m" and pixels(model, images(1)).shape == (1, 3, RES, RES)
    assert not (tmp_path / "unused").exists()


def test_open_clip_checkpoint_formats_load_the_same_weights(dirs, tmp_path):
    pt = make_open_clip_checkpoint(tmp_path / "tiny.pt")
    a = load_model(source(dirs, "open_clip"))
    b = load_model(f"open_clip:{OC_ARCH}@{pt}")
    assert a.name == f"{OC_ARCH}@tiny-oc.safetensors"
    sa, sb = a.module.state_dict(), b.module.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_clip4cir_fine_tuned_clip_loads_its_clip_weights(dirs, tmp_path):
    """CLIP4Cir's clip_fine_tune.py checkpoint ({"epoch", "CLIP": state_dict}, here with a
    DataParallel prefix) through the same open_clip:ARCH@PATH source, with OpenAI's QuickGELU."""
    from safetensors.torch import load_file

    state = load_file(str(dirs["open_clip"]))
    torch.save({"epoch": 3, "CLIP": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "tuned_clip_best.pt")
    model = load_model(f"open_clip:{OC_ARCH}@{tmp_path / 'tuned_clip_best.pt'}")
    assert model.name == f"{OC_ARCH}@tuned_clip_best.pt"
    got = model.module.state_dict()
    assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)
    acts = {type(m).__name__ for m in model.module.modules()}
    assert "QuickGELU" in acts, acts  # OpenAI's activation (CLIP4Cir fine-tunes OpenAI CLIPs)
    assert not any(p.requires_grad for p in model.module.parameters())
    plain = load_model(source(dirs, "open_clip"))  # the same weights as a plain checkpoint: another activation
    assert "QuickGELU" not in {type(m).__name__ for m in plain.module.modules()}
    bad = {k: v for k, v in state.items() if k != "ln_final.weight"}
    torch.save({"epoch": 1, "CLIP": bad}, tmp_path / "partial.pt")
    with pytest.raises(InputError, match=r"CLIP4Cir checkpoint .*partial\.pt: its 'CLIP' weights do not fit open_clip "
                                         r"architecture"):
        load_model(f"open_clip:{OC_ARCH}@{tmp_path / 'partial.pt'}")


def test_targetpad_preprocess_equals_clip4cir_s_own_transform(dirs):
    """model.preprocess: targetpad against CLIP4Cir's data_utils.targetpad_transform run on the same
    images (tests/data/clip4cir_targetpad_golden.md): the same tensors, bit for bit."""
    import numpy as np
    from PIL import Image

    from qshift.models.reference import targetpad_transform

    golden = np.load(Path(__file__).parent / "data" / "clip4cir_targetpad_golden.npz")
    sizes = [(640, 480), (500, 333), (300, 290), (200, 400), (64, 64), (90, 30)]
    for i, (w, h) in enumerate(sizes):
        img = Image.fromarray(np.random.default_rng(1000 + i).integers(0, 256, size=(h, w, 3), dtype=np.uint8))
        for dim in (64, 101):
            assert np.array_equal(targetpad_transform(dim)(img).numpy(), golden[f"{w}x{h}_{dim}"]), (w, h, dim)
    model = load_model(source(dirs, "open_clip"), preprocess="targetpad")
    assert model.preprocess == "targetpad"
    img = Image.fromarray(np.zeros((20, 60, 3), dtype=np.uint8) + 255)  # 3:1 -> padded to 1.25:1 with black
    x = model.image_transform()(img)
    assert x.shape[-2:] == (RES, RES) and x[:, 0, RES // 2] .min() < x[:, RES // 2, RES // 2].min()


# --------------------------------------------------------------------------------------------
# norm layers and TTA
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_norm_layers_are_that_towers_layernorms(dirs, kind):
    model = load_model(source(dirs, kind))
    img, txt = ({n for n, _ in model.norm_layers(m)} for m in ("image", "text"))
    assert img and txt and not img & txt
    all_ln = {n for n, m in model.module.named_modules() if isinstance(m, torch.nn.LayerNorm)}
    assert img | txt <= all_ln
    expected = {
        "open_clip": ({"visual.ln_pre", "visual.ln_post"}, "visual.", {"ln_final"}),
        "hf-blip": ({"vision_model.post_layernorm", "vision_model.encoder.layers.1.layer_norm2"}, "vision_model.",
                    {n for n in all_ln if "crossattention" in n}),
        "hf-clip": ({"vision_model.pre_layrnorm", "vision_model.post_layernorm"}, "vision_model.",
                    {"text_model.final_layer_norm"}),
    }[kind]
    must, prefix, left_out = expected
    assert must <= img and all(n.startswith(prefix) for n in img)
    assert img == {n for n in all_ln if n.startswith(prefix)}  # every LayerNorm of the vision tower
    assert left_out and not txt & left_out and txt | left_out | img == all_ln  # text: all but the excluded
    n_layers = 2 if kind != "open_clip" else TINY_CLIP_ARGS[2]["layers"]
    assert len(txt) >= 2 * n_layers


@pytest.mark.parametrize("modality", ["image", "text"])
@pytest.mark.parametrize("method", ["tent", "tcr"])
@pytest.mark.parametrize("kind", KINDS)
def test_tta_steps_change_only_the_query_towers_norm_parameters(dirs, kind, method, modality):
    model = load_model(source(dirs, kind))
    other = "text" if modality == "image" else "image"
    with torch.no_grad():
        gallery = model.encode(other, model.tokenize(CAPTIONS) if other == "text" else pixels(model, images(8, 1)))
    x = pixels(model, images(8)) if modality == "image" else model.tokenize(CAPTIONS)
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    adapter = build_method(method, model, modality, gallery, {"lr": 0.05}, steps=2)
    allowed = {f"{n}.{p}" for n, layer in model.norm_layers(modality) for p in ("weight", "bias")
               if getattr(layer, p) is not None}
    trainable = {n for n, p in model.module.named_parameters() if p.requires_grad}
    assert trainable == allowed
    for _ in range(2):
        out = adapter(x)
    assert out.scores.shape == (len(x), len(gallery)) and torch.isfinite(out.scores).all()
    after = model.module.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= allowed, changed - allowed
    assert adapter.counters["steps"] > 0
    adapter.close()  # the source model comes back bit for bit, frozen
    assert all(torch.equal(before[k], v) for k, v in model.module.state_dict().items())
    assert not any(p.requires_grad for p in model.module.parameters())


# --------------------------------------------------------------------------------------------
# the hub cache: pretrained tags and hub ids load offline; missing ones say how to pre-fetch
# --------------------------------------------------------------------------------------------
def test_open_clip_tag_loads_from_the_cache_offline(dirs, tmp_path, monkeypatch, offline):
    """A tag resolves to the cached hub file; its QuickGELU flag and normalisation apply."""
    import open_clip
    from open_clip import pretrained as ocp

    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    monkeypatch.setitem(ocp._PRETRAINED, OC_ARCH, {"qshift_test": ocp._pcfg(
        hf_hub="qshift/tiny-open-clip/", quick_gelu=True, mean=mean, std=std)})
    cache = tmp_path / "cache"
    hub_cache_entry(cache, "qshift/tiny-open-clip", {"open_clip_model.safetensors": dirs["open_clip"]})
    model = load_model(f"open_clip:{OC_ARCH}@qshift-test", cache_dir=cache)
    assert model.name == f"{OC_ARCH}@qshift-test"
    ref = load_model(source(dirs, "open_clip")).module.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in model.module.state_dict().items())
    assert any(isinstance(m, open_clip.transformer.QuickGELU) for m in model.module.modules())
    x = pixels(model, [Image.new("RGB", (40, 40), (0, 0, 0))])[0]
    torch.testing.assert_close(x.mean(dim=(1, 2)), -torch.tensor(mean) / torch.tensor(std))


def test_open_clip_hub_repo_loads_from_the_cache_offline(dirs, tmp_path, offline):
    cfg = tiny_clip_config(*TINY_CLIP_ARGS)
    (tmp_path / "open_clip_config.json").write_text(json.dumps(cfg))
    cache = tmp_path / "cache"
    hub_cache_entry(cache, "qshift/tiny-hub", {"open_clip_config.json": tmp_path / "open_clip_config.json",
                                               "open_clip_model.safetensors": dirs["open_clip"]})
    model = load_model("open_clip:hf-hub:qshift/tiny-hub", cache_dir=cache)
    assert model.name == "tiny-hub"
    ref = load_model(source(dirs, "open_clip")).module.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in model.module.state_dict().items())


@pytest.mark.parametrize("kind", ["hf-blip", "hf-clip"])
def test_hf_hub_id_loads_from_the_cache_offline(dirs, tmp_path, kind, offline):
    cache = tmp_path / "cache"
    hub_cache_entry(cache, f"qshift/tiny-{kind}", {p.name: p for p in dirs[kind].iterdir()})
    model = load_model(f"{kind}:qshift/tiny-{kind}", cache_dir=cache)
    assert model.name == f"tiny-{kind}"
    ref = load_model(source(dirs, kind))
    with torch.no_grad():
        ids = model.tokenize(CAPTIONS[:3])
        torch.testing.assert_close(model.encode("text", ids), ref.encode("text", ids))


@pytest.mark.parametrize("src", ["open_clip:ViT-B-16@openai", "open_clip:hf-hub:qshift/not-cached",
                                 "hf-blip:Salesforce/blip-itm-base-coco", "hf-clip:openai/clip-vit-base-patch16"])
def test_uncached_weights_offline_say_how_to_prefetch(tmp_path, src, offline):
    cache = tmp_path / "empty-cache"
    with pytest.raises(InputError) as e:
        load_model(src, cache_dir=cache)
    msg = str(e.value)
    assert src in msg and str(cache) in msg and "scripts/fetch_models.py" in msg and "HF_HUB_OFFLINE" in msg


def test_fetch_script_loads_and_checks_offline(dirs, tmp_path, capsys, monkeypatch, offline):
    import runpy

    cache = tmp_path / "cache"
    hub_cache_entry(cache, "qshift/tiny-clip", {p.name: p for p in dirs["hf-clip"].iterdir()})
    script = Path(__file__).resolve().parents[1] / "scripts" / "fetch_models.py"
    monkeypatch.setattr("sys.argv", [str(script), "--cache-dir", str(cache), "hf-clip:qshift/tiny-clip"])
    runpy.run_path(str(script), run_name="__main__")
    assert "hf-clip:qshift/tiny-clip: tiny-clip" in capsys.readouterr().out
    monkeypatch.setattr("sys.argv", [str(script), "--cache-dir", str(tmp_path / "none"), "hf-clip:qshift/nothing"])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(script), run_name="__main__")
    assert e.value.code == 2 and "not in the cache" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# clear errors
# --------------------------------------------------------------------------------------------
def test_unknown_scheme_and_missing_scheme_name_the_valid_schemes():
    assert {"local-dir", "open_clip", "hf-blip", "hf-clip"} <= set(schemes())
    with pytest.raises(UnknownNameError, match="cav-mae, hf-blip, hf-clip, irra, local-dir, open_clip"):
        load_model("hf-bliip:Salesforce/blip-itm-base-coco")
    with pytest.raises(ConfigError, match="SCHEME:IDENTIFIER.*cav-mae, hf-blip, hf-clip, irra, local-dir, open_clip"):
        load_model("Salesforce/blip-itm-base-coco")


@pytest.mark.parametrize("src, missing", [("hf-blip:/no/such/blip", "/no/such/blip"),
                                          ("hf-clip:./no/such/clip", "no/such/clip"),
                                          ("local-dir:/no/such/dir", "/no/such/dir"),
                                          ("open_clip:ViT-B-16@/no/such/ckpt.pt", "/no/such/ckpt.pt")])
def test_missing_path_names_path_and_schemes(src, missing):
    with pytest.raises(InputError) as e:
        load_model(src)
    msg = str(e.value)
    assert missing in msg and "not found" in msg and "cav-mae, hf-blip, hf-clip, irra, local-dir, open_clip" in msg


def test_open_clip_errors_name_close_architectures_and_valid_tags():
    with pytest.raises(ConfigError, match="unknown open_clip architecture 'ViT-B-61'.*close matches: .*ViT-B-16"):
        load_model("open_clip:ViT-B-61@openai")
    with pytest.raises(ConfigError, match="unknown pretrained tag 'nope' .*'ViT-B-16'; valid tags: openai, "):
        load_model("open_clip:ViT-B-16@nope")
    with pytest.raises(ConfigError, match="names no weights.*openai"):
        load_model("open_clip:ViT-B-16")


def test_checkpoint_for_another_architecture_is_rejected(dirs):
    wide = register_tiny_open_clip_arch(dirs["root"] / "configs", f"{OC_ARCH}-wide", width=64)
    with pytest.raises(InputError, match=f"does not fit open_clip architecture '{wide}'"):
        load_model(f"open_clip:{wide}@{dirs['open_clip']}")
    (dirs["root"] / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match=f"garbage.pt does not fit open_clip architecture '{OC_ARCH}'"):
        load_model(f"open_clip:{OC_ARCH}@{dirs['root'] / 'garbage.pt'}")


def test_hf_scheme_and_checkpoint_kind_are_checked(dirs, tmp_path):
    with pytest.raises(ConfigError, match="is a 'blip' model, but hf-clip: loads 'clip' models; write hf-blip:"):
        load_model(f"hf-clip:{dirs['hf-blip']}")
    needs = "lacks weights BlipForImageTextRetrieval needs for retrieval: text_proj.bias, text_proj.weight, vision_proj"
    with pytest.raises(InputError, match=needs):
        load_model(f"hf-blip:{make_tiny_blip(tmp_path / 'plain', retrieval=False)}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="has no config.json"):
        load_model(f"hf-blip:{tmp_path / 'empty'}")
