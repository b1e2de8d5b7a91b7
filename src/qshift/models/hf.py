"""transformers retrieval models: BLIP's image-text contrastive (ITC) path and CLIP.

Sources (``model.source``):

- ``hf-blip:ID_OR_PATH`` — a ``BlipForImageTextRetrieval`` checkpoint, e.g.
  ``hf-blip:Salesforce/blip-itm-base-coco`` (BLIP ViT-B/16) or
  ``hf-blip:Salesforce/blip-itm-large-coco`` (ViT-L/16), the TCR paper's backbones.
  Retrieval uses the ITC embeddings, as BLIP's own retrieval code ranks with before re-ranking:
  image = ``vision_proj(vision_model(x)[:, 0])`` (the CLS token), text =
  ``text_proj(text_encoder(ids, mask)[:, 0])`` (BERT's [CLS], bidirectional, no image), both
  L2-normalised. The ITM head is not used.
- ``hf-clip:ID_OR_PATH`` — a ``CLIPModel``, e.g. ``hf-clip:openai/clip-vit-base-patch16``:
  ``get_image_features`` / ``get_text_features`` (transformers 5 returns an output object whose
  ``pooler_output`` is the projected embedding).

Hub ids download once into ``model.cache_dir`` (the standard hub cache layout); a cached model
loads with ``local_files_only`` — no network at all — and a missing one fails with a message
saying how to pre-fetch it (``scripts/fetch_models.py``). A local folder (``save_pretrained``
output with the processor files) loads directly.

Preprocessing is the checkpoint's own processor, on the PIL backend (the resize the reference
pipelines use): BLIP squashes to 384x384 (bicubic, CLIP mean/std); CLIP resizes the shorter
side to 224 (bicubic) and centre-crops 224x224. Captions: BLIP applies its retrieval code's
``pre_caption`` (lowercase; ``. ! " ( ) * # : ; ~`` to spaces; at most 30 words) and pads /
truncates to 35 tokens; CLIP pads / truncates to its 77-token context.

Adapted normalisation layers follow the rule the open_clip adapter follows (docs/methods.md):
image queries adapt every LayerNorm of the vision tower (CLIP: ``pre_layrnorm``, per-layer
``layer_norm1/2``, ``post_layernorm``; BLIP: per-layer ``layer_norm1/2``, ``post_layernorm``);
text queries adapt the LayerNorms inside the text encoder (CLIP: per-layer ``layer_norm1/2``, not
``final_layer_norm`` — open_clip's ``ln_final``; BLIP: the embedding LayerNorm and each layer's
attention-output and output LayerNorms, not the cross-attention ones, which the ITC path never
runs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from ..errors import ConfigError, InputError
from .base import LOADERS, RetrievalModel, hub_offline, missing_path_error, norm_layers, not_cached_error

BLIP_MAX_WORDS = 30  # BLIP's retrieval datasets: pre_caption(caption, max_words=30)
BLIP_MAX_TOKENS = 35  # BLIP's retrieval evaluation: tokenizer(..., max_length=35)
_BLIP_PUNCT = re.compile(r"([.!\"()*#:;~])")


def pre_caption(caption: str, max_words: int = BLIP_MAX_WORDS) -> str:
    """BLIP's caption normalisation (docs/methods.md): lowercase, the characters ``. ! " ( ) * # : ; ~``
    replaced by spaces, runs of whitespace collapsed, at most ``max_words`` words. Idempotent,
    so captions a dataset already normalised pass unchanged."""
    caption = _BLIP_PUNCT.sub(" ", caption.lower())
    words = caption.split()
    return " ".join(words[:max_words])


class ProcessorTransform:
    """PIL image -> (C, H, W) tensor through a transformers image processor. A class rather than
    a lambda so DataLoader workers can pickle it."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, image) -> torch.Tensor:
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]


class HFRetrievalModel(RetrievalModel):
    """Shared plumbing: a transformers module, its image processor and tokenizer."""

    def __init__(self, name: str, module: nn.Module, image_processor, tokenizer, device: torch.device,
                 max_length: int):
        self.name, self.module, self.image_processor, self.tokenizer = name, module, image_processor, tokenizer
        self.max_length, self.device = max_length, device
        self.module.to(device)

    def image_transform(self) -> Callable:
        return ProcessorTransform(self.image_processor)

    def clean_caption(self, text: str) -> str:
        return text

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids padded to a fixed length (every batch has one shape); padding is recovered
        from the ids where a tower needs an attention mask."""
        enc = self.tokenizer([self.clean_caption(str(t)) for t in texts], padding="max_length", truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        return enc["input_ids"]


class BlipItcModel(HFRetrievalModel):
    def clean_caption(self, text: str) -> str:
        return pre_caption(text)

    def _encode(self, modality: str, batch: torch.Tensor) -> torch.Tensor:
        m = self.module
        if modality == "image":
            return m.vision_proj(m.vision_model(pixel_values=batch).last_hidden_state[:, 0, :])
        # [PAD] never comes out of tokenising text, so the mask is exactly "not padding"
        mask = (batch != self.tokenizer.pad_token_id).long()
        return m.text_proj(m.text_encoder(input_ids=batch, attention_mask=mask).last_hidden_state[:, 0, :])

    def norm_layers(self, modality: str) -> list[tuple[str, nn.Module]]:
        if modality == "image":
            return norm_layers(self.module.vision_model, prefix="vision_model")
        layers = norm_layers(self.module.text_encoder, prefix="text_encoder")
        return [(n, m) for n, m in layers if ".crossattention." not in n]


class HFClipModel(HFRetrievalModel):
    def _encode(self, modality: str, batch: torch.Tensor) -> torch.Tensor:
        if modality == "image":
            out = self.module.get_image_features(pixel_values=batch)
        else:
            # No attention mask: CLIP's text attention is causal and pools at the first
            # end-of-text token, so the padding after it cannot change the embedding (and CLIP
            # pads with that very token, which a mask derived from the ids would hide).
            out = self.module.get_text_features(input_ids=batch)
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def norm_layers(self, modality: str) -> list[tuple[str, nn.Module]]:
        if modality == "image":
            return norm_layers(self.module.vision_model, prefix="vision_model")
        return norm_layers(self.module.text_model.encoder, prefix="text_model.encoder")


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------
def _is_path(ident: str) -> bool:
    """Hub ids are ``NAME`` or ``ORG/NAME``; anything else is meant as a local folder."""
    return ident.startswith(("/", ".", "~")) or ident.count("/") > 1 or "\\" in ident


def _resolve(ident: str, source: str, expected: str) -> tuple[str, dict]:
    """(what to pass to from_pretrained, base kwargs) for a local folder or a hub id."""
    local = Path(ident).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise InputError(f"model folder {local} has no config.json (expected {expected}; model.source {source!r})")
        return str(local), {"local_files_only": True}
    if _is_path(ident):
        raise missing_path_error(source, local, expected)
    return ident, {}


def _cache_first(load: Callable, ident: str, source: str, cache_dir: Path, kwargs: dict):
    """``load(ident, **kwargs)`` from the cache only; downloading (into ``cache_dir``) only when
    the cache lacks it and the network is allowed."""
    if kwargs.get("local_files_only"):  # a local folder
        return load(ident, **kwargs)
    kw = {**kwargs, "cache_dir": str(cache_dir)}
    try:
        return load(ident, local_files_only=True, **kw)
    except OSError as e:  # transformers: "... not in the cached files ..."
        if hub_offline():
            raise not_cached_error(source, cache_dir, _why(e, ident)) from None
    cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        return load(ident, **kw)
    except OSError as e:  # no connection, unknown repo, gated repo: transformers raises OSError
        raise not_cached_error(source, cache_dir, _why(e, ident)) from None


def _why(error: Exception, ident: str) -> str:
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return f"{first} (read as a hub id: there is no local folder {ident!r} either)"


@dataclass(frozen=True)
class _Kind:
    model_type: str  # config.model_type the checkpoint must have
    cls_name: str  # the transformers class that loads it
    model: type[HFRetrievalModel]
    example: str
    max_length: int | None  # caption tokens (None: the text tower's full context)
    unused: re.Pattern  # weights retrieval never runs: allowed to be missing

    @property
    def expected(self) -> str:
        return f"a transformers {self.cls_name} folder or a hub id such as {self.example}"


_KINDS = {
    "hf-blip": _Kind("blip", "BlipForImageTextRetrieval", BlipItcModel, "Salesforce/blip-itm-base-coco",
                     BLIP_MAX_TOKENS, re.compile(r"^itm_head\.|\.crossattention\.")),
    "hf-clip": _Kind("clip", "CLIPModel", HFClipModel, "openai/clip-vit-base-patch16", None, re.compile(r"^$")),
}


def _load_hf(kind: str, ident: str, device: torch.device, cache_dir: Path) -> HFRetrievalModel:
    import transformers

    # transformers' "weights newly initialised" warnings: the missing-key check below turns them
    # into an error, so they need not clutter the stage logs
    transformers.logging.set_verbosity_error()
    spec = _KINDS[kind]
    source = f"{kind}:{ident}"
    target, kw = _resolve(ident, source, spec.expected)
    config = _cache_first(transformers.AutoConfig.from_pretrained, target, source, cache_dir, kw)
    if config.model_type != spec.model_type:
        other = [k for k, s in _KINDS.items() if s.model_type == config.model_type]
        raise ConfigError(f"model.source {source!r} is a {config.model_type!r} model, but {kind}: loads "
                          f"{spec.model_type!r} models" + (f"; write {other[0]}:{ident}" if other else ""))
    cls = getattr(transformers, spec.cls_name)
    module, info = _cache_first(cls.from_pretrained, target, source, cache_dir,
                                {**kw, "config": config, "dtype": torch.float32, "output_loading_info": True})
    # Weights the checkpoint lacks would stay random: refuse, unless retrieval never uses them
    # (BLIP's ITM head and cross-attention). E.g. a captioning BLIP has no vision_proj/text_proj.
    missing = [k for k in info.get("missing_keys") or [] if not spec.unused.search(k)]
    if missing:
        shown = sorted(missing, key=lambda k: ("proj" not in k, k))[:6]
        raise InputError(f"model {source!r} lacks weights {spec.cls_name} needs for retrieval: "
                         f"{', '.join(shown)}{' ...' if len(missing) > 6 else ''} ({len(missing)} missing); "
                         f"use a retrieval checkpoint (e.g. {spec.example})")
    image_processor = _cache_first(transformers.AutoImageProcessor.from_pretrained, target, source, cache_dir,
                                   {**kw, "backend": "pil"})
    tokenizer = _cache_first(transformers.AutoTokenizer.from_pretrained, target, source, cache_dir, kw)
    positions = config.text_config.max_position_embeddings
    max_length = min(spec.max_length or positions, positions)
    name = Path(ident.rstrip("/")).name
    return spec.model(name, module, image_processor, tokenizer, device, max_length)


def load_blip(ident: str, device: torch.device, cache_dir: Path) -> HFRetrievalModel:
    return _load_hf("hf-blip", ident, device, cache_dir)


def load_clip(ident: str, device: torch.device, cache_dir: Path) -> HFRetrievalModel:
    return _load_hf("hf-clip", ident, device, cache_dir)


LOADERS.register("hf-blip")(load_blip)
LOADERS.register("hf-clip")(load_clip)
