"""One interface for every retrieval model, whatever library builds it.

A :class:`RetrievalModel` encodes images and captions into one L2-normalised space and
tells test-time adaptation which normalisation layers belong to each query tower.
Loaders are registered per source scheme (``params.yaml: model.source``):

- ``local-dir:PATH`` — an open_clip folder (the built-in model; the layout hub models have);
- ``open_clip:ARCH@TAG`` / ``open_clip:ARCH@FILE`` / ``open_clip:hf-hub:ORG/NAME`` — open_clip
  architectures with pretrained weights (:mod:`.openclip`);
- ``hf-blip:ID_OR_PATH`` / ``hf-clip:ID_OR_PATH`` — transformers BLIP retrieval (ITC) and CLIP
  models (:mod:`.hf`);
- ``cav-mae:PATH_OR_URL`` — a CAV-MAE audio-visual encoder for video-audio retrieval (:mod:`.cav_mae`).

Downloaded weights live in one cache folder (``model.cache_dir``, default ``models/cache``);
a cached model loads without touching the network, so jobs on compute nodes without internet
work once a login node has fetched the weights (``scripts/fetch_models.py``).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from ..errors import ConfigError, InputError
from ..registry import Registry

MODALITIES = ("image", "text")
DEFAULT_CACHE_DIR = "models/cache"
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
    preprocess: str = "native"  # model.preprocess (qshift.models.reference)
    autocast_dtype: torch.dtype | None = None  # encode under torch.autocast(dtype) on CUDA

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
        if self.autocast_dtype is not None and self.device.type == "cuda":
            with torch.autocast("cuda", dtype=self.autocast_dtype):
                z = self._encode(modality, batch.to(self.device, non_blocking=True))
        else:
            z = self._encode(modality, batch.to(self.device, non_blocking=True))
        return torch.nn.functional.normalize(z.float(), dim=-1)


# A loader takes (identifier, device, cache_dir) and returns a model.
LOADERS: Registry[Callable[[str, torch.device, Path], RetrievalModel]] = Registry("model source scheme")


def _register_loaders() -> None:
    from . import cav_mae, hf, irra, openclip  # noqa: F401  (each registers its schemes; heavy imports stay lazy)


def schemes() -> list[str]:
    _register_loaders()
    return LOADERS.names()


def hub_offline() -> bool:
    """Whether the user forbade network access (``HF_HUB_OFFLINE=1`` or ``TRANSFORMERS_OFFLINE=1``).
    Then only cached weights are used and nothing waits on a connection timeout."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


@contextlib.contextmanager
def cache_only():
    """Within this block huggingface_hub (and open_clip/transformers through it) reads only the
    cache, exactly as under ``HF_HUB_OFFLINE=1``: a cached model then loads without the revision
    check that otherwise hangs on compute nodes without internet. (The library reads the
    setting at call time from ``huggingface_hub.constants``.)"""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def not_cached_error(source: str, cache_dir: Path, detail: str = "") -> InputError:
    """The error for weights that are neither cached nor downloadable, saying how to pre-fetch."""
    why = "network access is disabled (HF_HUB_OFFLINE)" if hub_offline() else "the download failed"
    return InputError(
        f"model {source!r} is not in the cache {cache_dir} and {why}{': ' + detail if detail else ''}. "
        f"Pre-fetch it once on a machine with internet (e.g. a login node): "
        f"python scripts/fetch_models.py --cache-dir {cache_dir} {source!r} — or copy a cache folder that "
        f"holds it to {cache_dir} (model.cache_dir in params.yaml)")


def missing_path_error(source: str, path: Path, expected: str) -> InputError:
    return InputError(f"model path {path} not found (model.source {source!r}; expected {expected}). "
                      f"Model source schemes: {', '.join(schemes())}")


def load_model(source: str, device: torch.device | str = "cpu",
               cache_dir: str | Path | None = None, preprocess: str = "native") -> RetrievalModel:
    """Load a model from a source string ``scheme:identifier`` (schemes: module docstring).

    ``cache_dir`` (``model.cache_dir``; default ``models/cache``) holds downloaded weights.
    The model comes back in eval mode with every parameter frozen; TTA methods unfreeze
    the normalisation layers they adapt. ``preprocess`` (``model.preprocess``): ``native``
    (the loader's own) or ``reference`` (the TCR reference code's; :mod:`.reference`).
    """
    from . import reference

    if preprocess not in reference.PREPROCESS:
        raise ConfigError(f"model.preprocess {preprocess!r}; valid: {', '.join(reference.PREPROCESS)}")
    scheme, sep, ident = source.partition(":")
    if not sep or not ident:
        raise ConfigError(f"model source {source!r} must look like SCHEME:IDENTIFIER; "
                          f"schemes: {', '.join(schemes())}")
    _register_loaders()
    from .video_audio import VA_MARKER

    if scheme == "local-dir" and (Path(ident) / VA_MARKER).is_file():  # the built-in video-audio two-tower
        from .tiny_va import load_tiny_va

        model = load_tiny_va(ident, torch.device(device))
        model.module.eval()
        return model
    loader = LOADERS.get(scheme)
    model = loader(ident, torch.device(device), Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR))
    model.module.eval()
    for p in model.module.parameters():
        p.requires_grad_(False)
    return reference.apply(model, preprocess)
