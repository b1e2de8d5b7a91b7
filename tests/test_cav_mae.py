"""The real video-audio path: CAV-MAE's preprocessing (Kaldi fbank), the CAV-MAE-architecture
loader checked against the reference implementation's outputs, and the clip decoding/adapters.
Golden arrays: tests/data/cav_mae/README.md says how they were made."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from qshift.audio_features import CAV_MAE_MEAN, CAV_MAE_STD, cav_mae_fbank, kaldi_fbank, mel_banks
from qshift.errors import ConfigError, InputError

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


# -- the CAV-MAE encoder against the reference code -----------------------------------------------
from qshift.models import load_model  # noqa: E402
from qshift.models.cav_mae import REQUIRED_KEYS, cached_path, read_state_dict  # noqa: E402


@pytest.fixture(scope="module")
def golden():
    return np.load(DATA / "tiny_outputs.npz")


def _tiny(kind: str, **opts):
    name = {"pretrain": "tiny_cav_mae_pretrain.pth", "finetune": "tiny_cav_mae_ft.pth"}[kind]
    options = ",".join(f"{k}={v}" for k, v in {"heads": 2, **opts}.items())
    return load_model(f"cav-mae:{options}@{DATA / name}")


@pytest.mark.parametrize("kind", ["pretrain", "finetune"])
def test_encoder_matches_reference_forward_feat(golden, kind):
    model = _tiny(kind)
    audio, video = torch.from_numpy(golden["audio"]), torch.from_numpy(golden["video"])
    assert model.image_size == 32 and model.target_length == 64
    with torch.no_grad():
        a_tok = model.module.audio_tokens(audio)
        v_tok = model.module.video_tokens(video)
        za, zv = model.encode_audio(audio), model.encode_video(video[:, None])
    np.testing.assert_allclose(a_tok.numpy(), golden[f"{kind}_audio_tokens"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(v_tok.numpy(), golden[f"{kind}_video_tokens"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(za.numpy(), golden[f"{kind}_audio_emb"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(zv.numpy(), golden[f"{kind}_video_emb"], atol=1e-5, rtol=0)
    assert torch.allclose(za.norm(dim=-1), torch.ones(3)) and not za.requires_grad


def test_multi_frame_video_averages_frames(golden):
    model = _tiny("pretrain")
    video = torch.from_numpy(golden["video"])
    two = torch.stack([video, video.flip(0)], dim=1)  # (B, T=2, 3, H, W)
    with torch.no_grad():
        z = model.encode_video(two)
        per = [model.module.video_tokens(two[:, t]).mean(1) for t in range(2)]
    expect = torch.nn.functional.normalize((per[0] + per[1]) / 2, dim=-1)
    assert torch.allclose(z, expect, atol=1e-6)
    assert not torch.allclose(z, model.encode_video(video[:, None]), atol=1e-3)


def test_norm_layers_follow_the_query_path(golden):
    branch, shared = _tiny("pretrain"), _tiny("pretrain", norms="shared")
    names = [n for n, _ in branch.norm_layers("video")]
    assert names[:2] == ["blocks_v.0.norm1", "blocks_v.0.norm2"] and names[-1] == "norm_v"
    assert "blocks_u.0.norm1_v" in names and "blocks_u.1.norm2_v" in names
    assert not any(n.startswith("blocks_a") or n.endswith("_a") or n in ("norm",) for n in names)
    assert len(names) == 2 * 10 + 2 * 2 + 1
    assert [n for n, _ in shared.norm_layers("audio")] == ["blocks_u.0.norm1_a", "blocks_u.0.norm2_a",
                                                            "blocks_u.1.norm1_a", "blocks_u.1.norm2_a", "norm_a"]
    # every selected layer is on the forward path: it receives a gradient from the query's loss
    audio = torch.from_numpy(golden["audio"])
    layers = branch.norm_layers("audio")
    for _, m in layers:
        m.weight.requires_grad_(True)
    branch.encode_audio(audio).sum().backward()
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for _, m in layers)
    with pytest.raises(ConfigError, match="modality 'image'.*video, audio"):
        branch.norm_layers("image")


def test_transforms_shapes_and_values():
    model = _tiny("pretrain")
    frames = np.random.default_rng(0).integers(0, 256, (2, 48, 64, 3), dtype=np.uint8)
    x = model.video_transform(frames)
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32
    # a constant frame maps to ImageNet-normalised constants
    grey = np.full((1, 40, 40, 3), 128, np.uint8)
    y = model.video_transform(grey)
    np.testing.assert_allclose(y[0, :, 5, 5].numpy(), (128 / 255 - np.array([0.485, 0.456, 0.406]))
                               / np.array([0.229, 0.224, 0.225]), atol=1e-5)
    t = np.arange(16000 * 2) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    a = model.audio_transform(wave, 16000)
    assert a.shape == (64, 128)  # the tiny model's audio length
    # 44.1 kHz input is resampled to 16 kHz first: close to the 16 kHz features
    t2 = np.arange(44100 * 2) / 44100
    b = model.audio_transform((0.3 * np.sin(2 * np.pi * 440 * t2)).astype(np.float32), 44100)
    assert b.shape == a.shape and float((a - b).abs()[:, 10:100].mean()) < 0.05
    with pytest.raises(InputError, match="uint8 frames"):
        model.video_transform(np.zeros((4, 4, 3), np.float32))


def test_released_checkpoint_keys_load_as_a_real_model():
    """The full-size encoder has CAV-MAE's geometry: 1024 x 128 fbank -> 512 tokens, 224 px -> 196."""
    from qshift.models.cav_mae import CavMaeEncoder, build_encoder

    enc = CavMaeEncoder(embed_dim=64, specific_depth=1, heads=1)  # released geometry, narrow width
    state = enc.state_dict()
    assert all(k in state for k in REQUIRED_KEYS)
    rebuilt, geometry = build_encoder(state, Path("x.pth"))
    assert geometry == {"image_size": 224, "target_length": 1024}


def test_bad_checkpoints_name_the_file(tmp_path):
    garbled = tmp_path / "garbled.pth"
    garbled.write_bytes(b"not a torch file" * 10)
    with pytest.raises(InputError, match=r"garbled\.pth is unreadable.*patch_embed_a\.proj\.weight"):
        read_state_dict(garbled)
    other = tmp_path / "other.pth"
    torch.save({"module.fc.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(InputError, match=r"other\.pth lacks patch_embed_a\.proj\.weight.*CAV-MAE"):
        read_state_dict(other)
    with pytest.raises(InputError, match=r"missing\.pth not found"):
        load_model(f"cav-mae:{tmp_path / 'missing.pth'}")
    with pytest.raises(ConfigError, match="option 'bogus=1'"):
        load_model(f"cav-mae:bogus=1@{DATA / 'tiny_cav_mae_ft.pth'}")
    with pytest.raises(ConfigError, match="heads=3"):
        load_model(f"cav-mae:heads=3@{DATA / 'tiny_cav_mae_ft.pth'}")


def test_url_source_downloads_into_the_model_cache(tmp_path, golden, monkeypatch):
    from test_download import Server

    server = Server()
    try:
        blob = (DATA / "tiny_cav_mae_pretrain.pth").read_bytes()
        server.files["/ckpt/cav-mae-tiny.pth"] = blob
        server.modes["/ckpt/cav-mae-tiny.pth"] = {"truncate_once": len(blob) // 3}  # resumed
        url = server.url("/ckpt/cav-mae-tiny.pth")
        model = load_model(f"cav-mae:heads=2@{url}", cache_dir=tmp_path / "cache")
        dest = cached_path(url, tmp_path / "cache")
        assert dest.is_file() and dest.read_bytes() == blob and dest.parent.name == "cav-mae"
        with torch.no_grad():
            za = model.encode_audio(torch.from_numpy(golden["audio"]))
        np.testing.assert_allclose(za.numpy(), golden["pretrain_audio_emb"], atol=1e-5)
        n = len(server.log)
        load_model(f"cav-mae:heads=2@{url}", cache_dir=tmp_path / "cache")  # cached: no request
        assert len(server.log) == n
        with pytest.raises(InputError, match="not in the cache"):
            load_model(f"cav-mae:heads=2@{server.url('/ckpt/absent.pth')}", cache_dir=tmp_path / "cache")
    finally:
        server.close()
