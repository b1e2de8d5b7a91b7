"""``cav-mae:`` — a CAV-MAE audio-visual encoder (Gong et al., "Contrastive Audio-Visual Masked
Autoencoder", ICLR 2023) for video <-> audio retrieval.

Our own implementation of the architecture of YuanGongND/cav-mae ``src/models/cav_mae.py``
(classes ``CAVMAE`` and ``CAVMAEFT``; only the encoder — the MAE decoder and the classification
head are not used for retrieval), with the same parameter names, so the released checkpoints load:

- ``patch_embed_a`` (Conv2d 1 -> D, 16 x 16) over the fbank seen as ``(1, 128 mel, T frames)``;
  ``patch_embed_v`` (Conv2d 3 -> D, 16 x 16) over the frame; ``+ pos_embed_{a,v}`` (fixed sin-cos,
  stored in the checkpoint) ``+ modality_{a,v}``;
- ``blocks_a`` / ``blocks_v``: the modality-specific ViT blocks (11 in the released models);
- ``blocks_u``: the shared blocks (12 - 11 = 1), run per modality with that modality's own
  LayerNorms (``norm1_a/norm2_a`` or ``norm1_v/norm2_v``; ``norm1/norm2`` are the joint stream's);
  then ``norm_a`` / ``norm_v``.

Retrieval embeddings exactly as CAV-MAE's ``src/retrieval.py``: ``forward_feat`` (the modality
branch + the shared blocks with modality-specific norms), the mean over all tokens, L2-normalised.
Video: CAV-MAE embeds one frame (``frame_use = 5`` of the 10 frames its preprocessing extracts);
a clip with ``T > 1`` frames (``datasets.<name>.n_frames``; a qshift extension) has each frame
embedded and the token means averaged before normalising.

Checked against the reference code on a tiny random configuration
(``tests/data/cav_mae/``; agreement ~1e-6).

Sources: ``cav-mae:PATH`` (a ``.pth`` state dict: CAV-MAE's ``torch.save(model.state_dict())`` of a
``DataParallel`` model, so keys start with ``module.``; a bare state dict or ``{"model": ...}`` /
``{"state_dict": ...}`` work too) or ``cav-mae:https://...`` (downloaded once, resumably, into the
model cache ``model.cache_dir/cav-mae/``). Options before an ``@``:
``cav-mae:heads=12,norms=branch@PATH``. The architecture (width, depths, image size, audio
length) is read from the weights' shapes; the attention heads cannot be, so ``heads`` defaults to width / 64 (12 for the
released ViT-B models).

Which normalisation layers TTA adapts (``norms=``), for the query modality ``m``:

- ``branch`` (default; as the image-text towers: every LayerNorm the query's forward pass uses):
  ``blocks_m.*.norm1/norm2``, ``blocks_u.*.norm1_m/norm2_m``, ``norm_m``;
- ``shared``: only the shared layers' ``blocks_u.*.norm1_m/norm2_m`` and ``norm_m``.

READ (Yang et al., ICLR 2024; XLearning-SCU/2024-ICLR-READ ``TTA/READ.py``) does not adapt
LayerNorms: it adapts the q/k/v projections of the first shared block's attention
(``blocks_u.0.attn.q/k/v``, copies of ``qkv`` used when the joint audio-visual sequence passes
through) of a fine-tuned ``CAVMAEFT`` classifier. Retrieval encodes each modality separately, so
there is no joint sequence; adapting the query branch's LayerNorms is **a reconstruction**
(REST's exact protocol for video-audio retrieval is not published).
"""

from __future__ import annotations

import re
from pathlib import Path
import numpy as np
import torch
from torch import nn

from ..audio_features import CAV_MAE_MEAN, CAV_MAE_MEL_BINS, CAV_MAE_SAMPLE_RATE, CAV_MAE_STD, cav_mae_fbank
from ..errors import ConfigError, InputError
from .base import LOADERS, missing_path_error
from .video_audio import VA_MODALITIES, VideoAudioModel

# CAV-MAE's frame preprocessing (src/dataloader.py: T.Normalize; src/retrieval.py: im_res 224)
IMAGE_MEAN = (0.4850, 0.4560, 0.4060)
IMAGE_STD = (0.2290, 0.2240, 0.2250)
IMAGE_SIZE = 224
NORM_SCOPES = ("branch", "shared")
_TAG = {"video": "v", "audio": "a"}
# keys every CAV-MAE encoder has (the errors name them)
REQUIRED_KEYS = ("patch_embed_a.proj.weight", "patch_embed_v.proj.weight", "modality_a", "modality_v",
                 "pos_embed_a", "pos_embed_v", "blocks_a.0.attn.qkv.weight", "blocks_v.0.attn.qkv.weight",
                 "blocks_u.0.attn.qkv.weight", "norm_a.weight", "norm_v.weight")
# checkpoint keys that are not the encoder's (MAE decoder, classifier head, READ's q/k/v copies)
_IGNORED = re.compile(r"^(decoder_|mask_token|mlp_head\.|blocks_u\.\d+\.attn\.[qkv]\.)")


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """A pre-norm ViT block with three sets of LayerNorms: joint (``norm1``/``norm2``), audio
    (``_a``) and visual (``_v``); the attention and MLP weights are shared."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        for suffix in ("", "_a", "_v"):
            setattr(self, f"norm1{suffix}", nn.LayerNorm(dim))
            setattr(self, f"norm2{suffix}", nn.LayerNorm(dim))
        self.attn = Attention(dim, heads)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, modality: str | None = None) -> torch.Tensor:
        s = "" if modality is None else f"_{modality}"
        x = x + self.attn(getattr(self, f"norm1{s}")(x))
        return x + self.mlp(getattr(self, f"norm2{s}")(x))


class PatchEmbed(nn.Module):
    def __init__(self, in_chans: int, dim: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class CavMaeEncoder(nn.Module):
    """CAV-MAE's encoder (module docstring); ``audio_patches`` / ``video_patches`` fix the
    positional embeddings' lengths (512 / 196 for 1024 frames / 224 px at patch 16)."""

    def __init__(self, embed_dim: int = 768, specific_depth: int = 11, shared_depth: int = 1, heads: int = 12,
                 patch: int = 16, audio_patches: int = 512, video_patches: int = 196, mlp_ratio: float = 4.0):
        super().__init__()
        self.patch = patch
        self.patch_embed_a = PatchEmbed(1, embed_dim, patch)
        self.patch_embed_v = PatchEmbed(3, embed_dim, patch)
        self.modality_a = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.modality_v = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed_a = nn.Parameter(torch.zeros(1, audio_patches, embed_dim))
        self.pos_embed_v = nn.Parameter(torch.zeros(1, video_patches, embed_dim))
        self.blocks_a = nn.ModuleList([Block(embed_dim, heads, mlp_ratio) for _ in range(specific_depth)])
        self.blocks_v = nn.ModuleList([Block(embed_dim, heads, mlp_ratio) for _ in range(specific_depth)])
        self.blocks_u = nn.ModuleList([Block(embed_dim, heads, mlp_ratio) for _ in range(shared_depth)])
        self.norm_a = nn.LayerNorm(embed_dim)
        self.norm_v = nn.LayerNorm(embed_dim)
        self.norm = nn.LayerNorm(embed_dim)  # the joint stream's (unused for retrieval; kept so keys match)

    def audio_tokens(self, fbank: torch.Tensor) -> torch.Tensor:
        """``(B, frames, mel)`` -> ``(B, tokens, D)``, as ``forward_feat``'s audio output."""
        a = self.patch_embed_a(fbank.unsqueeze(1).transpose(2, 3))
        a = a + self.pos_embed_a + self.modality_a
        for blk in self.blocks_a:
            a = blk(a)
        for blk in self.blocks_u:
            a = blk(a, "a")
        return self.norm_a(a)

    def video_tokens(self, frames: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> ``(B, tokens, D)``, as ``forward_feat``'s visual output."""
        v = self.patch_embed_v(frames)
        v = v + self.pos_embed_v + self.modality_v
        for blk in self.blocks_v:
            v = blk(v)
        for blk in self.blocks_u:
            v = blk(v, "v")
        return self.norm_v(v)


class CavMaeModel(VideoAudioModel):
    """CAV-MAE as a :class:`~qshift.models.video_audio.VideoAudioModel` (``encode_video``,
    ``encode_audio``, ``video_transform``, ``audio_transform``, ``norm_layers``)."""

    def __init__(self, name: str, module: CavMaeEncoder, device: torch.device, *, image_size: int = IMAGE_SIZE,
                 target_length: int = 1024, norms: str = "branch"):
        if norms not in NORM_SCOPES:
            raise ConfigError(f"cav-mae norms={norms!r}; valid: {', '.join(NORM_SCOPES)}")
        self.name = name
        self.module = module.to(device).eval()
        self.device = device
        self.image_size = image_size
        self.target_length = target_length
        self.norms = norms
        self.sample_rate = CAV_MAE_SAMPLE_RATE
        self.mel_bins = CAV_MAE_MEL_BINS

    # --- preprocessing -------------------------------------------------------------------------
    def video_transform(self, frames_uint8: np.ndarray) -> torch.Tensor:
        """``(T, H, W, 3)`` uint8 RGB -> ``(T, 3, S, S)``: CAV-MAE's frame extraction
        (``Resize(S)`` bilinear + ``CenterCrop(S)``, stored as 8-bit) then its dataloader
        (``Resize(S)`` bicubic + ``CenterCrop(S)``, ``ToTensor``, ImageNet mean/std). The JPEG round
        trip of CAV-MAE's extracted frames is not reproduced."""
        from PIL import Image
        from torchvision import transforms as T
        from torchvision.transforms import InterpolationMode

        arr = np.asarray(frames_uint8)
        if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8 or arr.shape[0] == 0:
            raise InputError(f"video_transform: expected uint8 frames (T, H, W, 3) with T >= 1, got "
                             f"{arr.dtype} {arr.shape}")
        s = self.image_size
        extract = T.Compose([T.Resize(s), T.CenterCrop(s)])
        load = T.Compose([T.Resize(s, interpolation=InterpolationMode.BICUBIC), T.CenterCrop(s), T.ToTensor(),
                          T.Normalize(IMAGE_MEAN, IMAGE_STD)])
        return torch.stack([load(extract(Image.fromarray(f))) for f in arr])

    def audio_transform(self, wave: np.ndarray, sample_rate: int) -> torch.Tensor:
        """Waveform (mono, or ``(channels, samples)``: the first channel, as CAV-MAE's
        ``sox remix 1``) -> ``(target_length, 128)`` normalised fbank. Other sample rates are
        resampled to 16 kHz (polyphase, scipy); decoded clips arrive at 16 kHz already."""
        w = np.asarray(wave, dtype=np.float32)
        if w.ndim == 2:
            w = w[0]
        if int(sample_rate) != self.sample_rate:
            from math import gcd

            from scipy.signal import resample_poly

            g = gcd(int(sample_rate), self.sample_rate)
            w = resample_poly(w, self.sample_rate // g, int(sample_rate) // g).astype(np.float32)
        return cav_mae_fbank(w, self.sample_rate, target_length=self.target_length, mel_bins=self.mel_bins,
                             mean=CAV_MAE_MEAN, std=CAV_MAE_STD)

    # --- encoding (VideoAudioModel.encode moves the batch and L2-normalises) --------------------
    def _encode_audio(self, fbank: torch.Tensor) -> torch.Tensor:
        return self.module.audio_tokens(fbank.float()).mean(dim=1)

    def _encode_video(self, video: torch.Tensor) -> torch.Tensor:
        b, t = video.shape[:2]
        z = self.module.video_tokens(video.float().flatten(0, 1)).mean(dim=1)
        return z.reshape(b, t, -1).mean(dim=1)

    # --- test-time adaptation ------------------------------------------------------------------
    def norm_layers(self, modality: str) -> list[tuple[str, nn.Module]]:
        """The LayerNorms on ``modality``'s forward path (``norms``: module docstring)."""
        if modality not in VA_MODALITIES:
            raise ConfigError(f"modality {modality!r}; valid for {self.name}: {', '.join(VA_MODALITIES)}")
        m, enc = _TAG[modality], self.module
        out: list[tuple[str, nn.Module]] = []
        if self.norms == "branch":
            for i, blk in enumerate(getattr(enc, f"blocks_{m}")):
                out += [(f"blocks_{m}.{i}.norm1", blk.norm1), (f"blocks_{m}.{i}.norm2", blk.norm2)]
        for i, blk in enumerate(enc.blocks_u):
            out += [(f"blocks_u.{i}.norm1_{m}", getattr(blk, f"norm1_{m}")),
                    (f"blocks_u.{i}.norm2_{m}", getattr(blk, f"norm2_{m}"))]
        out.append((f"norm_{m}", getattr(enc, f"norm_{m}")))
        return out


# --- loading -----------------------------------------------------------------------------------
_OPTIONS = {"heads": int, "norms": str}


def parse_source(ident: str) -> tuple[dict, str]:
    """``[k=v,...@]PATH_OR_URL`` -> (options, location)."""
    opts: dict = {}
    head, sep, rest = ident.partition("@")
    if sep and "=" in head and "/" not in head:
        for part in filter(None, head.split(",")):
            key, eq, value = part.partition("=")
            if not eq or key not in _OPTIONS:
                raise ConfigError(f"cav-mae source option {part!r}; valid: {', '.join(k + '=' for k in _OPTIONS)} "
                                  f"(cav-mae:heads=12,norms=branch@PATH_OR_URL)")
            try:
                opts[key] = _OPTIONS[key](value)
            except ValueError:
                raise ConfigError(f"cav-mae source option {key}={value!r} is not a {_OPTIONS[key].__name__}") from None
        ident = rest
    if not ident:
        raise ConfigError("cav-mae source has no checkpoint: cav-mae:PATH or cav-mae:https://URL")
    return opts, ident


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The encoder's weights from a CAV-MAE checkpoint (``module.`` prefixes removed; decoder,
    classifier head and READ's q/k/v copies dropped). Errors name the file and the expected keys."""
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise InputError(f"CAV-MAE checkpoint {path} is unreadable ({type(e).__name__}: {first}); expected a torch "
                         f".pth state dict with keys {', '.join(REQUIRED_KEYS[:4])}, ...") from None
    if isinstance(doc, dict):
        for key in ("model", "state_dict"):
            if isinstance(doc.get(key), dict):
                doc = doc[key]
                break
    if not isinstance(doc, dict) or not all(isinstance(v, torch.Tensor) for v in doc.values()):
        raise InputError(f"CAV-MAE checkpoint {path} is not a state dict (a dict of tensors, optionally under "
                         f"'model' or 'state_dict')")
    state = {k.removeprefix("module."): v for k, v in doc.items()}
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise InputError(f"CAV-MAE checkpoint {path} lacks {', '.join(missing)} (expected CAV-MAE encoder keys "
                         f"{', '.join(REQUIRED_KEYS)}); is it a CAV-MAE (CAVMAE / CAVMAEFT) checkpoint?")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items() if not _IGNORED.match(k)}


def _depth(state: dict, prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})


def build_encoder(state: dict, path: Path, heads: int | None = None) -> tuple[CavMaeEncoder, dict]:
    dim = state["modality_a"].shape[-1]
    patch = state["patch_embed_v.proj.weight"].shape[-1]
    n_a, n_v = state["pos_embed_a"].shape[1], state["pos_embed_v"].shape[1]
    side = int(round(n_v ** 0.5))
    if side * side != n_v or (n_a * patch) % (CAV_MAE_MEL_BINS // patch) != 0:
        raise InputError(f"CAV-MAE checkpoint {path}: {n_v} visual / {n_a} audio positions do not form CAV-MAE's "
                         f"square image grid / {CAV_MAE_MEL_BINS // patch}-row fbank grid")
    heads = heads if heads is not None else dim // 64
    if heads < 1 or dim % heads:
        raise ConfigError(f"CAV-MAE checkpoint {path}: width {dim} is not divisible into heads={heads}; name the "
                          f"heads in model.source (cav-mae:heads=N@{path})")
    hidden = state["blocks_a.0.mlp.fc1.weight"].shape[0] if "blocks_a.0.mlp.fc1.weight" in state else 4 * dim
    enc = CavMaeEncoder(dim, _depth(state, "blocks_a."), _depth(state, "blocks_u."), heads, patch, n_a, n_v,
                        mlp_ratio=hidden / dim)
    result = enc.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise InputError(f"CAV-MAE checkpoint {path} does not fit the encoder its shapes imply: missing "
                         f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}")
    geometry = {"image_size": side * patch, "target_length": n_a * patch // (CAV_MAE_MEL_BINS // patch)}
    return enc, geometry


def _is_url(loc: str) -> bool:
    return loc.startswith(("http://", "https://"))


def cached_path(url: str, cache_dir: Path) -> Path:
    """Where ``url`` is stored in the model cache (``cache_dir/cav-mae/<file name>``)."""
    from urllib.parse import urlparse

    import hashlib

    name = Path(urlparse(url).path).name or "checkpoint.pth"
    return Path(cache_dir) / "cav-mae" / f"{hashlib.sha1(url.encode()).hexdigest()[:10]}-{name}"


def fetch_checkpoint(url: str, cache_dir: Path) -> Path:
    """Download ``url`` into the model cache once (resumable; reused when present)."""
    from ..data.download import DownloadError, fetch
    from .base import hub_offline, not_cached_error

    dest = cached_path(url, cache_dir)
    if hub_offline() and not dest.is_file():
        raise not_cached_error(f"cav-mae:{url}", cache_dir)
    try:
        fetch(url, dest)
    except DownloadError as e:
        raise not_cached_error(f"cav-mae:{url}", cache_dir, str(e)) from None
    return dest


def load_cav_mae(ident: str, device: torch.device, cache_dir: Path | None = None) -> CavMaeModel:
    opts, loc = parse_source(ident)
    if _is_url(loc):
        path = fetch_checkpoint(loc, Path(cache_dir) if cache_dir is not None else Path("models/cache"))
    else:
        path = Path(loc).expanduser()
        if not path.is_file():
            raise missing_path_error(f"cav-mae:{ident}", path, "a CAV-MAE checkpoint (.pth), e.g. "
                                     "cav-mae-scale++.pth from the CAV-MAE release, or an https:// URL")
    state = read_state_dict(path)
    enc, geometry = build_encoder(state, path, opts.get("heads"))
    return CavMaeModel(f"cav-mae-{path.stem}", enc, device, image_size=geometry["image_size"],
                       target_length=geometry["target_length"], norms=opts.get("norms", "branch"))


LOADERS.register("cav-mae")(load_cav_mae)

