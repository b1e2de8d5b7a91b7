"""``irra:`` — an IRRA text-based person ReID checkpoint (the TCR paper's ReID backbone).

The TCR paper's ReID rows adapt IRRA (Jiang & Ye, "Cross-Modal Implicit Relation Reasoning and
Aligning for Text-to-Image Person Retrieval", CVPR 2023) models trained on one ReID dataset
and evaluated on the other (the reference's configs: CUHK-PEDES with ``irra_icfg_pedes.pth``,
ICFG-PEDES with ``irra_cuhk_pedes.pth``). IRRA's retrieval path is a plain CLIP ViT-B/16 (the
OpenAI architecture) at a 384 x 128 (height x width) input, stride 16 (24 x 8 patches):
the image embedding is the projected class token, the text embedding the projected EOT token,
exactly open_clip's ``encode_image`` / ``encode_text``. Its other heads (cross-modal MLM, ID
classifier) are training-only and are not loaded.

Sources: ``irra:/path/to/irra_icfg_pedes.pth`` (input 384 x 128) or
``irra:HxW@/path/to/ckpt.pth``. The file is IRRA's ``torch.save({"model": state_dict, ...})``
(a bare state dict works too); the CLIP weights are the keys under ``base_model.``. The
architecture (widths, layers, patch, context length, vocabulary) is read from the weights'
shapes, so a tiny checkpoint of the same layout loads too (the tests use one).

Preprocessing as IRRA's test transform: ``Resize((H, W), bicubic)`` of the whole image (no
crop), ``ToTensor``, CLIP mean/std; captions through CLIP's BPE tokenizer (lowercased, 77
tokens, truncated with the EOT kept), as IRRA tokenizes them.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import ConfigError, InputError
from .base import LOADERS, missing_path_error
from .openclip import CLIP_MEAN, CLIP_STD, OpenClipModel, _quiet_open_clip

DEFAULT_SIZE = (384, 128)  # IRRA's (height, width)
PREFIX = "base_model."
_DROP = ("input_resolution", "context_length", "vocab_size")
_SIZE = re.compile(r"^(\d+)x(\d+)@(.+)$")


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        raise InputError(f"IRRA checkpoint {path} is unreadable: {type(e).__name__}: {e}") from None
    state = doc.get("model", doc) if isinstance(doc, dict) else None
    if not isinstance(state, dict):
        raise InputError(f"IRRA checkpoint {path}: expected a dict with key 'model' (IRRA's checkpoint) or a "
                         f"state dict")
    if any(k.startswith(PREFIX) for k in state):
        state = {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}
    state = {k.removeprefix("module."): v for k, v in state.items() if k not in _DROP}
    need = ("visual.conv1.weight", "visual.positional_embedding", "positional_embedding", "token_embedding.weight",
            "ln_final.weight", "text_projection", "visual.proj")
    missing = [k for k in need if k not in state]
    if missing:
        raise InputError(f"IRRA checkpoint {path} has no CLIP weights under '{PREFIX}' (missing "
                         f"{', '.join(missing)}); is it an IRRA checkpoint?")
    return state


def _count(state: dict, prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})


def _config(state: dict, size: tuple[int, int], path: Path) -> dict:
    conv = state["visual.conv1.weight"]
    width, patch = conv.shape[0], conv.shape[-1]
    n_pos = state["visual.positional_embedding"].shape[0] - 1
    grid = (size[0] // patch, size[1] // patch)
    if grid[0] * grid[1] != n_pos:
        raise ConfigError(f"IRRA checkpoint {path} has {n_pos} patch positions, but an input of {size[0]} x {size[1]} "
                          f"with patch {patch} gives {grid[0]} x {grid[1]}; name the input size in model.source as "
                          f"irra:HxW@{path}")
    text_width = state["ln_final.weight"].shape[0]
    return {
        "embed_dim": state["text_projection"].shape[1],
        "vision_cfg": {"image_size": list(size), "patch_size": patch, "width": width,
                       "layers": _count(state, "visual.transformer.resblocks."), "head_width": min(64, width)},
        "text_cfg": {"context_length": state["positional_embedding"].shape[0],
                     "vocab_size": state["token_embedding.weight"].shape[0], "width": text_width,
                     "heads": max(1, text_width // 64), "layers": _count(state, "transformer.resblocks.")},
    }


def load_irra(ident: str, device: torch.device, cache_dir: Path | None = None) -> OpenClipModel:
    m = _SIZE.match(ident)
    size, file = ((int(m.group(1)), int(m.group(2))), m.group(3)) if m else (DEFAULT_SIZE, ident)
    path = Path(file).expanduser()
    if not path.is_file():
        raise missing_path_error(f"irra:{ident}", path, "an IRRA checkpoint (.pth), e.g. irra_icfg_pedes.pth from "
                                 "the IRRA authors' release; it is not downloaded")
    state = _state_dict(path)
    cfg = _config(state, size, path)
    open_clip = _quiet_open_clip()
    module = open_clip.CLIP(embed_dim=cfg["embed_dim"], vision_cfg=cfg["vision_cfg"], text_cfg=cfg["text_cfg"],
                            quick_gelu=True)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    state.setdefault("logit_scale", module.logit_scale.detach().clone())
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise InputError(f"IRRA checkpoint {path} does not fit a CLIP of the shape its weights imply: missing "
                         f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}")
    from torchvision import transforms
    from torchvision.transforms import InterpolationMode

    preprocess = transforms.Compose([
        transforms.Resize(size, interpolation=InterpolationMode.BICUBIC), transforms.ToTensor(),
        transforms.Normalize(CLIP_MEAN, CLIP_STD)])
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=cfg["text_cfg"]["context_length"])
    return OpenClipModel(f"irra-{path.stem}", module, preprocess, tokenizer, device)


LOADERS.register("irra")(load_irra)
