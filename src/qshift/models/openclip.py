"""open_clip models: the built-in tiny CLIP and real pretrained CLIPs share one code path.

The built-in model is saved as an open_clip *local-dir* folder (``open_clip_config.json``
+ ``open_clip_model.safetensors``) — the very layout a hub-downloaded open_clip model has —
and loaded with ``open_clip.create_model_and_transforms("local-dir:...")``.

Sources (``model.source``):

- ``local-dir:PATH`` — such a folder;
- ``open_clip:ARCH@TAG`` — a built-in architecture with a pretrained tag, e.g.
  ``open_clip:ViT-B-16@openai`` (the query-gallery shift table's CLIP), downloaded once into
  ``model.cache_dir``;
- ``open_clip:ARCH@/path/to/checkpoint.pt`` (or ``.bin``/``.safetensors``) — a local file; a
  CLIP4Cir fine-tuned CLIP (``clip_fine_tune.py``'s ``tuned_clip_*.pt``: ``{"epoch", "CLIP":
  state_dict}`` of an OpenAI ``clip`` model, e.g. ``open_clip:RN50x4@tuned_clip_best.pt``) loads
  too: its ``CLIP`` weights into ARCH, with OpenAI's QuickGELU (pair it with ``model.combiner``
  and ``model.preprocess: targetpad``, CLIP4Cir's validation inputs);
- ``open_clip:hf-hub:ORG/NAME`` — an open_clip repo on the Hugging Face hub.

Preprocessing is open_clip's own (resolution from the architecture; mean/std, interpolation
and resize mode from the tag or the folder's ``preprocess_cfg``); OpenAI-style CLIPs resize
the shorter side to 224 (bicubic), centre-crop and normalise with CLIP's mean/std. Captions
go through open_clip's tokenizer (lowercased, cleaned, 77 tokens for real CLIPs).
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from ..errors import ConfigError, InputError
from ..io import atomic_dir
from .base import LOADERS, RetrievalModel, cache_only, hub_offline, missing_path_error, norm_layers, not_cached_error

log = logging.getLogger(__name__)
CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"
# CLIP's normalisation constants: the built-in model uses them too, like real CLIPs.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class OpenClipModel(RetrievalModel):
    def __init__(self, name: str, module: nn.Module, preprocess: Callable, tokenizer: Callable,
                 device: torch.device):
        self.name, self.module, self._preprocess, self._tokenizer = name, module, preprocess, tokenizer
        self.device = device
        self.module.to(device)

    def image_transform(self) -> Callable:
        return self._preprocess

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self._tokenizer(list(texts))

    def _encode(self, modality: str, batch: torch.Tensor) -> torch.Tensor:
        if modality == "image":
            return self.module.encode_image(batch)
        return self.module.encode_text(batch)

    def norm_layers(self, modality: str) -> list[tuple[str, nn.Module]]:
        if modality == "image":
            # every LayerNorm of the visual tower: ln_pre, per-block ln_1/ln_2, ln_post
            # (BatchNorm for ResNet towers, GroupNorm where present)
            return norm_layers(self.module.visual, prefix="visual")
        # text: the LayerNorms inside the transformer blocks, not ln_final (docs/methods.md)
        text_tower = getattr(self.module, "transformer", None)
        if text_tower is None:  # CustomTextCLIP keeps its tower under .text
            return norm_layers(self.module.text, prefix="text", exclude=("text.ln_final",))
        return norm_layers(text_tower, prefix="transformer")


def _quiet_open_clip():
    import open_clip

    logging.getLogger("open_clip").setLevel(logging.WARNING)
    return open_clip


def load_local_dir(path: str, device: torch.device, cache_dir: Path | None = None) -> OpenClipModel:
    folder = Path(path)
    if not folder.is_dir():
        raise missing_path_error(f"local-dir:{path}", folder, "an open_clip local-dir folder; train the built-in "
                                 "model with the 'pretrain' stage or point model.source elsewhere")
    if not (folder / CONFIG_NAME).is_file():
        raise InputError(f"model folder {folder} has no {CONFIG_NAME} (expected an open_clip local-dir folder; "
                         f"train the built-in model with the 'pretrain' stage or point model.source elsewhere)")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")) and not any(folder.glob("*.pt*")):
        raise InputError(f"model folder {folder} has a config but no weight file (*.safetensors, *.bin, *.pt*)")
    open_clip = _quiet_open_clip()
    source = f"local-dir:{folder}"
    module, _, preprocess = open_clip.create_model_and_transforms(source, device=device)
    tokenizer = open_clip.get_tokenizer(source)
    return OpenClipModel(folder.name, module, preprocess, tokenizer, device)


CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def _looks_like_path(value: str) -> bool:
    return "/" in value or "\\" in value or value.endswith(CHECKPOINT_SUFFIXES) or value.startswith(("~", "."))


def _check_arch(open_clip, arch: str) -> None:
    models = open_clip.list_models()
    if arch not in models:
        close = difflib.get_close_matches(arch, models, n=6, cutoff=0.6)
        raise ConfigError(f"unknown open_clip architecture {arch!r}"
                          + (f"; close matches: {', '.join(close)}" if close else "")
                          + f" ({len(models)} architectures: open_clip.list_models())")


def cached_tag_checkpoint(pcfg: dict, cache_dir: Path) -> str | None:
    """The local file of a pretrained tag if it is already in ``cache_dir`` (never downloads).

    Mirrors where :func:`open_clip.pretrained.download_pretrained` puts it: the HF hub layout
    for tags with an ``hf_hub`` entry (the safetensors alternative first), otherwise the
    URL's basename directly under ``cache_dir``."""
    from open_clip import pretrained as ocp

    if pcfg.get("file"):
        return pcfg["file"] if Path(pcfg["file"]).is_file() else None
    if pcfg.get("hf_hub") and ocp.has_hf_hub():
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(pcfg["hf_hub"])
        filename = filename or ocp.HF_WEIGHTS_NAME
        for name in [*ocp._get_safe_alternatives(filename), filename]:
            found = try_to_load_from_cache(repo, name, cache_dir=str(cache_dir))
            if isinstance(found, str):
                return found
        return None
    if pcfg.get("url"):
        target = cache_dir / os.path.basename(pcfg["url"])
        return str(target) if target.is_file() else None
    return None


def _tag_weights(open_clip, arch: str, tag: str, source: str, cache_dir: Path) -> tuple[str, dict]:
    """(local checkpoint, the tag's config) — from the cache, else downloaded into it."""
    from open_clip import pretrained as ocp

    pcfg = ocp.get_pretrained_cfg(arch, tag)
    ckpt = cached_tag_checkpoint(pcfg, cache_dir)
    if ckpt is None:
        if hub_offline():
            raise not_cached_error(source, cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        try:
            ckpt = ocp.download_pretrained(pcfg, cache_dir=str(cache_dir))
        except Exception as e:  # urllib / huggingface_hub raise many types; all mean "not fetched"
            raise not_cached_error(source, cache_dir, f"{type(e).__name__}: {e}") from None
        if not ckpt:
            raise not_cached_error(source, cache_dir, "the tag names no download location")
    return ckpt, pcfg


def _load_hub(ident: str, device: torch.device, cache_dir: Path) -> OpenClipModel:
    """``hf-hub:ORG/NAME``: open_clip_config.json + weights of a hub repo, through the cache."""
    open_clip = _quiet_open_clip()
    from open_clip import pretrained as ocp

    repo, source, cache = ident.removeprefix("hf-hub:").strip("/"), f"open_clip:{ident}", str(cache_dir)

    def fetch() -> None:
        # Fetch config and weights explicitly first: when only the weights fail, open_clip
        # carries on with random weights (a warning in a log nobody reads).
        ocp.download_pretrained_from_hf(repo, filename="open_clip_config.json", cache_dir=cache)
        ocp.download_pretrained_from_hf(repo, cache_dir=cache)

    def build() -> OpenClipModel:
        module, _, preprocess = open_clip.create_model_and_transforms(f"hf-hub:{repo}", device=device, cache_dir=cache)
        tokenizer = open_clip.get_tokenizer(f"hf-hub:{repo}", cache_dir=cache)
        return OpenClipModel(repo.split("/")[-1], module, preprocess, tokenizer, device)

    try:
        with cache_only():
            fetch()
            return build()
    except Exception as e:  # not (fully) cached: only a download can help
        if hub_offline():
            raise not_cached_error(source, cache_dir, f"{type(e).__name__}: {e}") from None
    cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        fetch()
    except Exception as e:
        raise not_cached_error(source, cache_dir, f"{type(e).__name__}: {e}") from None
    return build()


def load_pretrained(ident: str, device: torch.device, cache_dir: Path) -> OpenClipModel:
    """``ARCH@TAG``, ``ARCH@/path/to/checkpoint`` or ``hf-hub:ORG/NAME``.

    Tags resolve to a file in ``cache_dir`` (downloaded once); the tag's preprocessing
    (mean/std, interpolation, resize mode; the resolution comes from the architecture) and its
    activation (OpenAI weights were trained with QuickGELU, which open_clip only warns about)
    are applied explicitly, so a cached tag and a fresh download build the same model.
    """
    if ident.startswith("hf-hub:"):
        return _load_hub(ident, device, cache_dir)
    source = f"open_clip:{ident}"
    arch, sep, weights = ident.partition("@")
    open_clip = _quiet_open_clip()
    _check_arch(open_clip, arch)
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if not sep or not weights:
        raise ConfigError(f"model.source {source!r} names no weights: write open_clip:{arch}@TAG with a pretrained "
                          f"tag ({', '.join(tags) or 'none known for this architecture'}) or "
                          f"open_clip:{arch}@/path/to/checkpoint")
    kwargs: dict = {}
    if open_clip.pretrained.is_pretrained_cfg(arch, weights):  # tags match case- and -/_-insensitively
        ckpt, pcfg = _tag_weights(open_clip, arch, weights, source, cache_dir)
        kwargs = dict(force_quick_gelu=bool(pcfg.get("quick_gelu", False)), image_mean=pcfg.get("mean"),
                      image_std=pcfg.get("std"), image_interpolation=pcfg.get("interpolation"),
                      image_resize_mode=pcfg.get("resize_mode"))
        name = f"{arch}@{weights}"
    elif Path(weights).expanduser().is_file():
        ckpt, name = str(Path(weights).expanduser()), f"{arch}@{Path(weights).name}"
        state = clip4cir_state(Path(ckpt))
        if state is not None:
            return _load_clip4cir(open_clip, arch, state, ckpt, name, source, device, cache_dir)
    elif _looks_like_path(weights):
        raise missing_path_error(source, Path(weights), "an open_clip checkpoint file (.pt, .bin, .safetensors)")
    else:
        raise ConfigError(f"unknown pretrained tag {weights!r} for open_clip architecture {arch!r}; valid tags: "
                          f"{', '.join(tags) or '(none: give a checkpoint path)'}")
    try:
        module, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=ckpt, device=device,
                                                                      cache_dir=str(cache_dir), **kwargs)
    except Exception as e:  # strict state-dict loading failed, or not a checkpoint at all (torch, safetensors)
        raise InputError(f"checkpoint {ckpt} does not fit open_clip architecture {arch!r} (another architecture, "
                         f"or not a state dict / safetensors file): {type(e).__name__}: "
                         f"{(str(e).strip().splitlines() or [''])[0]}") from None
    return OpenClipModel(name, module, preprocess, _tokenizer(open_clip, arch, source, cache_dir), device)


def clip4cir_state(path: Path) -> dict | None:
    """The ``CLIP`` state dict of a CLIP4Cir checkpoint (``{"epoch", "CLIP": state_dict}``, a
    DataParallel ``module.`` prefix dropped), or None for any other file."""
    if path.suffix not in (".pt", ".pth", ".ckpt"):
        return None
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - not a zip checkpoint: open_clip's own loader reports it
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("CLIP"), dict):
        return None
    return {k.removeprefix("module."): v for k, v in doc["CLIP"].items()}


def _load_clip4cir(open_clip, arch: str, state: dict, ckpt: str, name: str, source: str, device: torch.device,
                   cache_dir: Path) -> OpenClipModel:
    module, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=None, device=device,
                                                                  force_quick_gelu=True, cache_dir=str(cache_dir))
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise InputError(f"CLIP4Cir checkpoint {ckpt}: its 'CLIP' weights do not fit open_clip architecture "
                         f"{arch!r} (CLIP4Cir fine-tunes OpenAI CLIPs, e.g. RN50x4 or ViT-B-32): "
                         f"{(str(e).strip().splitlines() or [''])[0]}") from None
    log.info(f"model: {source}: a CLIP4Cir fine-tuned CLIP ({len(state)} tensors, QuickGELU)")
    return OpenClipModel(name, module.float(), preprocess, _tokenizer(open_clip, arch, source, cache_dir), device)


def _tokenizer(open_clip, arch: str, source: str, cache_dir: Path) -> Callable:
    """open_clip's tokenizer for ``arch``: its BPE vocabulary ships in the wheel; a few
    architectures (SigLIP, multilingual text towers) use a hub tokenizer — from the cache first."""
    try:
        with cache_only():
            return open_clip.get_tokenizer(arch, cache_dir=str(cache_dir))
    except Exception as e:
        if hub_offline():
            raise not_cached_error(source, cache_dir, f"tokenizer: {type(e).__name__}: {e}") from None
    try:
        return open_clip.get_tokenizer(arch, cache_dir=str(cache_dir))
    except Exception as e:
        raise not_cached_error(source, cache_dir, f"tokenizer: {type(e).__name__}: {e}") from None


LOADERS.register("local-dir")(load_local_dir)
LOADERS.register("open_clip")(load_pretrained)


def tiny_clip_config(embed_dim: int, vision: dict, text: dict, init_temperature: float) -> dict:
    """An open_clip CLIP config: a ViT image tower and a transformer text tower, both with
    LayerNorms like real CLIP, with the standard 49,408-token BPE vocabulary."""
    import math

    return {
        "model_cfg": {
            "embed_dim": embed_dim,
            "init_logit_scale": math.log(1.0 / init_temperature),
            "vision_cfg": {"image_size": vision["image_size"], "patch_size": vision["patch_size"],
                           "width": vision["width"], "layers": vision["layers"],
                           "head_width": vision["width"] // vision["heads"]},
            "text_cfg": {"context_length": text["context_length"], "vocab_size": 49408,
                         "width": text["width"], "heads": text["heads"], "layers": text["layers"]},
        },
        "preprocess_cfg": {"size": vision["image_size"], "mode": "RGB", "mean": list(CLIP_MEAN),
                           "std": list(CLIP_STD), "interpolation": "bicubic", "resize_mode": "shortest",
                           "fill_color": 0},
    }


def build_from_config(config: dict) -> nn.Module:
    """A randomly initialised open_clip model for ``config`` (used for training)."""
    open_clip = _quiet_open_clip()
    cfg = config["model_cfg"]
    return open_clip.CLIP(embed_dim=cfg["embed_dim"], vision_cfg=cfg["vision_cfg"], text_cfg=cfg["text_cfg"],
                          init_logit_scale=cfg.get("init_logit_scale", 2.6592))


def save_local_dir(module: nn.Module, config: dict, out_dir: str | Path, extra: dict | None = None) -> None:
    """Write an open_clip local-dir folder atomically (config + safetensors weights)."""
    from safetensors.torch import save_file

    with atomic_dir(out_dir) as tmp:
        doc = dict(config)
        if extra:
            doc["qshift"] = extra
        (tmp / CONFIG_NAME).write_text(json.dumps(doc, indent=2) + "\n")
        state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_NAME))
