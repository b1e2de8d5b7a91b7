"""The built-in video-audio two-tower, trained from scratch in the pretrain stage (``builtin-va``).

- **Video tower**: every frame through a small ViT (patch ``patch`` px, a learned position
  embedding and a learned *frame-index* embedding added to the patch tokens — without it, mean
  pooling could not tell a left-moving object from a right-moving one — a CLS token,
  pre-norm transformer blocks, a final LayerNorm, a linear projection), then the frames'
  embeddings mean-pooled over time.
- **Audio tower**: the log-mel spectrogram (:func:`~qshift.models.video_audio.log_mel`: 25 ms
  Hann windows every 10 ms, 64 mel bands), standardised with the training set's mean and std,
  cut into ``time x mel`` patches, through a small ViT of the same form.

Both project to ``embed_dim`` and are L2-normalised; training is symmetric InfoNCE (CLIP's loss)
with a learnable temperature, AdamW, linear warm-up then cosine decay
(:func:`train_tiny_va`). Each tower's LayerNorms (the blocks' two, the final one) are what TTA
adapts when that tower encodes the queries (:meth:`TinyVideoAudio.norm_layers`).

Saved as a folder: ``qshift_va.json`` (architecture, front end, training figures) and
``qshift_va.pt`` (the state dict); ``model.source: local-dir:<folder>`` loads it.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, InputError
from .base import norm_layers
from .video_audio import VA_MARKER, VideoAudioModel, log_mel, mel_filterbank

WEIGHTS = "qshift_va.pt"
# pretrain.va (params): the defaults; the builtin-va preset overrides what it changes
ARCH_DEFAULTS = {"width": 96, "layers": 3, "heads": 4, "embed_dim": 128, "patch": 8, "audio_patch": [16, 16],
                 "n_mels": 64, "audio_frames": 96}
TRAIN_DEFAULTS = {"steps": 600, "batch_size": 128, "lr": 1.0e-3, "weight_decay": 0.05, "warmup": 50,
                  "init_temperature": 0.07}
VIDEO_MEAN, VIDEO_STD = 0.5, 0.25


class Tower(nn.Module):
    """Patch tokens (+ position, + optional frame index) -> CLS -> pre-norm blocks -> LN -> proj."""

    def __init__(self, in_ch: int, patch: tuple[int, int], grid: tuple[int, int], width: int, layers: int,
                 heads: int, embed_dim: int, n_frames: int = 0):
        super().__init__()
        self.patch_embed = nn.Conv2d(in_ch, width, kernel_size=patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.randn(1, grid[0] * grid[1] + 1, width) * 0.02)
        self.frame = nn.Parameter(torch.randn(n_frames, 1, width) * 0.02) if n_frames else None
        self.blocks = nn.ModuleList(nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0,
                                                               activation="gelu", batch_first=True, norm_first=True)
                                    for _ in range(layers))
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Linear(width, embed_dim, bias=False)

    def forward(self, x: torch.Tensor, frame_index: torch.Tensor | None = None) -> torch.Tensor:
        tok = self.patch_embed(x).flatten(2).transpose(1, 2)  # [N, P, W]
        tok = torch.cat([self.cls.expand(len(tok), -1, -1), tok], dim=1) + self.pos
        if self.frame is not None and frame_index is not None:
            tok = tok + self.frame[frame_index]
        for blk in self.blocks:
            tok = blk(tok)
        return self.proj(self.ln_post(tok[:, 0]))


class TwoTower(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        a = {**ARCH_DEFAULTS, **cfg}
        size, p, t = int(a["image_size"]), int(a["patch"]), int(a["n_frames"])
        if size % p:
            raise ConfigError(f"pretrain.va.patch {p} must divide the frame size {size}")
        ap = tuple(int(v) for v in a["audio_patch"])
        if a["audio_frames"] % ap[0] or a["n_mels"] % ap[1]:
            raise ConfigError(f"pretrain.va.audio_patch {list(ap)} must divide (audio_frames, n_mels) = "
                              f"({a['audio_frames']}, {a['n_mels']})")
        self.video = Tower(3, (p, p), (size // p, size // p), a["width"], a["layers"], a["heads"], a["embed_dim"], t)
        self.audio = Tower(1, ap, (a["audio_frames"] // ap[0], a["n_mels"] // ap[1]), a["width"], a["layers"],
                           a["heads"], a["embed_dim"])
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / a.get("init_temperature", 0.07))))
        self.n_frames = t

    def encode_video(self, v: torch.Tensor) -> torch.Tensor:  # [B, T, 3, H, W]
        b, t = v.shape[:2]
        idx = torch.arange(t, device=v.device).repeat(b)
        z = self.video(v.reshape(b * t, *v.shape[2:]), idx)
        return z.reshape(b, t, -1).mean(dim=1)

    def encode_audio(self, a: torch.Tensor) -> torch.Tensor:  # [B, F, M] standardised
        return self.audio(a[:, None])


class TinyVideoAudio(VideoAudioModel):
    """The built-in two-tower as a :class:`~qshift.models.video_audio.VideoAudioModel`."""

    def __init__(self, name: str, module: TwoTower, config: dict, device: torch.device):
        self.name, self.module, self.config, self.device = name, module.to(device), config, device
        self.n_frames, self.image_size = int(config["n_frames"]), int(config["image_size"])
        self.sample_rate, self.n_mels = int(config["sample_rate"]), int(config["n_mels"])
        self.audio_frames = int(config["audio_frames"])
        self.samples = int(config["samples"])
        self.fb_mean, self.fb_std = float(config["fbank_mean"]), float(config["fbank_std"])
        self._fbank = None

    def video_transform(self, frames: np.ndarray) -> torch.Tensor:
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
            raise InputError(f"video frames must be uint8 [T>0, H, W, 3], got {frames.dtype} {frames.shape}")
        idx = np.linspace(0, len(frames) - 1, self.n_frames).round().astype(int)  # uniform frame sampling
        x = torch.from_numpy(np.ascontiguousarray(frames[idx])).permute(0, 3, 1, 2).float() / 255.0
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                              antialias=True)
        return (x - VIDEO_MEAN) / VIDEO_STD

    def audio_transform(self, wave: np.ndarray, sample_rate: int) -> torch.Tensor:
        wave = np.array(wave, dtype=np.float32)  # a copy: clip sets are read-only memory maps
        if wave.ndim != 1 or wave.size == 0:
            raise InputError(f"a waveform must be a non-empty 1-D array, got shape {wave.shape}")
        if int(sample_rate) != self.sample_rate:  # linear resampling to the model's rate
            n = int(round(len(wave) * self.sample_rate / sample_rate))
            wave = np.interp(np.arange(n) * (sample_rate / self.sample_rate), np.arange(len(wave)), wave).astype(np.float32)
        w = torch.from_numpy(wave)
        if len(w) < self.samples:
            w = F.pad(w, (0, self.samples - len(w)))
        return self.fbank_features(w[:self.samples])

    def fbank_features(self, wave: torch.Tensor) -> torch.Tensor:
        """``[..., samples]`` -> standardised log-mel ``[..., audio_frames, n_mels]`` (padded/cut in time)."""
        if self._fbank is None:
            self._fbank = mel_filterbank(self.n_mels, 512, self.sample_rate)
        m = log_mel(wave, self.sample_rate, self.n_mels, fbank=self._fbank)
        f = m.shape[-2]
        if f < self.audio_frames:
            m = F.pad(m, (0, 0, 0, self.audio_frames - f), value=math.log(1e-6))
        return (m[..., :self.audio_frames, :] - self.fb_mean) / self.fb_std

    def _encode_video(self, video: torch.Tensor) -> torch.Tensor:
        return self.module.encode_video(video.float())

    def _encode_audio(self, fbank: torch.Tensor) -> torch.Tensor:
        return self.module.encode_audio(fbank.float())

    def norm_layers(self, modality: str):
        if modality not in ("video", "audio"):
            raise ConfigError(f"modality {modality!r} for video-audio model {self.name!r}; valid: video, audio")
        return norm_layers(getattr(self.module, modality), prefix=modality)


def load_tiny_va(path: str | Path, device: torch.device) -> TinyVideoAudio:
    path = Path(path)
    cfg_file, weights = path / VA_MARKER, path / WEIGHTS
    if not cfg_file.is_file() or not weights.is_file():
        raise InputError(f"video-audio model folder {path} needs {VA_MARKER} and {WEIGHTS} (the pretrain stage "
                         f"writes them)")
    try:
        config = json.loads(cfg_file.read_text())
        module = TwoTower(config["arch"])
        module.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise InputError(f"video-audio model {path} is unreadable: {e}") from None
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return TinyVideoAudio(config.get("name", path.name), module, {**config["arch"], **config["front_end"]}, device)


# -- training ---------------------------------------------------------------------------------------

def lr_at(step: int, base: float, warmup: int, total: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return 0.5 * base * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


@torch.no_grad()
def recall(model: TinyVideoAudio, video: torch.Tensor, audio: torch.Tensor, batch: int = 256) -> dict:
    """Clean R@1/5/10 of v2a and a2v on paired (video, fbank) tensors (clip i <-> clip i)."""
    zv = torch.cat([model.encode("video", video[i:i + batch]) for i in range(0, len(video), batch)])
    za = torch.cat([model.encode("audio", audio[i:i + batch]) for i in range(0, len(audio), batch)])
    sims = zv @ za.T
    out = {}
    for name, s in (("v2a", sims), ("a2v", sims.T)):
        rank = (s > s.diagonal()[:, None]).sum(dim=1)
        for k in (1, 5, 10):
            out[f"{name}_R@{k}"] = round(100.0 * float((rank < k).float().mean()), 2)
    return out


def split_tensors(model: TinyVideoAudio, clips, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """A clip set's frames and fbanks as tensors, built chunk by chunk (the raw waveforms are never
    all in memory at once)."""
    video, audio = [], []
    for i in range(0, clips.n, chunk):
        idx = np.arange(i, min(clips.n, i + chunk))
        fr = clips.frames(idx)
        video.append(torch.stack([model.video_transform(f) for f in fr]))
        wav = torch.from_numpy(np.ascontiguousarray(clips.audio(idx), dtype=np.float32))
        if wav.shape[1] < model.samples:
            wav = F.pad(wav, (0, model.samples - wav.shape[1]))
        audio.append(model.fbank_features(wav[:, :model.samples]))
    return torch.cat(video), torch.cat(audio)


def train_tiny_va(dataset_dir: str | Path, out_dir: str | Path, hp: dict | None, seed: int, device: torch.device,
                  name: str = "qshift-tiny-va", progress: bool = True) -> dict:
    """Train the two-tower on the ``train`` clip set (figures on ``val``), save it to ``out_dir``."""
    from ..io import atomic_dir
    from ..progress import tqdm
    from ..runtime import seed_everything
    from ..va import read_clipset

    hp = dict(hp or {})
    unknown = sorted(set(hp) - set(ARCH_DEFAULTS) - set(TRAIN_DEFAULTS))
    if unknown:
        raise ConfigError(f"params: pretrain.va has unknown key(s) {', '.join(unknown)}; valid: "
                          f"{', '.join(list(ARCH_DEFAULTS) + list(TRAIN_DEFAULTS))}")
    arch = {k: hp.get(k, v) for k, v in ARCH_DEFAULTS.items()}
    tr = {k: hp.get(k, v) for k, v in TRAIN_DEFAULTS.items()}
    for k in ("steps", "batch_size", "warmup", "width", "layers", "heads", "embed_dim", "patch"):
        v = arch.get(k, tr.get(k))
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if k == "warmup" else 1):
            raise ConfigError(f"params: pretrain.va.{k} must be a positive integer, got {v!r}")
    train = read_clipset(Path(dataset_dir) / "train")
    val_dir = Path(dataset_dir) / "val"
    val = read_clipset(val_dir) if (val_dir / "clips.json").is_file() else None
    if train.frames_file is None or train.audio_file is None:
        raise InputError(f"clip set {train.manifest} needs both frames and audio to train on")
    t, h = train.frames_shape[1], train.frames_shape[2]
    seconds = train.samples / train.sample_rate
    arch.update(image_size=int(h), n_frames=int(t), init_temperature=float(tr["init_temperature"]))
    front = {"sample_rate": train.sample_rate, "samples": train.samples, "n_mels": arch["n_mels"],
             "audio_frames": arch["audio_frames"], "fbank_mean": 0.0, "fbank_std": 1.0, "seconds": seconds,
             "video_mean": VIDEO_MEAN, "video_std": VIDEO_STD}
    seed_everything(seed)
    module = TwoTower(arch)
    model = TinyVideoAudio(name, module, {**arch, **front}, device)
    start = time.perf_counter()
    video, audio = split_tensors(model, train)  # fbanks standardised with (0, 1): raw log-mel
    mean, std = float(audio.mean()), float(audio.std())
    audio = (audio - mean) / std
    front.update(fbank_mean=round(mean, 6), fbank_std=round(std, 6))
    model = TinyVideoAudio(name, module, {**arch, **front}, device)
    decay = [p for n, p in module.named_parameters() if p.ndim >= 2 and "pos" not in n and "cls" not in n]
    rest = [p for n, p in module.named_parameters() if not (p.ndim >= 2 and "pos" not in n and "cls" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tr["weight_decay"]}, {"params": rest, "weight_decay": 0}],
                            lr=tr["lr"], betas=(0.9, 0.98))
    gen = torch.Generator().manual_seed(seed)
    module.train()
    n, bs = len(video), min(tr["batch_size"], len(video))
    losses = []
    for step in tqdm(range(tr["steps"]), desc="pretrain video-audio", unit="step", disable=not progress):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, tr["lr"], tr["warmup"], tr["steps"])
        idx = torch.randperm(n, generator=gen)[:bs]
        zv = F.normalize(module.encode_video(video[idx].to(device)), dim=-1)
        za = F.normalize(module.encode_audio(audio[idx].to(device)), dim=-1)
        logits = module.logit_scale.exp().clamp(max=100) * zv @ za.T
        target = torch.arange(len(idx), device=device)
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    module.eval()
    train_seconds = time.perf_counter() - start
    del video, audio
    figures = {"final_loss": round(float(np.mean(losses[-20:])), 4), "temperature": round(1 / module.logit_scale.exp().item(), 4)}
    if val is not None:
        v, a = split_tensors(model, val)
        figures.update({f"val_{k}": x for k, x in recall(model, v, a).items()})
        figures["val_n"] = val.n
    config = {"kind": "qshift-tiny-va", "name": name, "arch": arch, "front_end": front,
              "train": {**tr, "seed": seed, "n_train": n}, "figures": figures, "synthetic_data": True}
    with atomic_dir(out_dir) as tmp:
        with open(tmp / WEIGHTS, "wb") as fh:
            torch.save(module.state_dict(), fh)
        (tmp / VA_MARKER).write_text(json.dumps(config, indent=1) + "\n")
    summary = (f"(video-audio two-tower, {sum(p.numel() for p in module.parameters()):,} parameters) trained for "
               f"{tr['steps']} steps of {bs} clips ({train_seconds:.0f} s on {device}) on {n} synthetic clips."
               + (f" Clean val R@1 ({val.n} clips): v2a {figures['val_v2a_R@1']:.1f}, a2v {figures['val_a2v_R@1']:.1f}."
                  if val is not None else ""))
    return {**{f"va_{k}": x for k, x in figures.items()}, "va_train_seconds": round(train_seconds, 1),
            "va_params": sum(p.numel() for p in module.parameters()), "steps": tr["steps"],
            "train_seconds": round(train_seconds, 1), "summary": summary}
