"""The real video-audio path: CAV-MAE's preprocessing (Kaldi fbank), the CAV-MAE-architecture
loader checked against the reference implementation's outputs, and the clip decoding/adapters.
Golden arrays: tests/data/cav_mae/README.md says how they were made."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from qshift.audio_features import CAV_MAE_MEAN, CAV_MAE_STD, cav_mae_fbank, kaldi_fbank, mel_banks
from qshift.errors import InputError

DATA = Path(__file__).parent / "data" / "cav_mae"
WAVES = ("chirp", "noise", "tones")


@pytest.fixture(scope="module")
def fbank_golden():
    return np.load(DATA / "fbank_golden.npz")


def _centred(w):
    t = torch.from_numpy(w)
    return t - t.mean()


@pytest.mark.parametrize("name", WAVES)
def test_fbank_matches_torchaudio_cav_mae_call(fbank_golden, name):
    ours = kaldi_fbank(_centred(fbank_golden[f"{name}_wave"]), 16000.0, num_mel_bins=128, window_type="hanning",
                       dither=0.0, frame_shift=10.0, use_energy=False)
    ref = fbank_golden[f"{name}_torchaudio_hanning128"]
    assert ours.shape == ref.shape and ours.dtype == torch.float32
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-5, rtol=0)
    ours = kaldi_fbank(_centred(fbank_golden[f"{name}_wave"]), 16000.0, num_mel_bins=80)  # povey default
    np.testing.assert_allclose(ours.numpy(), fbank_golden[f"{name}_torchaudio_povey80"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", WAVES)
@pytest.mark.parametrize("window", ["hanning", "povey"])
def test_fbank_matches_kaldi(fbank_golden, name, window):
    ours = kaldi_fbank(_centred(fbank_golden[f"{name}_wave"]), 16000.0, num_mel_bins=80, window_type=window)
    ref = fbank_golden[f"{name}_kaldi_{window}80"]
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours.numpy(), ref, atol=2e-3, rtol=0)


def test_cav_mae_input_pads_and_normalises(fbank_golden):
    x = cav_mae_fbank(fbank_golden["chirp_wave"], 16000)
    assert x.shape == (1024, 128)
    np.testing.assert_allclose(x.numpy(), fbank_golden["chirp_cavmae_input"], atol=1e-5, rtol=0)
    # padding frames are zeros normalised with CAV-MAE's mean/std (divided by std, not 2 * std)
    np.testing.assert_allclose(x[-1].numpy(), (0 - CAV_MAE_MEAN) / CAV_MAE_STD, atol=1e-6)
    # a long clip is cut to 1024 frames: its first frames are the short clip's
    long = np.tile(fbank_golden["chirp_wave"], 9)
    y = cav_mae_fbank(long, 16000)
    assert y.shape == (1024, 128)
    assert not np.allclose(y[-1].numpy(), (0 - CAV_MAE_MEAN) / CAV_MAE_STD)


def test_mel_banks_kaldi_layout():
    b = mel_banks(128, 512, 16000.0)
    assert b.shape == (128, 257) and float(b[:, -1].abs().max()) == 0.0
    assert float(b.max()) <= 1.0 and float(b.min()) >= 0.0
    # the band Kaldi refuses (no FFT bin inside it) is empty, hence log(eps) as in torchaudio
    assert (b.sum(1) == 0).nonzero().flatten().tolist() == [3]


def test_fbank_errors_name_the_clip():
    with pytest.raises(InputError, match="clip.mp4.*shorter than one 25 ms frame"):
        cav_mae_fbank(np.zeros(100, np.float32), 16000, source="clip.mp4")
    with pytest.raises(InputError, match="clip.mp4.*finite"):
        cav_mae_fbank(np.full(16000, np.nan, np.float32), 16000, source="clip.mp4")
    with pytest.raises(InputError, match="window_type 'bogus'"):
        kaldi_fbank(np.zeros(16000, np.float32), window_type="bogus")
