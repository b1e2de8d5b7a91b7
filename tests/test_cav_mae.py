"""The real video-audio path: CAV-MAE's preprocessing (Kaldi fbank), the CAV-MAE-architecture
loader checked against the reference implementation's outputs, and the clip decoding/adapters.
Golden arrays: tests/data/cav_mae/README.md says how they were made."""

from __future__ import annotations

import json
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


# float32 across CPUs: torch's FFT and matmul kernels differ by machine (AVX2 / AVX-512), and the
# preemphasised low bins of these waves hold tiny energies, so the log features of the same
# computation move by up to ~1.1e-3 between machines (README of the golden data); a wrong window,
# mel bank, padding or scale moves them by far more (test_fbank_tolerance_catches_a_wrong_window)
ACROSS_CPUS = 2e-3


@pytest.mark.parametrize("name", WAVES)
def test_fbank_matches_torchaudio_cav_mae_call(fbank_golden, name):
    ours = kaldi_fbank(_centred(fbank_golden[f"{name}_wave"]), 16000.0, num_mel_bins=128, window_type="hanning",
                       dither=0.0, frame_shift=10.0, use_energy=False)
    ref = fbank_golden[f"{name}_torchaudio_hanning128"]
    assert ours.shape == ref.shape and ours.dtype == torch.float32
    np.testing.assert_allclose(ours.numpy(), ref, atol=ACROSS_CPUS, rtol=0)
    assert np.median(np.abs(ours.numpy() - ref)) < 1e-5  # most features agree to float32 rounding
    ours = kaldi_fbank(_centred(fbank_golden[f"{name}_wave"]), 16000.0, num_mel_bins=80)  # povey default
    np.testing.assert_allclose(ours.numpy(), fbank_golden[f"{name}_torchaudio_povey80"], atol=ACROSS_CPUS, rtol=0)


def test_fbank_tolerance_catches_a_wrong_window(fbank_golden):
    """The tolerance above is far below what a wrong choice costs: povey instead of hanning."""
    wrong = kaldi_fbank(_centred(fbank_golden["chirp_wave"]), 16000.0, num_mel_bins=128, window_type="povey",
                        dither=0.0, frame_shift=10.0, use_energy=False)
    assert np.abs(wrong.numpy() - fbank_golden["chirp_torchaudio_hanning128"]).max() > 50 * ACROSS_CPUS


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
    np.testing.assert_allclose(x.numpy(), fbank_golden["chirp_cavmae_input"], atol=ACROSS_CPUS / 4.4849, rtol=0)
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


@pytest.mark.parametrize("cls", ["CAVMAE", "CAVMAEFT"])
def test_parameter_names_are_the_released_models(cls):
    """At the released configuration (ViT-B, 11 + 1 blocks, 1024 frames, 224 px) every encoder
    parameter has the reference class's name and shape; the reference's other keys are the ones
    the loader ignores (MAE decoder, classifier head)."""
    from qshift.models.cav_mae import _IGNORED, CavMaeEncoder

    ref = json.loads((DATA / "reference_keys.json").read_text())[cls]
    with torch.device("meta"):
        ours = {k: list(v.shape) for k, v in CavMaeEncoder().state_dict().items()}
    assert {k: ref[k] for k in ours} == ours
    rest = sorted(set(ref) - set(ours))
    assert rest and all(_IGNORED.match(k) for k in rest)


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


# -- decoding real clips (PyAV) and the AudioSet / VGGSound / CAV-MAE clip lists -------------------
from qshift.data.av import ClipError, decode_clip, frame_indices  # noqa: E402
from qshift.data.av_lists import index_clips, prepare_clip_list, read_clip_list  # noqa: E402


def write_clip(path: Path, n: int = 20, fps: int = 10, w: int = 64, h: int = 48, audio: bool = True,
               sr: int = 44100, channels: int = 2, acodec: str = "aac", seconds: float | None = None) -> Path:
    """A real little video file: frame i has red = 10 * i; a 440 Hz tone on channel 1 and an
    880 Hz tone on channel 2."""
    import av

    c = av.open(str(path), "w")
    v = c.add_stream("mpeg4", rate=fps)
    v.width, v.height, v.pix_fmt = w, h, "yuv420p"
    if audio:
        a = c.add_stream(acodec, rate=sr)
        a.layout = "stereo" if channels == 2 else "mono"
    for i in range(n):
        img = np.zeros((h, w, 3), np.uint8)
        img[:, :, 0] = 10 * i
        for p in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            c.mux(p)
    for p in v.encode():
        c.mux(p)
    if audio:
        t = np.arange(int(sr * (seconds if seconds is not None else n / fps))) / sr
        x = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 880 * t)])[:channels]
        fr = av.AudioFrame.from_ndarray(x.astype(np.float32), format="fltp", layout=a.layout.name)
        fr.sample_rate, fr.pts = sr, 0
        for p in a.encode(fr):
            c.mux(p)
        for p in a.encode():
            c.mux(p)
    c.close()
    return path


def _dominant_hz(wave: np.ndarray, sr: int = 16000) -> float:
    spec = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / sr)[spec.argmax()])


def test_frame_indices_are_cav_mae_positions():
    assert frame_indices(100, 10) == [0, 9, 19, 29, 39, 49, 59, 69, 79, 89]  # extract_video_frame.py
    assert frame_indices(100, 1) == [49]  # frame_use = 5 of those 10
    assert frame_indices(1, 3) == [0, 0, 0]


@pytest.mark.parametrize("name,acodec", [("clip.mp4", "aac"), ("clip.mkv", "flac")])
def test_decode_clip_frames_and_audio(tmp_path, name, acodec):
    path = write_clip(tmp_path / name, acodec=acodec)
    clip = decode_clip(path, n_frames=3, image_size=32)
    assert clip.frames.shape == (3, 32, 32, 3) and clip.frames.dtype == np.uint8
    assert clip.info["frame_indices"] == [0, 5, 12] and clip.info["video_frames"] == 20
    red = clip.frames[:, 16, 16, 0].astype(int)
    assert np.all(np.abs(red - np.array([0, 50, 120])) <= 12)  # the frames at those positions (lossy codec)
    # 16 kHz, the first channel only (CAV-MAE's sox remix 1): its 440 Hz tone, not the 880 Hz one
    assert clip.audio.dtype == np.float32 and abs(clip.audio.shape[0] - 32000) < 2100
    assert abs(_dominant_hz(clip.audio[2000:18000]) - 440) < 3
    assert clip.info["source_sample_rate"] == 44100
    one = decode_clip(path, n_frames=1, image_size=32)
    assert one.info["frame_indices"] == [9]


def test_decode_failures_name_the_file(tmp_path):
    cases = {
        "noaudio.mp4": ("no-audio", "has no audio track"),
        "garbage.mp4": ("unreadable", "unreadable"),
        "empty.mp4": ("unreadable", "empty file"),
        "truncated.mp4": ("unreadable", "unreadable"),
        "silent.mp4": ("short-audio", "less than one 25 ms frame"),
    }
    write_clip(tmp_path / "noaudio.mp4", audio=False)
    (tmp_path / "garbage.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 3000, np.uint8).tobytes())
    (tmp_path / "empty.mp4").write_bytes(b"")
    full = write_clip(tmp_path / "full.mp4").read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(full[:3000])
    write_clip(tmp_path / "silent.mp4", seconds=0.005)
    for name, (kind, msg) in cases.items():
        with pytest.raises(ClipError, match=f"{name}.*{msg}") as err:
            decode_clip(tmp_path / name, image_size=32)
        assert err.value.kind == kind and isinstance(err.value, InputError)


def _clip_folder(tmp_path: Path) -> Path:
    d = tmp_path / "videos"
    (d / "sub").mkdir(parents=True)
    write_clip(d / "AAAAAAAAAAA_30.000.mp4")
    write_clip(d / "sub" / "BBBBBBBBBBB_10.000.mkv", acodec="flac", n=12)
    write_clip(d / "CCCCCCCCCCC_0.000.mp4", audio=False)  # no audio track
    (d / "DDDDDDDDDDD_5.000.mp4").write_bytes(b"\x00garbage" * 100)  # corrupt
    write_clip(d / "EEEEEEEEEEE_20.000.mp4", n=8)
    return d


def test_audioset_list_streams_clips_and_records_skips(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the output lies in an output folder (data/), which may be replaced
    videos = _clip_folder(tmp_path)
    csv = tmp_path / "eval_segments.csv"
    csv.write_text("# Segments csv created Sun Mar  5 10:54:31 2017\n"
                   "# num_ytids=5, num_segs=5, num_unique_labels=3, num_positive_labels=6\n"
                   "# YTID, start_seconds, end_seconds, positive_labels\n"
                   'AAAAAAAAAAA, 30.000, 40.000, "/m/09x0r,/m/05zppz"\n'
                   'BBBBBBBBBBB, 10.000, 20.000, "/m/04rlf"\n'
                   'CCCCCCCCCCC, 0.000, 10.000, "/m/04rlf"\n'
                   'DDDDDDDDDDD, 5.000, 15.000, "/m/09x0r"\n'
                   'ZZZZZZZZZZZ, 1.000, 11.000, "/m/09x0r"\n'
                   'EEEEEEEEEEE, 20.000, 30.000, "/m/05zppz"\n')
    entries = read_clip_list(csv, "audioset-csv")
    assert [e.id for e in entries][:2] == ["AAAAAAAAAAA_30.000", "BBBBBBBBBBB_10.000"]
    assert entries[0].labels == ["/m/09x0r", "/m/05zppz"]
    out = tmp_path / "data" / "as-test"
    stats = prepare_clip_list(csv, "audioset-csv", videos, out, n_frames=2, image_size=32,
                              max_samples=20000, dataset="as-test", progress=False)
    assert stats["listed"] == 6 and stats["kept"] == 3 and stats["skipped"] == 3
    assert stats["skipped_by_kind"] == {"missing": 1, "no-audio": 1, "unreadable": 1}
    doc = json.loads((out / "test" / "clips.json").read_text())
    meta = doc["meta"]
    assert doc["ids"] == [0, 1, 2] and doc["sample_rate"] == 16000
    assert meta["clip_ids"] == ["AAAAAAAAAAA_30.000", "BBBBBBBBBBB_10.000", "EEEEEEEEEEE_20.000"]
    assert {s["id"]: s["kind"] for s in meta["skips"]} == {"CCCCCCCCCCC_0.000": "no-audio",
                                                            "DDDDDDDDDDD_5.000": "unreadable",
                                                            "ZZZZZZZZZZZ_1.000": "missing"}
    assert any("DDDDDDDDDDD_5.000.mp4" in (s["file"] or "") for s in meta["skips"])
    frames = np.load(out / "test" / "frames.npy", mmap_mode="r")
    audio = np.load(out / "test" / "audio.npy", mmap_mode="r")
    assert frames.shape == (3, 2, 32, 32, 3) and audio.shape == (3, 20000)
    assert meta["audio_samples"][0] == 20000 and meta["audio_samples"][2] < 20000  # 0.8 s clip, zero-padded
    assert float(np.abs(audio[2, meta["audio_samples"][2]:]).max(initial=0)) == 0.0
    # with on_error: fail the first bad clip stops the build, naming it; the earlier output is kept
    with pytest.raises(InputError, match=r"CCCCCCCCCCC_0\.000\.mp4.*no audio track"):
        prepare_clip_list(csv, "audioset-csv", videos, out, image_size=32, on_error="fail",
                          progress=False)
    assert json.loads((out / "test" / "clips.json").read_text())["meta"]["clip_ids"] == meta["clip_ids"]
    # the video-audio task reads it as a clip set
    from qshift.va import read_clipset

    clips = read_clipset(out / "test")
    assert clips.n == 3 and clips.frames_shape == (3, 2, 32, 32, 3) and clips.samples == 20000
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["task"] == "video-audio" and manifest["meta"]["skipped"] == 3


def test_vggsound_and_cav_mae_json_lists(tmp_path):
    d = tmp_path / "vgg"
    d.mkdir()
    write_clip(d / "---g-f_I2yQ_000001.mp4", n=10)
    write_clip(d / "KlsG1EnBEjc_361.mp4", n=10)
    csv = tmp_path / "vggsound.csv"
    csv.write_text('---g-f_I2yQ,1,people marching,test\n'
                   '--0PQM4-hqg,30,waterfall burbling,train\n'
                   'KlsG1EnBEjc,361,"playing bass guitar, electric",test\n')
    entries = read_clip_list(csv, "vggsound-csv")
    assert [e.id for e in entries] == ["---g-f_I2yQ_000001", "KlsG1EnBEjc_000361"]
    assert entries[1].labels == ["playing bass guitar, electric"]
    stats = prepare_clip_list(csv, "vggsound-csv", d, tmp_path / "out", image_size=32, max_samples=8000,
                              progress=False)
    assert stats["kept"] == 2 and stats["skipped"] == 0
    js = tmp_path / "vgg_test_5_per_class_for_retrieval_cleaned.json"
    js.write_text(json.dumps({"data": [{"video_id": "KlsG1EnBEjc_361", "wav": "x.wav", "video_path": "f/",
                                        "labels": "vgg_235"}]}))
    entries = read_clip_list(js, "cav-mae-json")
    assert entries[0].labels == ["vgg_235"] and index_clips(d)[entries[0].stems[0]].name == "KlsG1EnBEjc_361.mp4"
    with pytest.raises(InputError, match=r"vggsound\.csv line 1: start 'x' is not a number"):
        bad = tmp_path / "vggsound.csv"
        bad.write_text("abc,x,label,test\n")
        read_clip_list(bad, "vggsound-csv")
    with pytest.raises(ConfigError, match="clip list format 'csv'; valid: audioset-csv, vggsound-csv, cav-mae-json"):
        read_clip_list(csv, "csv")


def test_decoded_clip_through_cav_mae_transforms(tmp_path):
    model = _tiny("pretrain")
    clip = decode_clip(write_clip(tmp_path / "c.mp4"), n_frames=2, image_size=32)
    video = model.video_transform(clip.frames)[None]
    audio = model.audio_transform(clip.audio, 16000)[None]
    assert video.shape == (1, 2, 3, 32, 32) and audio.shape == (1, 64, 128)
    with torch.no_grad():
        assert model.encode_video(video).shape == model.encode_audio(audio).shape == (1, 16)


def test_clip_list_dataset_entry(tmp_path, monkeypatch):
    """datasets.<name> with kind: clip-list through the download and prepare code: the list by URL
    (local HTTP server) into the download cache and data/raw, the clips from the user's folder;
    bad entries fail before any work, naming the key."""
    from test_download import Server

    from qshift.data.av_lists import prepare_dataset
    from qshift.data.karpathy import download_dataset, validate_dataset

    monkeypatch.chdir(tmp_path)
    videos = tmp_path / "videos"
    videos.mkdir()
    write_clip(videos / "KlsG1EnBEjc_361.mp4", n=6)
    body = json.dumps({"data": [{"video_id": "KlsG1EnBEjc_361", "labels": "vgg_235"},
                                {"video_id": "absent_1", "labels": "vgg_1"}]}).encode()
    dl = {"cache_dir": str(tmp_path / "cache"), "mirror": {}, "retries": 1, "backoff": 0.01, "timeout": 10}
    server = Server()
    try:
        server.files["/lists/vgg_retrieval.json"] = body
        d = {"kind": "clip-list", "task": "video-audio", "clips": str(videos), "image_size": 32,
             "list": {"format": "cav-mae-json", "url": server.url("/lists/vgg_retrieval.json"), "sha256": None,
                      "path": None}}
        validate_dataset("vgg-test", d)
        raw = tmp_path / "data" / "raw" / "vgg-test"
        info = download_dataset("vgg-test", d, dl, raw, progress=False)
        assert info["kind"] == "clip-list" and (raw / "lists" / "vgg_retrieval.json").read_bytes() == body
        stats = prepare_dataset(d, "vgg-test", raw, tmp_path / "data" / "vgg-test", progress=False)
        assert stats["kept"] == 1 and stats["skipped_by_kind"] == {"missing": 1}
    finally:
        server.close()
    validate_dataset("vgg-test", {**d, "clips": None})  # the folder is required when downloading, not in every run
    with pytest.raises(ConfigError, match=r"datasets.vgg-test.clips is required"):
        download_dataset("vgg-test", {**d, "clips": None}, dl, tmp_path / "data" / "raw" / "x", progress=False)
    with pytest.raises(InputError, match=r"datasets.vgg-test.clips .*nowhere is not a folder"):
        download_dataset("vgg-test", {**d, "clips": str(tmp_path / "nowhere")}, dl, tmp_path / "data" / "raw" / "x")
    with pytest.raises(ConfigError, match=r"datasets.vgg-test.list.format 'json'; valid"):
        validate_dataset("vgg-test", {**d, "list": {"format": "json", "path": "x"}})
    with pytest.raises(ConfigError, match=r"datasets.vgg-test: unknown key\(s\) frames"):
        validate_dataset("vgg-test", {**d, "frames": 3})
    with pytest.raises(ConfigError, match=r"must say task: video-audio"):
        validate_dataset("vgg-test", {**d, "task": "image-text"})
    with pytest.raises(InputError, match=r"download.json is missing.*run the download stage"):
        prepare_dataset(d, "vgg-test", tmp_path / "data" / "raw" / "none", tmp_path / "data" / "x")
    assert not (tmp_path / "data" / "x").exists() and not (tmp_path / "data" / "raw" / "x").exists()


# -- end to end: the as-c preset on fixture clips and a tiny CAV-MAE checkpoint --------------------

def _varied_clip(path: Path, k: int) -> Path:
    """Clip k: its own frame colour and tone, so the two modalities of a clip belong together."""
    import av

    c = av.open(str(path), "w")
    v = c.add_stream("mpeg4", rate=10)
    v.width, v.height, v.pix_fmt = 48, 48, "yuv420p"
    a = c.add_stream("aac", rate=22050)
    a.layout = "mono"
    rgb = np.array([(37 * k) % 256, (91 * k + 40) % 256, (53 * k + 120) % 256], np.uint8)
    for i in range(12):
        img = np.zeros((48, 48, 3), np.uint8) + rgb
        img[:, (4 * i) % 48] = 255
        for p in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            c.mux(p)
    for p in v.encode():
        c.mux(p)
    t = np.arange(int(22050 * 1.2)) / 22050
    x = (0.4 * np.sin(2 * np.pi * (220 + 90 * k) * t))[None].astype(np.float32)
    fr = av.AudioFrame.from_ndarray(x, format="fltp", layout="mono")
    fr.sample_rate, fr.pts = 22050, 0
    for p in a.encode(fr):
        c.mux(p)
    for p in a.encode():
        c.mux(p)
    c.close()
    return path


def as_c_fixture_params(params: dict, repo: Path, videos: Path, clip_list: Path) -> dict:
    import yaml

    p = yaml.safe_load(yaml.safe_dump(params))
    p["benchmark"] = "as-c"
    d = p["datasets"]["audioset-retrieval"]
    d.update(clips=str(videos), image_size=32, max_samples=10480)  # 64 fbank frames: the tiny model's length
    d["list"].update(path=str(clip_list), url=None)
    preset = p["benchmarks"]["as-c"]
    preset["model"].update(name="cav-mae-tiny", source="cav-mae:heads=2@tiny_cav_mae.pth", batch_size=4)
    preset["corrupt"]["video"] = {"names": ["gaussian_noise"], "severities": [5]}
    preset["corrupt"]["audio"] = {"names": ["gaussian_noise"], "severities": [5], "noise_dir": None}
    preset["streams"] = {"methods": ["tcr"], "video": {"temporal": {
        "kind": "sequential", "corruptions": ["clean", "gaussian_noise"], "severities": [5]}}}
    p["adapt"]["methods"] = ["source", "tcr"]
    p["threads"] = 1
    return p


@pytest.mark.slow
@pytest.mark.pipeline
def test_as_c_fixture_runs_through_snakemake(tmp_path):
    import shutil

    import yaml
    from pipeline_utils import REPO, make_repo, run

    repo = make_repo(tmp_path / "repo")
    shutil.copy(DATA / "tiny_cav_mae_pretrain.pth", repo / "tiny_cav_mae.pth")
    videos = tmp_path / "videos"
    videos.mkdir()
    ids = [f"clip{k:02d}xxxxx_{10 * k}" for k in range(10)]
    for k, vid in enumerate(ids):
        _varied_clip(videos / f"{vid}.mp4", k)
    write_clip(videos / "noaudio0000_0.mp4", audio=False)
    (videos / "corrupt0000_0.mp4").write_bytes(b"\x00not a video" * 50)
    listed = ids[:5] + ["noaudio0000_0", "corrupt0000_0", "missing0000_0"] + ids[5:]
    clip_list = tmp_path / "audioset_eval_5_per_class_for_retrieval_cleaned.json"
    clip_list.write_text(json.dumps({"data": [{"video_id": v, "labels": "/m/0"} for v in listed]}))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump(as_c_fixture_params(params, repo, videos, clip_list),
                                                     sort_keys=False))
    run(["snakemake", "--cores", "2"], repo, timeout=900)
    meta = json.loads((repo / "data/as-c/test/clips.json").read_text())
    assert meta["n"] == 10 and meta["meta"]["clip_ids"] == ids
    assert {s["id"]: s["kind"] for s in meta["meta"]["skips"]} == {
        "noaudio0000_0": "no-audio", "corrupt0000_0": "unreadable", "missing0000_0": "missing"}
    res = repo / "results/as-c/cav-mae-tiny"
    files = sorted(p.relative_to(res).as_posix() for p in res.rglob("*.json") if p.parent.name != "tuned")
    assert files == ["a2v/source/seed42/clean-s0.json", "a2v/source/seed42/gaussian_noise-s5.json",
                     "a2v/tcr/seed42/gaussian_noise-s5.json", "v2a/source/seed42/clean-s0.json",
                     "v2a/source/seed42/gaussian_noise-s5.json", "v2a/tcr/seed42/gaussian_noise-s5.json",
                     "v2a/tcr/seed42/temporal-s0.json"]
    clean = json.loads((res / "v2a/source/seed42/clean-s0.json").read_text())
    assert clean["n_queries"] == 10 and clean["n_gallery"] == 10 and set(clean["metrics"]) == {"R@1", "R@5", "R@10"}
    # the clean source run equals CAV-MAE's retrieval recomputed here from the prepared clips
    from qshift.models import load_model
    from qshift.va import encode_clips, read_clipset

    model = load_model(f"cav-mae:heads=2@{repo / 'tiny_cav_mae.pth'}")
    clips = read_clipset(repo / "data/as-c/test")
    zv, za = encode_clips(model, "video", clips), encode_clips(model, "audio", clips)
    ranks = (zv @ za.T).argsort(dim=1, descending=True)
    r1 = float((ranks[:, 0] == torch.arange(10)).float().mean()) * 100
    assert clean["metrics"]["R@1"] == pytest.approx(r1, abs=1e-6)
    pretrain = json.loads((repo / "reports/pretrain.json").read_text())
    assert pretrain["trained"] is False and pretrain["loaded_as"] == "cav-mae-tiny_cav_mae"
    assert "Video-to-audio retrieval" in (repo / "reports/report.md").read_text()
    again = run(["snakemake", "--cores", "1", "-n"], repo)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_short_clips_keep_their_true_length(tmp_path, monkeypatch):
    """A clip shorter than the audio row is read back at its true length (meta.audio_samples), so
    CAV-MAE's fbank is padded with zero fbank frames as its dataloader does; corrupted audio query
    sets and audio streams carry the lengths."""
    from qshift import va
    from qshift.audio_features import cav_mae_fbank

    monkeypatch.chdir(tmp_path)
    videos = tmp_path / "videos"
    videos.mkdir()
    write_clip(videos / "long000000_0.mp4", n=20)  # 2 s
    write_clip(videos / "short00000_0.mp4", n=20, seconds=0.5)
    lst = tmp_path / "list.json"
    lst.write_text(json.dumps({"data": [{"video_id": "long000000_0"}, {"video_id": "short00000_0"}]}))
    prepare_clip_list(lst, "cav-mae-json", videos, tmp_path / "data" / "va-short", image_size=32,
                      max_samples=24000, dataset="va-short", progress=False)
    clips = va.read_clipset(tmp_path / "data" / "va-short" / "test")
    n = clips.meta["audio_samples"]
    assert n[0] == 24000 and 7000 < n[1] < 9500
    short = clips.checked_wave(1)
    assert short.shape == (n[1],) and np.array_equal(short, clips.audio([1])[0][:n[1]])
    model = _tiny("pretrain")
    batch = next(iter(va.clip_loader(model, "audio", clips, batch_size=2)))
    np.testing.assert_allclose(batch[1].numpy(), cav_mae_fbank(short, 16000, target_length=64).numpy(), atol=1e-6)
    cfg = {"benchmark": "va-short", "seed": 42, "corrupt": {"audio": {"names": ["gaussian_noise"], "severities": [5]}}}
    va.build_query_set(cfg, "audio", "gaussian_noise", 5, out=tmp_path / "data" / "q")
    q = va.read_clipset(tmp_path / "data" / "q")
    assert q.meta["audio_samples"] == n and q.checked_wave(1).shape == (n[1],)
    assert float(np.abs(q.audio([1])[0][n[1]:]).max()) == 0.0  # the padding stays silent, uncorrupted
