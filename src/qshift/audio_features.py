"""Kaldi-compatible log-mel filterbank features and CAV-MAE's audio preprocessing.

torchaudio cannot be installed next to the pinned torch, so :func:`kaldi_fbank` re-implements
the computation of ``torchaudio.compliance.kaldi.fbank`` (itself a port of Kaldi's
``compute-fbank-feats``) for the options CAV-MAE uses, in float32 torch:

1. frames of ``frame_length`` ms every ``frame_shift`` ms (``snip_edges``: only whole frames,
   ``1 + (N - L) // S`` of them);
2. per frame: remove the DC offset (subtract the frame mean), pre-emphasis
   ``x[i] - 0.97 * x[i-1]`` (the first sample uses itself), the window (``hanning``:
   ``0.5 - 0.5 cos(2 pi n / (L - 1))``; ``povey``: that to the power 0.85; ``hamming``;
   ``rectangular``), zero-padded to the next power of two (512 at 16 kHz);
3. power spectrum ``|rfft|^2``; Kaldi's triangular mel banks (``mel(f) = 1127 ln(1 + f / 700)``,
   ``num_mel_bins`` bands equally spaced in mel between ``low_freq`` = 20 Hz and the Nyquist
   frequency; the Nyquist FFT bin gets weight 0);
4. ``log(max(energy, float32 eps))``.

Checked against Kaldi itself (kaldi-native-fbank, the k2-fsa C++ port of Kaldi's feature code)
on fixed waveforms: ``tests/data/cav_mae/fbank_golden.npz`` (how it was made:
``tests/data/cav_mae/README.md``).

CAV-MAE's audio input (its ``src/dataloader.py``, ``AudiosetDataset._wav2fbank`` and
``__getitem__``; the retrieval script ``src/retrieval.py`` passes the same ``audio_conf``):
the waveform (16 kHz, the first channel — its ``extract_audio.py`` runs ``ffmpeg -ar 16000`` and
``sox ... remix 1``) minus its mean; ``fbank(htk_compat=True, sample_frequency=sr,
use_energy=False, window_type='hanning', num_mel_bins=128, dither=0.0, frame_shift=10)``;
zero-padded (at the end) or cut to ``target_length`` = 1024 frames; then
``(fbank - mean) / std`` with AudioSet's mean -5.081 and std 4.4849 (note: CAV-MAE divides by
``std``, not ``2 * std`` as AST did; the padding frames are normalised too).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .errors import InputError

# CAV-MAE's audio configuration (src/retrieval.py audio_conf; src/dataloader.py)
CAV_MAE_SAMPLE_RATE = 16000
CAV_MAE_MEL_BINS = 128
CAV_MAE_TARGET_LENGTH = 1024
CAV_MAE_MEAN = -5.081
CAV_MAE_STD = 4.4849

WINDOWS = ("hanning", "povey", "hamming", "rectangular", "blackman")
_EPS = torch.finfo(torch.float32).eps


def mel_scale(freq: torch.Tensor | float):
    if isinstance(freq, torch.Tensor):
        return 1127.0 * (1.0 + freq / 700.0).log()
    return 1127.0 * math.log(1.0 + freq / 700.0)


def mel_banks(num_bins: int, padded_window_size: int, sample_freq: float, low_freq: float = 20.0,
              high_freq: float = 0.0) -> torch.Tensor:
    """Kaldi's triangular mel filters, ``(num_bins, padded_window_size // 2 + 1)`` (last column 0)."""
    num_fft_bins = padded_window_size // 2
    nyquist = 0.5 * sample_freq
    if high_freq <= 0.0:
        high_freq += nyquist
    if not (0.0 <= low_freq < nyquist and 0.0 < high_freq <= nyquist and low_freq < high_freq):
        raise InputError(f"mel banks: low_freq {low_freq} / high_freq {high_freq} out of range for sample "
                         f"rate {sample_freq}")
    fft_bin_width = sample_freq / padded_window_size
    mel_low, mel_high = mel_scale(low_freq), mel_scale(high_freq)
    delta = (mel_high - mel_low) / (num_bins + 1)
    b = torch.arange(num_bins, dtype=torch.float32).unsqueeze(1)
    left = mel_low + b * delta
    center = mel_low + (b + 1.0) * delta
    right = mel_low + (b + 2.0) * delta
    mel = mel_scale(fft_bin_width * torch.arange(num_fft_bins, dtype=torch.float32)).unsqueeze(0)
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    bins = torch.clamp(torch.minimum(up, down), min=0.0)
    return torch.nn.functional.pad(bins, (0, 1))


def _window(kind: str, size: int) -> torch.Tensor:
    if kind == "hanning":
        return torch.hann_window(size, periodic=False, dtype=torch.float32)
    if kind == "povey":
        return torch.hann_window(size, periodic=False, dtype=torch.float32).pow(0.85)
    if kind == "hamming":
        return torch.hamming_window(size, periodic=False, alpha=0.54, beta=0.46, dtype=torch.float32)
    if kind == "rectangular":
        return torch.ones(size, dtype=torch.float32)
    if kind == "blackman":
        a = 2 * math.pi / (size - 1)
        n = torch.arange(size, dtype=torch.float32)
        return 0.42 - 0.5 * torch.cos(a * n) + 0.08 * torch.cos(2 * a * n)
    raise InputError(f"fbank window_type {kind!r}; valid: {', '.join(WINDOWS)}")


def kaldi_fbank(wave: np.ndarray | torch.Tensor, sample_frequency: float = 16000.0, *, num_mel_bins: int = 23,
                frame_length: float = 25.0, frame_shift: float = 10.0, window_type: str = "povey",
                preemphasis_coefficient: float = 0.97, remove_dc_offset: bool = True, low_freq: float = 20.0,
                high_freq: float = 0.0, round_to_power_of_two: bool = True, use_power: bool = True,
                use_log_fbank: bool = True, dither: float = 0.0, use_energy: bool = False,
                snip_edges: bool = True) -> torch.Tensor:
    """Log-mel filterbank features ``(num_frames, num_mel_bins)``, float32, as
    ``torchaudio.compliance.kaldi.fbank`` with the same keyword names (defaults as there).
    ``wave``: 1-D samples, or ``(channels, samples)`` (channel 0 is used, as torchaudio does)."""
    if dither != 0.0:
        raise InputError("kaldi_fbank: dither must be 0.0 (features must be deterministic)")
    if use_energy:
        raise InputError("kaldi_fbank: use_energy=True is not implemented (CAV-MAE uses use_energy=False)")
    if not snip_edges:
        raise InputError("kaldi_fbank: snip_edges=False is not implemented (CAV-MAE uses Kaldi's default True)")
    x = torch.as_tensor(np.asarray(wave) if not isinstance(wave, torch.Tensor) else wave).to(torch.float32)
    if x.dim() == 2:
        x = x[0]
    if x.dim() != 1:
        raise InputError(f"kaldi_fbank: expected 1-D samples or (channels, samples), got shape {tuple(x.shape)}")
    size = int(sample_frequency * frame_length * 0.001)
    shift = int(sample_frequency * frame_shift * 0.001)
    if size < 2 or shift < 1:
        raise InputError(f"kaldi_fbank: frame_length {frame_length} ms / frame_shift {frame_shift} ms too short "
                         f"at {sample_frequency} Hz")
    padded = 1 << (size - 1).bit_length() if round_to_power_of_two else size
    n = x.shape[0]
    if n < size:
        return torch.empty((0, num_mel_bins), dtype=torch.float32)
    m = 1 + (n - size) // shift
    frames = x.as_strided((m, size), (shift, 1))
    if remove_dc_offset:
        frames = frames - frames.mean(dim=1, keepdim=True)
    if preemphasis_coefficient != 0.0:
        prev = torch.nn.functional.pad(frames.unsqueeze(0), (1, 0), mode="replicate").squeeze(0)
        frames = frames - preemphasis_coefficient * prev[:, :-1]
    frames = frames * _window(window_type, size).unsqueeze(0)
    if padded != size:
        frames = torch.nn.functional.pad(frames, (0, padded - size))
    spectrum = torch.fft.rfft(frames).abs()
    if use_power:
        spectrum = spectrum.pow(2.0)
    banks = mel_banks(num_mel_bins, padded, sample_frequency, low_freq, high_freq)
    energies = spectrum @ banks.T
    if use_log_fbank:
        energies = torch.clamp(energies, min=_EPS).log()
    return energies


def cav_mae_fbank(wave: np.ndarray, sample_rate: int, *, target_length: int = CAV_MAE_TARGET_LENGTH,
                  mel_bins: int = CAV_MAE_MEL_BINS, mean: float = CAV_MAE_MEAN, std: float = CAV_MAE_STD,
                  source: str = "waveform") -> torch.Tensor:
    """CAV-MAE's model input ``(target_length, mel_bins)`` from a mono waveform (module docstring).
    ``source`` names the clip in errors."""
    w = np.asarray(wave, dtype=np.float32)
    if w.ndim == 2:
        w = w[0]
    if w.ndim != 1 or not np.isfinite(w).all():
        raise InputError(f"{source}: audio must be finite 1-D samples, got shape {w.shape}")
    size = int(sample_rate * 25.0 * 0.001)
    if w.shape[0] < size:
        raise InputError(f"{source}: audio of {w.shape[0]} samples is shorter than one 25 ms frame ({size} samples "
                         f"at {sample_rate} Hz)")
    t = torch.tensor(w)  # a copy: clip sets hand over read-only memory-mapped rows
    t = t - t.mean()
    fb = kaldi_fbank(t, float(sample_rate), num_mel_bins=mel_bins, window_type="hanning", dither=0.0,
                     frame_shift=10.0, use_energy=False)
    p = target_length - fb.shape[0]
    if p > 0:
        fb = torch.nn.functional.pad(fb, (0, 0, 0, p))
    elif p < 0:
        fb = fb[:target_length]
    return (fb - mean) / std
