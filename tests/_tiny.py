"""Tiny models and data for fast tests (helper module, not a test file).

- :class:`TinyDual`: a 2-tower toy :class:`RetrievalModel` over raw float vectors
  (Linear -> LayerNorm -> GELU -> Linear per tower), so TCR can be driven on hand-made
  query tensors and every number checked with numpy.
- :func:`make_tiny_clip_dir`: a real (randomly initialised) open_clip CLIP saved as a
  local-dir folder, loadable with ``qshift.models.load_model("local-dir:...")``.
- :func:`make_tiny_dataset`: the built-in benchmark at toy size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from qshift.models.base import RetrievalModel, norm_layers

IN_DIM, EMB_DIM = 6, 8


class TinyDual(RetrievalModel):
    """Queries are float tensors (B, IN_DIM) for both modalities."""

    def __init__(self, seed: int = 0):
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        self.module = nn.ModuleDict({
            m: nn.Sequential(nn.Linear(IN_DIM, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, EMB_DIM))
            for m in ("image", "text")
        })
        torch.random.set_rng_state(gen_state)
        self.name = "tiny-dual"
        self.device = torch.device("cpu")
        self.module.eval()
        for p in self.module.parameters():  # as load_model leaves a model: all frozen
            p.requires_grad_(False)

    def image_transform(self) -> Callable:
        return lambda x: x

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:  # pragma: no cover - unused
        raise NotImplementedError

    def _encode(self, modality: str, batch: torch.Tensor) -> torch.Tensor:
        return self.module[modality](batch)

    def norm_layers(self, modality: str):
        return norm_layers(self.module[modality], prefix=modality)


TINY_CLIP_ARGS = (32, dict(image_size=32, patch_size=8, width=32, layers=1, heads=2),
                  dict(context_length=16, width=32, layers=1, heads=2), 0.07)


def make_tiny_clip_dir(path: Path, seed: int = 0) -> Path:
    from qshift.models.openclip import build_from_config, save_local_dir, tiny_clip_config

    config = tiny_clip_config(*TINY_CLIP_ARGS)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    module = build_from_config(config)
    torch.random.set_rng_state(state)
    save_local_dir(module, config, path)
    return path


def make_tiny_dataset(path: Path, n_test: int = 40) -> Path:
    """Writes ``path/manifest.json`` + images; returns the manifest path."""
    from qshift.data.builtin import generate_builtin

    generate_builtin(path, n_train=4, n_val=2, n_test=n_test, image_size=32, seed=0, progress=False)
    return path / "manifest.json"


def one_torch_thread():
    """Generator for a fixture: run tiny models on one intra-op thread (restored afterwards).
    Tiny matrices gain nothing from threads, and on a busy 2-core machine OpenMP spin-waiting
    makes them 10-100x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
