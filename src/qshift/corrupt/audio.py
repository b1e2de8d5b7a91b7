"""Audio corruptions (``a2v`` queries): gaussian noise and added environmental noise, severities 1-5.

The corruption suite and its severities are READ's (Yang et al., ICLR 2024, github
XLearning-SCU/2024-ICLR-READ, ``make_corruptions/make_c_audio.py``; facts carried over, code
written here):

- ``gaussian_noise``: the waveform (``soundfile.read``: floats in [-1, 1]) plus white noise
  ``N(0, std)`` with ``std = [0.08, 0.12, 0.18, 0.26, 0.38][severity - 1]`` — an absolute level,
  not an SNR;
- ``traffic``, ``crowd``, ``rain``, ``thunder``, ``wind``: the recording ``<weather_path>/<name>.wav``
  trimmed to the clip's length (tiled first when shorter; always from its start), its gain raised
  by ``[1, 2, 4, 6, 8][severity - 1]`` dB (pydub ``apply_gain``), then overlaid on the clip (pydub
  ``overlay``: a sample-wise sum, saturating at full scale — here: clipped to [-1, 1]).

So a higher severity is a louder noise over the same clip: the signal-to-noise ratio falls
monotonically with severity (tested). READ reports no SNRs; :func:`snr_db` measures them.

Environmental recordings. READ ships none (its ``weather_audios`` folder is the user's). Here:

- ``corrupt.audio.noise_dir: PATH`` — the user supplies them: ``PATH/<name>.wav`` (PCM WAV,
  read with the standard library; several channels are averaged to mono; resampled linearly
  to the clip's rate), or ``<name>.npy`` / ``<name>.npz`` (key ``wave``, float samples; the
  ``.npz`` may carry ``sample_rate``, else the clip's rate is assumed);
- no ``noise_dir`` (the built-in benchmark): **synthetic noise beds**, generated here from a
  fixed seed per name (:func:`synthetic_bed`; they are *not* recordings): traffic = low-passed
  rumble + a slowly modulated engine hum; crowd = babble of 8 speech-band noise "voices" with
  syllable-rate envelopes; rain = a hiss of high-passed noise + thousands of random droplet
  clicks; thunder = brown-noise rumble bursts with slow decays; wind = band-passed noise
  whose level and centre frequency gust slowly. Each bed is 10 s, scaled to an RMS of
  ``bed_rms`` (``corrupt.audio.bed_rms``, default :data:`BED_RMS` = 0.005, about -46 dBFS): the
  level READ's gain is applied to. This is an assumption (READ's recordings' levels are
  unknown), chosen for the built-in benchmark: its two-tower, trained on clean synthetic
  soundtracks, loses almost all a2v accuracy to a bed of RMS 0.1 even at severity 1 (measured:
  README), while at 0.005 severities 1-5 span mild to strong.

The noise of the environmental types is, as in READ, the same segment of the bed for every
clip (its first ``len(clip)`` samples); ``gaussian_noise`` is seeded per clip (the pipeline
passes ``query_seed(dataset, clip id, corruption, severity)``).
"""

from __future__ import annotations

import wave as wavlib
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import ConfigError, InputError
from ..io import derive_seed
from ..registry import Registry

AUDIO_CORRUPTIONS: Registry = Registry("audio corruption")
GAUSSIAN_STD = (0.08, 0.12, 0.18, 0.26, 0.38)  # READ make_c_audio.py gaussian_noise
NOISE_GAIN_DB = (1, 2, 4, 6, 8)  # READ make_c_audio.py add_external_noise: scale = [1, 2, 4, 6, 8]
ENVIRONMENTAL = ("traffic", "crowd", "rain", "thunder", "wind")
READ_AUDIO = ("gaussian_noise",) + ENVIRONMENTAL
BED_SECONDS = 10.0
BED_RMS = 0.005  # the synthetic beds' level before READ's gain (about -46 dBFS; corrupt.audio.bed_rms)


def check_wave(wave: np.ndarray, what: str = "clip") -> np.ndarray:
    wave = np.asarray(wave)
    if wave.ndim != 1 or not np.issubdtype(wave.dtype, np.floating):
        raise InputError(f"{what}: a waveform must be a 1-D float array, got {wave.dtype} {wave.shape}")
    if wave.size == 0:
        raise InputError(f"{what}: the waveform is empty (zero-length audio)")
    if not np.isfinite(wave).all():
        raise InputError(f"{what}: the waveform has {int((~np.isfinite(wave)).sum())} NaN/inf samples")
    return wave.astype(np.float32, copy=False)


def _severity(severity) -> int:
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 1 <= severity <= 5:
        raise InputError(f"audio corruption severity must be an integer in 1..5, got {severity!r}")
    return int(severity)


def gaussian_noise(wave: np.ndarray, severity: int, seed: int, **_) -> np.ndarray:
    rng = np.random.default_rng(int(seed) % 2**32)
    noise = rng.normal(0.0, GAUSSIAN_STD[severity - 1], wave.shape)
    return np.clip(wave + noise, -1.0, 1.0).astype(np.float32)


AUDIO_CORRUPTIONS.register("gaussian_noise")(gaussian_noise)


def _shape(noise: np.ndarray, sr: int, response) -> np.ndarray:
    """``noise`` filtered by the magnitude response ``response(freqs_hz)`` (FFT domain)."""
    spec = np.fft.rfft(noise)
    f = np.fft.rfftfreq(len(noise), 1.0 / sr)
    return np.fft.irfft(spec * response(f), n=len(noise))


def _slow(rng, n: int, sr: int, rate_hz: float) -> np.ndarray:
    """A smooth random curve in [0, 1] varying at about ``rate_hz``."""
    knots = max(2, int(n / sr * rate_hz) + 2)
    y = rng.random(knots)
    return np.interp(np.linspace(0, knots - 1, n), np.arange(knots), y)


def synthetic_bed(name: str, sample_rate: int, seconds: float = BED_SECONDS, rms: float = BED_RMS) -> np.ndarray:
    """A SYNTHETIC environmental noise bed (module docstring) of RMS ``rms``, float32."""
    return (_synthetic_bed(name, int(sample_rate), float(seconds)) * np.float32(rms)).astype(np.float32)


@lru_cache(maxsize=16)
def _synthetic_bed(name: str, sr: int, seconds: float) -> np.ndarray:  # unit RMS
    if name not in ENVIRONMENTAL:
        raise ConfigError(f"synthetic noise bed {name!r}; valid: {', '.join(ENVIRONMENTAL)}")
    rng = np.random.default_rng(derive_seed("qshift-noise-bed", name))
    n = int(round(sr * seconds))
    t = np.arange(n) / sr
    white = rng.normal(0, 1, n)
    if name == "traffic":
        rumble = _shape(white, sr, lambda f: 1.0 / (1.0 + (f / 150.0) ** 2))
        hum_f = 70 + 25 * _slow(rng, n, sr, 0.3)
        hum = np.sign(np.sin(2 * np.pi * np.cumsum(hum_f) / sr)) * (0.3 + 0.7 * _slow(rng, n, sr, 0.5))
        bed = rumble / rumble.std() + 0.4 * _shape(hum, sr, lambda f: 1.0 / (1.0 + (f / 400.0) ** 2))
    elif name == "crowd":
        bed = np.zeros(n)
        for _ in range(8):
            centre = rng.uniform(300, 2500)
            voice = _shape(rng.normal(0, 1, n), sr, lambda f, c=centre: np.exp(-0.5 * ((f - c) / (0.35 * c)) ** 2))
            syll = (0.5 - 0.5 * np.cos(2 * np.pi * rng.uniform(3, 6) * t + rng.uniform(0, 6.3))) ** 2
            bed += voice / (voice.std() + 1e-12) * syll * _slow(rng, n, sr, 0.7)
    elif name == "rain":
        hiss = _shape(white, sr, lambda f: np.clip(f / 2000.0, 0, 1))
        drops = np.zeros(n)
        idx = rng.integers(0, n, int(seconds * 600))
        drops[idx] = rng.normal(0, 1, len(idx)) * rng.uniform(0.5, 3.0, len(idx))
        kernel = np.exp(-np.arange(int(0.004 * sr)) / (0.0008 * sr))
        drops = np.convolve(drops, kernel)[:n]
        bed = hiss / hiss.std() + drops / (drops.std() + 1e-12)
    elif name == "thunder":
        brown = np.cumsum(white)
        brown = _shape(brown - brown.mean(), sr, lambda f: (f > 20) / (1.0 + (f / 120.0) ** 2))
        env = np.zeros(n)
        for start in rng.uniform(0, seconds * 0.8, 4):
            s = int(start * sr)
            k = np.arange(n - s) / sr
            env[s:] += rng.uniform(0.5, 1.0) * np.clip(k / 0.05, 0, 1) * np.exp(-k / rng.uniform(0.8, 2.0))
        bed = brown / brown.std() * (0.1 + env)
    else:  # wind
        bed = np.zeros(n)
        gust = _slow(rng, n, sr, 0.4)
        for lo, hi in ((80, 400), (300, 1200)):
            band = _shape(rng.normal(0, 1, n), sr, lambda f, lo=lo, hi=hi: ((f > lo) & (f < hi)).astype(float))
            bed += band / band.std() * (0.2 + gust)
    bed = bed - bed.mean()
    return (bed / (np.sqrt(np.mean(bed ** 2)) + 1e-12)).astype(np.float32)


def _resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    if sr_in == sr_out:
        return x
    n = int(round(len(x) * sr_out / sr_in))
    return np.interp(np.arange(n) * (sr_in / sr_out), np.arange(len(x)), x).astype(np.float32)


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """A PCM WAV file -> (mono float32 in [-1, 1], sample rate); errors name the file."""
    path = Path(path)
    try:
        with wavlib.open(str(path), "rb") as w:
            sr, ch, width, frames = w.getframerate(), w.getnchannels(), w.getsampwidth(), w.readframes(w.getnframes())
    except (OSError, EOFError, wavlib.Error) as e:
        raise InputError(f"noise recording {path} is not a readable PCM WAV file: {e}") from None
    if width == 1:
        x = (np.frombuffer(frames, np.uint8).astype(np.float32) - 128) / 128
    elif width == 2:
        x = np.frombuffer(frames, "<i2").astype(np.float32) / 32768
    elif width == 3:
        b = np.frombuffer(frames, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = (np.where(v >= 1 << 23, v - (1 << 24), v)).astype(np.float32) / (1 << 23)
    elif width == 4:
        x = np.frombuffer(frames, "<i4").astype(np.float32) / 2**31
    else:
        raise InputError(f"noise recording {path}: unsupported sample width {width} bytes")
    return x.reshape(-1, ch).mean(axis=1), int(sr)


def load_bed(name: str, noise_dir: str | Path | None, sample_rate: int, bed_rms: float | None = None) -> np.ndarray:
    """The environmental noise of ``name`` at ``sample_rate``: the user's recording from
    ``noise_dir`` (wav, npy or npz; at its own level), or the synthetic bed of RMS ``bed_rms``
    when ``noise_dir`` is None."""
    if noise_dir is None:
        return synthetic_bed(name, sample_rate, rms=BED_RMS if bed_rms is None else float(bed_rms))
    return _user_bed(name, str(noise_dir), int(sample_rate)).copy()


@lru_cache(maxsize=16)
def _user_bed(name: str, noise_dir: str, sample_rate: int) -> np.ndarray:
    root = Path(noise_dir)
    found = [root / f"{name}{ext}" for ext in (".wav", ".npy", ".npz") if (root / f"{name}{ext}").is_file()]
    if not found:
        raise InputError(f"corrupt.audio.noise_dir {root}: no recording for {name!r} (expected {name}.wav, "
                         f"{name}.npy or {name}.npz there)")
    path = found[0]
    if path.suffix == ".wav":
        x, sr = read_wav(path)
    else:
        try:
            with np.load(path, allow_pickle=False) as z:
                if path.suffix == ".npz":
                    if "wave" not in z:
                        raise InputError(f"noise recording {path} has no array 'wave' (keys: {', '.join(z.files)})")
                    x, sr = np.asarray(z["wave"], np.float32), int(z["sample_rate"]) if "sample_rate" in z else sample_rate
                else:
                    x, sr = np.asarray(z, np.float32), sample_rate
        except (OSError, ValueError) as e:
            raise InputError(f"noise recording {path} is unreadable: {e}") from None
        if x.ndim == 2:
            x = x.mean(axis=1 if x.shape[1] <= 8 else 0)
    if x.ndim != 1 or x.size == 0 or not np.isfinite(x).all():
        raise InputError(f"noise recording {path} must hold a non-empty, finite waveform, got shape {x.shape}")
    return _resample(x.astype(np.float32), sr, sample_rate)


def _environmental(name: str):
    def corruption(wave: np.ndarray, severity: int, seed: int, sample_rate: int = 16000, noise_dir=None,
                   bed_rms=None) -> np.ndarray:
        bed = load_bed(name, noise_dir, sample_rate, bed_rms)
        if len(bed) < len(wave):  # READ: repeat the recording, then cut to the clip's length
            bed = np.tile(bed, len(wave) // len(bed) + 1)
        gain = 10 ** (NOISE_GAIN_DB[severity - 1] / 20)  # pydub apply_gain(dB)
        return np.clip(wave + gain * bed[:len(wave)], -1.0, 1.0).astype(np.float32)

    corruption.__name__ = name
    corruption.__doc__ = f"{name} noise added at READ's gain (+1/2/4/6/8 dB for severities 1-5)."
    return corruption


for _name in ENVIRONMENTAL:
    AUDIO_CORRUPTIONS.register(_name)(_environmental(_name))


def corrupt_audio(name: str, wave: np.ndarray, severity: int, seed: int, sample_rate: int = 16000,
                  noise_dir: str | Path | None = None, what: str = "clip", bed_rms: float | None = None) -> np.ndarray:
    """``name`` at ``severity`` on a mono float waveform; float32, same length, clipped to [-1, 1]."""
    fn = AUDIO_CORRUPTIONS.get(name)
    severity = _severity(severity)
    wave = check_wave(wave, what)
    if name == "gaussian_noise":
        return fn(wave, severity, seed)
    return fn(wave, severity, seed, sample_rate=sample_rate, noise_dir=noise_dir, bed_rms=bed_rms)


def snr_db(clean: np.ndarray, corrupted: np.ndarray) -> float:
    """10 log10(signal power / noise power), the noise being ``corrupted - clean``."""
    noise = np.asarray(corrupted, np.float64) - np.asarray(clean, np.float64)
    return float(10 * np.log10(np.sum(np.asarray(clean, np.float64) ** 2) / max(np.sum(noise ** 2), 1e-20)))
