"""One interface for every retrieval model, whatever library builds it.

A :class:`RetrievalModel` encodes images and captions into one L2-normalised space and
tells test-time adaptation which normalisation layers belong to each query tower.
Loaders are registered per source scheme, e.g. ``local-dir:models/qshift-tiny-clip``
(an open_clip folder: the same path hub-downloaded open_clip models take).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import Registry

MODALITIES = ("image", "text")
NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


def norm_layers(module: nn.Module, prefix: str = "", exclude: Iterable[str] = ()) -> list[tuple[str, nn.Module]]:
    """All affine normalisation layers (LayerNorm, GroupNorm, BatchNorm) under ``module``."""
    excluded = set(exclude)
    out = []
    for name, m in module.named_modules(prefix=prefix):
        if name in excluded or not isinstance(m, NORM_TYPES):
            continue
        if getattr(m, "weight", None) is None and getattr(m, "bias", None) is None:
            continue  # elementwise_affine=False: nothing to adapt
        out.append((name, m))
    return out


class RetrievalModel(ABC):
    """A dual encoder. ``module`` is the underlying nn.Module (kept in eval mode)."""

    name: str
    module: nn.Module
    device: torch.device

    @abstractmethod
    def image_transform(self) -> Callable:
        """PIL image -> preprocessed tensor (C, H, W) as the model expects."""

    @abstractmethod
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Captions -> a batch the text tower takes."""

    @abstractmethod
    def _encode(self, modality: str, batch: torch.Tensor) -> torch.Tensor:
        """Unnormalised embeddings."""

    @abstractmethod
    def norm_layers(self, modality: str) -> list[tuple[str, nn.Module]]:
        """The normalisation layers TTA adapts when ``modality`` is the query side."""

    def encode(self, modality: str, batch: torch.Tensor) -> torch.Tensor:
        if modality not in MODALITIES:
            raise ConfigError(f"modality {modality!r}; valid: {', '.join(MODALITIES)}")
        z = self._encode(modality, batch.to(self.device, non_blocking=True))
        return torch.nn.functional.normalize(z.float(), dim=-1)


LOADERS: Registry[Callable[[str, torch.device], RetrievalModel]] = Registry("model source scheme")


def load_model(source: str, device: torch.device | str = "cpu") -> RetrievalModel:
    """Load a model from a source string ``scheme:identifier``.

    Schemes: ``local-dir:PATH`` (an open_clip folder with open_clip_config.json and
    weights), ``open_clip:ARCH@TAG_OR_FILE`` (an open_clip architecture with a pretrained
    tag or checkpoint file).
    """
    from . import openclip  # noqa: F401  (registers its loaders)

    scheme, sep, ident = source.partition(":")
    if not sep or not ident:
        raise ConfigError(f"model source {source!r} must look like SCHEME:IDENTIFIER; "
                          f"schemes: {', '.join(LOADERS.names())}")
    model = LOADERS.get(scheme)(ident, torch.device(device))
    model.module.eval()
    for p in model.module.parameters():
        p.requires_grad_(False)
    return model
