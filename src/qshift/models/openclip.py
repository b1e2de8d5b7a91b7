"""open_clip models: the built-in tiny CLIP and real pretrained CLIPs share one code path.

The built-in model is saved as an open_clip *local-dir* folder (``open_clip_config.json``
+ ``open_clip_model.safetensors``) — the very layout a hub-downloaded open_clip model has —
and loaded with ``open_clip.create_model_and_transforms("local-dir:...")``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from ..errors import InputError
from ..io import atomic_dir
from .base import LOADERS, RetrievalModel, norm_layers

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
        # text: the LayerNorms inside the transformer blocks, not ln_final (METHODS.md)
        text_tower = getattr(self.module, "transformer", None)
        if text_tower is None:  # CustomTextCLIP keeps its tower under .text
            return norm_layers(self.module.text, prefix="text", exclude=("text.ln_final",))
        return norm_layers(text_tower, prefix="transformer")


def _quiet_open_clip():
    import open_clip

    logging.getLogger("open_clip").setLevel(logging.WARNING)
    return open_clip


def load_local_dir(path: str, device: torch.device) -> OpenClipModel:
    folder = Path(path)
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


def load_pretrained(ident: str, device: torch.device) -> OpenClipModel:
    """``ARCH@TAG`` or ``ARCH@/path/to/checkpoint``: an open_clip architecture with weights."""
    arch, sep, pretrained = ident.partition("@")
    open_clip = _quiet_open_clip()
    if arch not in open_clip.list_models():
        from ..errors import UnknownNameError

        raise UnknownNameError("open_clip architecture", arch, open_clip.list_models())
    module, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained or None,
                                                                  device=device)
    return OpenClipModel(arch + (f"@{Path(pretrained).name}" if pretrained else ""), module, preprocess,
                         open_clip.get_tokenizer(arch), device)


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
