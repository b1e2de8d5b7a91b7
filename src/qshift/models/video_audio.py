"""The video-audio model interface (the ``video-audio`` task, :mod:`qshift.va`).

A video-audio retrieval model embeds a clip's frames and its soundtrack into one
L2-normalised space. Every such model — the built-in two-tower (:mod:`.tiny_va`), the CAV-MAE
loader — is a :class:`VideoAudioModel` and implements::

    encode_video(video: FloatTensor[B, T, 3, H, W]) -> FloatTensor[B, D]       # L2-normalised
    encode_audio(fbank: FloatTensor[B, n_frames, n_mels]) -> FloatTensor[B, D]  # L2-normalised
    video_transform(frames: np.ndarray uint8 [T, H, W, 3]) -> FloatTensor[T, 3, H, W]
    audio_transform(wave: np.ndarray float32 [samples], sample_rate: int) -> FloatTensor[n_frames, n_mels]
    norm_layers(modality)   # modality "video" | "audio": [(name, nn.LayerNorm ...)] TTA adapts

``encode_video`` / ``encode_audio`` are the model's own forward passes (subclasses implement
:meth:`VideoAudioModel._encode_video` / :meth:`_encode_audio`, unnormalised; the public methods
move the batch to the device and normalise). The test-time adaptation methods
(:mod:`qshift.tta`) see the model through the :class:`~qshift.models.base.RetrievalModel`
contract they already use for image-text models: ``encode(modality, batch)`` with modality
``video`` or ``audio`` (dispatched to the two methods above), ``norm_layers(modality)`` (the
*query* tower's normalisation layers: for ``v2a`` the video tower's, for ``a2v`` the audio
tower's; the gallery tower is never adapted), ``module`` (one ``nn.Module`` holding both
towers, kept in eval mode), ``device``, ``name`` and ``preprocess`` (``native``). A query batch
is a plain float tensor (``[B, T, 3, H, W]`` or ``[B, n_frames, n_mels]``), so every method's
indexing, queues and re-encoding work unchanged.

``video_transform`` / ``audio_transform`` turn one clip's decoded data (uint8 RGB frames; a mono
float waveform in [-1, 1] and its sample rate) into the tensors the towers take: the clip
loaders (:mod:`qshift.va`) call them per clip, so a model decides its own resizing, frame
sampling, normalisation and filterbank (the built-in one: a log-mel front end written here,
:func:`log_mel`; torchaudio cannot be installed with the pinned torch).

Loading: ``model.source: local-dir:PATH`` where PATH holds ``qshift_va.json`` (the built-in
two-tower the pretrain stage trains) loads :mod:`.tiny_va`; other video-audio models register
their own source scheme in :data:`qshift.models.base.LOADERS` (and
:data:`qshift.config.MODEL_SCHEMES`) and return a :class:`VideoAudioModel`.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, InputError
from .base import RetrievalModel

VA_MODALITIES = ("video", "audio")
VA_MARKER = "qshift_va.json"  # a local-dir folder holding this file is a built-in video-audio model


class VideoAudioModel(RetrievalModel):
    """A video-audio dual encoder (see the module docstring for the contract)."""

    modalities = VA_MODALITIES

    # -- what a subclass implements ----------------------------------------------------------
    @abstractmethod
    def video_transform(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 RGB frames ``[T, H, W, 3]`` -> float ``[T, 3, H, W]`` as the video tower expects."""

    @abstractmethod
    def audio_transform(self, wave: np.ndarray, sample_rate: int) -> torch.Tensor:
        """A mono float32 waveform ``[samples]`` at ``sample_rate`` -> float ``[n_frames, n_mels]``."""

    @abstractmethod
    def _encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """``[B, T, 3, H, W]`` on the device -> unnormalised ``[B, D]``."""

    @abstractmethod
    def _encode_audio(self, fbank: torch.Tensor) -> torch.Tensor:
        """``[B, n_frames, n_mels]`` on the device -> unnormalised ``[B, D]``."""

    @abstractmethod
    def norm_layers(self, modality: str) -> list[tuple[str, nn.Module]]:
        """The normalisation layers TTA adapts when ``modality`` (video | audio) is the query side."""

    # -- the public encoders -----------------------------------------------------------------
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        return self.encode("video", video)

    def encode_audio(self, fbank: torch.Tensor) -> torch.Tensor:
        return self.encode("audio", fbank)

    def encode(self, modality: str, batch: torch.Tensor) -> torch.Tensor:
        if modality not in VA_MODALITIES:
            raise ConfigError(f"modality {modality!r} for video-audio model {self.name!r}; valid: "
                              f"{', '.join(VA_MODALITIES)}")
        expect = 5 if modality == "video" else 3
        if batch.ndim != expect:
            shape = "[B, T, 3, H, W]" if modality == "video" else "[B, n_frames, n_mels]"
            raise InputError(f"{modality} batch for model {self.name!r} must be {shape}, got shape "
                             f"{tuple(batch.shape)}")
        fn = self._encode_video if modality == "video" else self._encode_audio
        x = batch.to(self.device, non_blocking=True)
        if self.autocast_dtype is not None and self.device.type == "cuda":
            with torch.autocast("cuda", dtype=self.autocast_dtype):
                z = fn(x)
        else:
            z = fn(x)
        return torch.nn.functional.normalize(z.float(), dim=-1)

    def _encode(self, modality: str, batch: torch.Tensor) -> torch.Tensor:  # pragma: no cover - encode overrides
        raise NotImplementedError

    # -- not an image-text model -------------------------------------------------------------
    def image_transform(self) -> Callable:
        raise ConfigError(f"model {self.name!r} is a video-audio model: it has no image tower (directions v2a, a2v)")

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        raise ConfigError(f"model {self.name!r} is a video-audio model: it has no text tower (directions v2a, a2v)")


# -- a log-mel front end (torchaudio is not installable with the pinned torch) -----------------------

def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, f_min: float = 20.0,
                   f_max: float | None = None) -> torch.Tensor:
    """HTK-mel triangular filters ``[n_mels, n_fft // 2 + 1]`` (mel = 2595 log10(1 + f / 700)),
    equally spaced in mel between ``f_min`` and ``f_max`` (default: Nyquist), unit peak."""
    f_max = sample_rate / 2 if f_max is None else f_max

    def mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)

    def hz(m):
        return 700.0 * (10 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)

    edges = hz(np.linspace(mel(f_min), mel(f_max), n_mels + 2))
    bins = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (bins[None] - lo) / np.maximum(mid - lo, 1e-9)
    down = (hi - bins[None]) / np.maximum(hi - mid, 1e-9)
    return torch.from_numpy(np.clip(np.minimum(up, down), 0.0, None).astype(np.float32))


def log_mel(wave: torch.Tensor, sample_rate: int, n_mels: int = 64, win_ms: float = 25.0, hop_ms: float = 10.0,
            fbank: torch.Tensor | None = None) -> torch.Tensor:
    """``[..., samples]`` waveform -> ``[..., n_frames, n_mels]`` log-mel energies (Hann window,
    the window zero-padded to n_fft = the next power of two, power spectrum, ``log(energy + 1e-6)``;
    frames = 1 + (samples - n_fft) // hop, no padding)."""
    win = int(round(sample_rate * win_ms / 1000))
    hop = int(round(sample_rate * hop_ms / 1000))
    n_fft = 1 << max(1, math.ceil(math.log2(win)))
    if wave.shape[-1] < n_fft:
        raise InputError(f"waveform of {wave.shape[-1]} samples is shorter than one analysis frame "
                         f"({n_fft} samples at {sample_rate} Hz)")
    lead = wave.shape[:-1]
    x = wave.reshape(-1, wave.shape[-1]).float()
    spec = torch.stft(x, n_fft=n_fft, hop_length=hop, win_length=win, window=torch.hann_window(win),
                      center=False, return_complex=True)
    power = spec.abs().pow(2)  # [N, n_fft//2+1, frames]
    fb = mel_filterbank(n_mels, n_fft, sample_rate) if fbank is None else fbank
    mel = torch.einsum("mf,nft->ntm", fb, power)
    return (mel + 1e-6).log().reshape(*lead, mel.shape[1], n_mels)
