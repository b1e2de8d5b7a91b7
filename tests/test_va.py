"""The video-audio task (qshift.va): built-in clips, audio/video corruptions, the two-tower, TTA
on the query tower, bad input, and one end-to-end Snakemake run of benchmark builtin-va."""

from __future__ import annotations

import json
import wave

import numpy as np
import pytest
import torch
import yaml

from qshift.errors import InputError


def _tiny_model(n_frames=4, size=32, samples=16000):
    from qshift.models.tiny_va import ARCH_DEFAULTS, TinyVideoAudio, TwoTower

    arch = {**ARCH_DEFAULTS, "width": 32, "layers": 1, "heads": 2, "embed_dim": 16, "image_size": size,
            "n_frames": n_frames}
    torch.manual_seed(0)
    front = {"sample_rate": 16000, "samples": samples, "n_mels": arch["n_mels"], "audio_frames": arch["audio_frames"],
             "fbank_mean": -5.0, "fbank_std": 4.0}
    return TinyVideoAudio("tiny", TwoTower(arch).eval(), {**arch, **front}, torch.device("cpu"))


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    from qshift.data.builtin_va import generate_builtin_va

    out = tmp_path_factory.mktemp("va") / "data" / "builtin-va"
    stats = generate_builtin_va(out, n_train=6, n_val=0, n_test=8, seed=3, progress=False)
    return out, stats


# -- the built-in clips ---------------------------------------------------------------------------

def test_generator_is_deterministic_and_sized(clips, tmp_path):
    from qshift.data.builtin_va import generate_builtin_va, make_clip
    from qshift.va import read_clipset

    out, stats = clips
    test = read_clipset(out / "test")
    assert test.frames_shape == (8, 4, 32, 32, 3) and test.samples == 16000 and test.sample_rate == 16000
    assert stats["n_test"] == 8 and not (out / "val").exists()
    train = read_clipset(out / "train")
    assert set(train.ids.tolist()).isdisjoint(test.ids.tolist())  # ids unique across splits
    again = tmp_path / "again"
    generate_builtin_va(again, n_train=6, n_val=0, n_test=8, seed=3, progress=False)
    for f in ("test/frames.npy", "test/audio.npy", "train/audio.npy"):
        assert (out / f).read_bytes() == (again / f).read_bytes()
    f1, w1, o1 = make_clip(3, "test", 2)
    f2, w2, o2 = make_clip(4, "test", 2)  # another seed: another clip
    assert np.array_equal(f1, test.frames([2])[0]) and np.array_equal(w1, test.audio([2])[0])
    assert not np.array_equal(w1, w2)
    assert w1.dtype == np.float32 and np.abs(w1).max() <= 1 and len(o1) in (1, 2)
    moving = [o for o in o1 if o["motion"] != "static"]
    if moving:  # a moving object changes the frames
        assert not np.array_equal(f1[0], f1[-1])


def test_soundtrack_encodes_colour_as_pitch():
    from qshift.data.builtin_va import COLOURS, synthesise

    rng = np.random.default_rng(0)
    peaks = []
    for colour in list(COLOURS)[:3]:
        w = synthesise([{"shape": "circle", "colour": colour, "motion": "static", "x": 0.0}], rng, 32)
        spec = np.abs(np.fft.rfft(w))
        peaks.append(np.argmax(spec))
    assert peaks == sorted(peaks) and len(set(peaks)) == 3  # higher colour index, higher pitch


# -- corruptions ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["gaussian_noise", "traffic", "crowd", "rain", "thunder", "wind"])
def test_audio_severities_lower_the_snr_and_are_seeded(name):
    from qshift.corrupt.audio import corrupt_audio, snr_db
    from qshift.data.builtin_va import make_clip

    _, w, _ = make_clip(0, "test", 0)
    snrs = [snr_db(w, corrupt_audio(name, w, s, seed=7)) for s in range(1, 6)]
    assert all(a > b for a, b in zip(snrs, snrs[1:])), snrs
    a, b = corrupt_audio(name, w, 3, seed=7), corrupt_audio(name, w, 3, seed=7)
    assert np.array_equal(a, b) and a.dtype == np.float32 and np.abs(a).max() <= 1
    if name == "gaussian_noise":  # READ: N(0, 0.18) at severity 3, seeded per clip
        assert not np.array_equal(a, corrupt_audio(name, w, 3, seed=8))
        assert abs(np.std(a - w) - 0.18) < 0.02


def test_environmental_noise_from_a_user_folder(tmp_path):
    from qshift.corrupt.audio import corrupt_audio, synthetic_bed

    sr = 8000
    tone = (0.2 * np.sin(np.arange(sr // 2) * 0.3) * 32767).astype("<i2")  # 0.5 s: tiled to the clip
    with wave.open(str(tmp_path / "rain.wav"), "wb") as f:
        f.setnchannels(1), f.setsampwidth(2), f.setframerate(sr)
        f.writeframes(tone.tobytes())
    clip = np.zeros(16000, np.float32)
    out = corrupt_audio("rain", clip, 1, seed=0, sample_rate=16000, noise_dir=tmp_path)
    assert not np.allclose(out, corrupt_audio("rain", clip, 1, seed=0, sample_rate=16000))  # not the synthetic bed
    assert abs(np.abs(out).max() - 0.2 * 10 ** (1 / 20)) < 0.01  # READ's +1 dB at severity 1
    assert np.array_equal(synthetic_bed("wind", 16000), synthetic_bed("wind", 16000))
    with pytest.raises(InputError, match=r"no recording for 'wind'.*wind\.wav"):
        corrupt_audio("wind", clip, 1, seed=0, noise_dir=tmp_path)
    (tmp_path / "crowd.wav").write_bytes(b"not a wav")
    with pytest.raises(InputError, match=r"crowd\.wav is not a readable PCM WAV"):
        corrupt_audio("crowd", clip, 1, seed=0, noise_dir=tmp_path)


def test_video_corruption_is_seeded_per_clip_and_frame():
    from qshift.corrupt.video import corrupt_segments, corrupt_video, frame_seed

    frames = np.repeat(np.full((1, 32, 32, 3), 120, np.uint8), 4, axis=0)  # 4 identical frames
    seeds = lambda t: frame_seed("ds", 5, "gaussian_noise", 3, t)  # noqa: E731
    a = corrupt_video("gaussian_noise", frames, 3, seeds)
    assert a.shape == frames.shape and a.dtype == np.uint8
    assert not np.array_equal(a[0], a[1])  # each frame its own draw
    assert np.array_equal(a, corrupt_video("gaussian_noise", frames, 3, seeds))  # reproducible
    other = corrupt_video("gaussian_noise", frames, 3, lambda t: frame_seed("ds", 6, "gaussian_noise", 3, t))
    assert not np.array_equal(a, other)  # another clip, other noise
    seg = corrupt_segments(frames, [("clean", 0), ("gaussian_noise", 3)],
                           lambda c, s, t: frame_seed("ds", 5, c, s, t))
    assert np.array_equal(seg[:2], frames[:2]) and np.array_equal(seg[2:], a[2:])  # frame t as in the set
    with pytest.raises(InputError, match="no frames"):
        corrupt_video("gaussian_noise", frames[:0], 3, seeds)


# -- bad input ------------------------------------------------------------------------------------

def test_bad_clip_sets_are_clear_errors(clips, tmp_path):
    from qshift.va import ClipSetWriter, clip_loader, read_clipset

    with pytest.raises(InputError, match=r"nowhere/clips\.json not found"):
        read_clipset(tmp_path / "nowhere")
    w = ClipSetWriter(tmp_path / "empty", 2, samples=0, sample_rate=16000)
    w.close("ds", "test", [0, 1])
    with pytest.raises(InputError, match=r"empty/clips\.json.*zero-length clips"):
        read_clipset(tmp_path / "empty")
    w = ClipSetWriter(tmp_path / "nan", 2, samples=1600, sample_rate=16000)
    w.put(1, audio=np.full(1600, np.nan, np.float32))
    w.close("ds", "test", [10, 11])
    bad = read_clipset(tmp_path / "nan")
    with pytest.raises(InputError, match=r"clip 11 \(row 1\) of .*nan/clips\.json.*1600 NaN/inf samples"):
        list(clip_loader(_tiny_model(samples=1600), "audio", bad, batch_size=2))
    src = clips[0] / "test"
    doc = json.loads((src / "clips.json").read_text())
    (tmp_path / "lost").mkdir()
    (tmp_path / "lost" / "clips.json").write_text(json.dumps(doc))  # arrays not there
    with pytest.raises(InputError, match=r"frames file .*lost/frames\.npy not found"):
        read_clipset(tmp_path / "lost")
    (tmp_path / "dup").mkdir()
    (tmp_path / "dup" / "clips.json").write_text(json.dumps({**doc, "ids": [1] * doc["n"]}))
    with pytest.raises(InputError, match="not unique"):
        read_clipset(tmp_path / "dup")


# -- the model and TTA ----------------------------------------------------------------------------

def test_model_interface_shapes(clips):
    from qshift.va import clip_loader, read_clipset

    m = _tiny_model()
    test = read_clipset(clips[0] / "test")
    v = m.video_transform(test.frames([0])[0])
    a = m.audio_transform(test.audio([0])[0], 16000)
    assert v.shape == (4, 3, 32, 32) and a.shape == (96, 64)
    assert m.audio_transform(test.audio([0])[0][::2].copy(), 8000).shape == (96, 64)  # resampled
    assert m.video_transform(np.zeros((2, 48, 48, 3), np.uint8)).shape == (4, 3, 32, 32)  # resized, resampled
    zv = m.encode_video(next(iter(clip_loader(m, "video", test, batch_size=3))))
    za = m.encode_audio(next(iter(clip_loader(m, "audio", test, batch_size=3))))
    assert zv.shape == za.shape == (3, 16)
    assert torch.allclose(zv.norm(dim=-1), torch.ones(3), atol=1e-5)
    names_v = {n for n, _ in m.norm_layers("video")}
    names_a = {n for n, _ in m.norm_layers("audio")}
    assert names_v and names_a and not names_v & names_a
    assert all(n.startswith("video.") for n in names_v) and all(n.startswith("audio.") for n in names_a)
    with pytest.raises(InputError, match=r"video batch .* must be \[B, T, 3, H, W\]"):
        m.encode("video", torch.zeros(2, 3, 32, 32))


@pytest.mark.parametrize("method", ["tent", "tcr"])
@pytest.mark.parametrize("modality", ["video", "audio"])
def test_tta_adapts_only_the_query_towers_layernorms(clips, method, modality):
    from qshift.tta import build_method
    from qshift.va import clip_loader, read_clipset

    m = _tiny_model()
    test = read_clipset(clips[0] / "test")
    other = "audio" if modality == "video" else "video"
    with torch.no_grad():
        gallery = m.encode(other, next(iter(clip_loader(m, other, test, batch_size=8))))
    before = {k: v.clone() for k, v in m.module.state_dict().items()}
    tta = build_method(method, m, modality, gallery, {"lr": 1e-2}, steps=2)
    queries = next(iter(clip_loader(m, modality, test, batch_size=8)))
    out = tta(queries)
    assert out.scores.shape == (8, 8)
    after = m.module.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    norm_params = {f"{n}.{p}" for n, _ in m.norm_layers(modality) for p in ("weight", "bias")}
    assert changed and changed <= norm_params  # the query tower's LayerNorms only
    assert not any(k.startswith(other + ".") for k in changed)  # the gallery tower untouched
    tta.close()
    assert all(torch.equal(before[k], v) for k, v in m.module.state_dict().items())  # restored


def test_config_grid_and_dvc_guard():
    from qshift.config import load_params, queries_path, runs
    from qshift.errors import ConfigError
    from qshift.presets import dvc_guard

    from pipeline_utils import REPO

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    cfg = load_params(REPO / "params.yaml", ["benchmark=builtin-va"])
    cells = {(r.direction, r.corruption) for r in runs(cfg)}
    assert ("v2a", "gaussian_noise") in cells and ("a2v", "rain") in cells and ("v2a", "temporal") in cells
    assert not {c for d, c in cells if d == "a2v"} & {"defocus_blur", "fog"}  # audio queries: audio registry
    assert queries_path(cfg, "v2a", "fog", 5) == "data/queries/builtin-va/video/fog-s5/clips.json"
    with pytest.raises(ConfigError, match="dvc.yaml is stale: it was rendered for other params .*only for "
                                          "params.yaml's benchmark 'builtin-va': .*adapt_a2v, adapt_v2a"):
        dvc_guard({**raw, "benchmark": "builtin-va"}, cfg, {"DVC_STAGE": "prepare", "DVC_ROOT": str(REPO)})
    with pytest.raises(ConfigError, match=r"corrupt\.audio\.severities has 6"):
        load_params(REPO / "params.yaml", ["benchmark=builtin-va", "corrupt.audio.severities=[6]"])
    with pytest.raises(Exception, match="audio corruption.*'fog'"):
        load_params(REPO / "params.yaml", ["benchmark=builtin-va", "corrupt.audio.names=[fog]"])


def test_tuning_runs_on_the_val_clips_under_validation_only_corruptions(tmp_path, monkeypatch):
    """The tune stage's video-audio hooks: the val split's gallery and its clips under tune.video /
    tune.audio (never the test split, never a reported type), every grid point scored on them."""
    from qshift.config import load_params
    from qshift.data.builtin_va import generate_builtin_va
    from qshift.errors import ConfigError
    from qshift.tune import run_tune, tuning_summary
    from qshift.va import read_clipset, tune_queries

    from pipeline_utils import REPO

    cfg = load_params(REPO / "params.yaml", ["benchmark=builtin-va"])
    assert cfg["tune"]["enabled"] and cfg["tune"]["audio"]["corruptions"] == ["wind", "thunder"]
    monkeypatch.chdir(tmp_path)
    generate_builtin_va(tmp_path / "data/builtin-va", n_train=2, n_val=6, n_test=4, seed=3, progress=False)
    sets = tune_queries(cfg, "v2a", tmp_path / "work")
    val = read_clipset(tmp_path / "data/builtin-va/val")
    assert list(sets) == ["gaussian_blur-s3", "spatter-s3"]
    q = sets["spatter-s3"]
    assert q.split == "val" and q.ids.tolist() == val.ids.tolist() and q.meta["corruption"] == "spatter"
    assert q.frames([0]).shape == val.frames([0]).shape and not np.array_equal(q.frames([0]), val.frames([0]))
    again = tune_queries(cfg, "v2a", tmp_path / "again")["spatter-s3"]
    assert np.array_equal(again.frames(list(range(6))), q.frames(list(range(6))))  # seeded per clip and frame

    cfg["adapt"]["methods"] = ["source", "tent"]
    cfg["tune"].update(methods=["tent"], lr=[1.0e-2], tau=[])
    cfg["tune"]["video"] = {"corruptions": ["spatter"], "severity": 3}
    doc = run_tune(cfg, _tiny_model(), "data/builtin-va/manifest.json")
    assert doc["corruptions"] == {"v2a": ["spatter-s3"], "a2v": ["wind-s3", "thunder-s3"]}
    assert doc["n_clips"] == 6 and doc["split"] == "val"
    assert sorted((r["direction"], r["lr"]) for r in doc["table"]) == [("a2v", 3.0e-4), ("a2v", 1.0e-2),
                                                                       ("v2a", 3.0e-4), ("v2a", 1.0e-2)]
    assert {c for r in doc["table"] for c in r["r1"]} == {"spatter-s3", "wind-s3", "thunder-s3"}
    assert set(doc["best"]["tent"]) == {"v2a", "a2v"}
    assert "6 clips" in tuning_summary(doc)[0]

    # a reported type (the grid's or a stream's) cannot be a tuning corruption; severities are READ's
    with pytest.raises(ConfigError, match=r"tune\.video\.corruptions has 'gaussian_noise', which the reported grid"):
        load_params(REPO / "params.yaml", ["benchmark=builtin-va", "tune.video.corruptions=[gaussian_noise]"])
    with pytest.raises(ConfigError, match=r"tune\.audio\.corruptions has 'rain'"):
        load_params(REPO / "params.yaml", ["benchmark=builtin-va", "tune.audio.corruptions=[rain]"])
    with pytest.raises(ConfigError, match=r"tune\.audio\.severity is 6; valid: 1\.\.5"):
        load_params(REPO / "params.yaml", ["benchmark=builtin-va", "tune.audio.severity=6"])
    with pytest.raises(Exception, match="audio corruption.*'fog'"):
        load_params(REPO / "params.yaml", ["benchmark=builtin-va", "tune.audio.corruptions=[fog]"])


def test_seed_corruptions_draws_the_query_sets_and_streams_per_run_seed(tmp_path, monkeypatch):
    """seed_corruptions: true — a run seed other than the project's reads query sets and streams
    drawn with it (video-seed<N>/, audio-seed<N>/, <side>-stream-seed<N>/); the stream domains stay
    the project seed's; the project seed reads the standard sets."""
    from qshift.config import load_params, queries_path
    from qshift.data.builtin_va import generate_builtin_va
    from qshift.errors import ConfigError
    from qshift.va import build_query_set, build_stream, read_clipset

    from pipeline_utils import REPO

    cfg = load_params(REPO / "params.yaml", ["benchmark=builtin-va", "seeds=[42, 7]", "seed_corruptions=true"])
    assert queries_path(cfg, "v2a", "gaussian_noise", 3, 7) == \
        "data/queries/builtin-va/video-seed7/gaussian_noise-s3/clips.json"
    assert queries_path(cfg, "v2a", "gaussian_noise", 3, 42) == "data/queries/builtin-va/video/gaussian_noise-s3/clips.json"
    assert queries_path(cfg, "a2v", "rain", 5, 7) == "data/queries/builtin-va/audio-seed7/rain-s5/clips.json"
    assert queries_path(cfg, "v2a", "temporal", 0, 7) == "data/queries/builtin-va/video-stream-seed7/temporal/clips.json"
    monkeypatch.chdir(tmp_path)
    generate_builtin_va(tmp_path / "data/builtin-va", n_train=2, n_val=2, n_test=6, seed=3, progress=False)
    std = read_clipset(build_query_set(cfg, "video", "gaussian_noise", 3)["out"])
    drawn = read_clipset(build_query_set(cfg, "video", "gaussian_noise", 3, draw=7)["out"])
    assert drawn.folder.as_posix().endswith("video-seed7/gaussian_noise-s3") and drawn.meta["draw_seed"] == 7
    every = list(range(6))
    assert drawn.frames(every).shape == std.frames(every).shape and not np.array_equal(drawn.frames(every),
                                                                                         std.frames(every))
    again = read_clipset(build_query_set(cfg, "video", "gaussian_noise", 3, out=tmp_path / "again", draw=7)["out"])
    assert np.array_equal(again.frames(every), drawn.frames(every))  # the draw is seeded
    # audio: gaussian noise is drawn per clip; READ's environmental noises are deterministic (the
    # recording's first samples at a fixed gain), so their drawn set equals the standard one
    audio = {c: [read_clipset(build_query_set(cfg, "audio", c, 1, draw=d)["out"]).audio(every) for d in (None, 7)]
             for c in ("gaussian_noise", "rain")}
    assert not np.array_equal(*audio["gaussian_noise"]) and np.array_equal(*audio["rain"])
    build_stream(cfg, "video", "temporal")
    build_stream(cfg, "video", "temporal", draw=7)
    s_std = read_clipset(tmp_path / "data/queries/builtin-va/video-stream/temporal")
    s_drawn = read_clipset(tmp_path / "data/queries/builtin-va/video-stream-seed7/temporal")
    assert s_drawn.meta["domains"] == s_std.meta["domains"] and s_drawn.meta["stream"]["draw_seed"] == 7
    noisy = [i for i, d in enumerate(s_std.meta["domains"]) if d.startswith("gaussian_noise")]
    assert noisy and not np.array_equal(s_std.frames(noisy), s_drawn.frames(noisy))
    clean = [i for i, d in enumerate(s_std.meta["domains"]) if d.startswith("clean")]
    assert clean and np.array_equal(s_std.frames(clean), s_drawn.frames(clean))
    from qshift.config import check_draw

    with pytest.raises(ConfigError, match="--draw-seed 5 is not a run seed"):
        check_draw(cfg, 5)


# -- end to end -----------------------------------------------------------------------------------

# what a tiny_va_params pipeline writes under results/builtin-va/qshift-tiny-va/ (either orchestrator)
TINY_VA_RESULTS = ["a2v/source/seed42/clean-s0.json", "a2v/source/seed42/rain-s5.json",
                   "a2v/tcr/seed42/rain-s5.json", "v2a/source/seed42/clean-s0.json",
                   "v2a/source/seed42/gaussian_noise-s5.json", "v2a/tcr/seed42/gaussian_noise-s5.json",
                   "v2a/tcr/seed42/in_clip-s0.json"]


def tiny_va_params(params: dict) -> dict:
    p = yaml.safe_load(yaml.safe_dump(params))
    p["benchmark"] = "builtin-va"
    p["datasets"]["builtin-va"].update(n_train=192, n_val=32, n_test=64)
    preset = p["benchmarks"]["builtin-va"]
    preset["pretrain"]["va"].update(steps=20, batch_size=64, warmup=5, width=32, layers=1)
    preset["corrupt"]["video"] = {"names": ["gaussian_noise"], "severities": [5]}
    preset["corrupt"]["audio"] = {"names": ["rain"], "severities": [5], "noise_dir": None}
    preset["streams"] = {"methods": ["tcr"],
                         "video": {"in_clip": {"kind": "segments", "corruptions": ["clean", "gaussian_noise"],
                                               "severities": [5]}}}
    p["adapt"]["methods"] = ["source", "tcr"]
    p["threads"] = 1
    return p


@pytest.mark.pipeline
def test_builtin_va_runs_through_snakemake(tmp_path):
    import subprocess

    from pipeline_utils import REPO, env, make_repo, run

    repo = make_repo(tmp_path)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_va_params(params), sort_keys=False))
    run(["snakemake", "--cores", "2"], repo, timeout=600)
    res = repo / "results/builtin-va/qshift-tiny-va"
    files = sorted(p.relative_to(res).as_posix() for p in res.rglob("*.json") if p.parent.name != "tuned")
    assert files == TINY_VA_RESULTS
    clean = json.loads((res / "v2a/source/seed42/clean-s0.json").read_text())
    assert clean["key"]["direction"] == "v2a" and set(clean["metrics"]) == {"R@1", "R@5", "R@10"}
    assert clean["n_queries"] == 64 and clean["n_gallery"] == 64
    stream = json.loads((res / "v2a/tcr/seed42/in_clip-s0.json").read_text())
    assert stream["stream"]["kind"] == "segments"
    report = (repo / "reports/report.md").read_text()
    assert "Video-to-audio retrieval" in report and "Audio-to-video retrieval" in report
    assert (repo / "reports/corruptions/contact_sheet.png").stat().st_size > 0
    pretrain = json.loads((repo / "reports/pretrain.json").read_text())
    assert "va_val_v2a_R@1" in pretrain
    # tuned on the 32 val clips under the preset's validation-only corruptions, applied by the adapt jobs
    tuned = json.loads((res / "tuned/tcr.json").read_text())
    assert tuned["corruptions"] == {"v2a": ["gaussian_blur-s3", "spatter-s3"], "a2v": ["wind-s3", "thunder-s3"]}
    assert set(tuned["best"]["tcr"]) == {"v2a", "a2v"} and tuned["n_clips"] == 32
    ran = json.loads((res / "v2a/tcr/seed42/gaussian_noise-s5.json").read_text())
    assert ran["hparams"]["lr"] == tuned["best"]["tcr"]["v2a"]["lr"]
    assert "validation split** (32 clips)" in report
    again = run(["snakemake", "--cores", "1", "-n"], repo)
    assert "Nothing to be done" in again.stdout + again.stderr
    # bad input reaches the stage as one line naming the file: a NaN in an audio query
    qdir = repo / "data/queries/builtin-va/audio/rain-s5"
    arr = np.load(qdir / "audio.npy")
    arr[3, 100] = np.nan
    (qdir / "audio.npy").chmod(0o644)
    np.save(qdir / "audio.npy", arr)
    proc = subprocess.run(["python", "stages/adapt.py", "--method", "source", "--direction", "a2v", "--corruption",
                           "rain", "--severity", "5"], cwd=repo, env=env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "NaN/inf samples" in proc.stderr and "rain-s5/clips.json" in proc.stderr
    proc = subprocess.run(["python", "stages/prepare.py"], cwd=repo, env={**env(), "DVC_STAGE": "prepare"},
                          capture_output=True, text=True, timeout=120)
    # under DVC while dvc.yaml is builtin's (not rendered for builtin-va): refused with the way to render it
    assert proc.returncode == 2 and "dvc.yaml is stale" in proc.stderr and "adapt_v2a" in proc.stderr
    assert "python -m qshift.pipeline dvc" in proc.stderr


def test_a_by_direction_override_reruns_the_video_audio_adapt_jobs_and_no_image_text_one(tmp_path):
    """The adapt jobs' trigger holds a method's effective hyperparameters for the grid's own
    directions too: methods.tcr.by_direction.v2a changes adapt_v2a's key; on the image-text
    grid the keys are those of image-text's directions only (unchanged by the task's)."""
    from pathlib import Path

    from qshift import pipeline as qp
    from qshift.config import load_params

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())

    def hash_of(benchmark: str, tcr: dict, stage: str) -> str:
        doc = {**raw, "benchmark": benchmark, "methods": {**raw["methods"], "tcr": tcr}}
        path = tmp_path / f"{benchmark}-{len(tcr)}.yaml"
        path.write_text(yaml.safe_dump(doc))
        return qp.param_hash(load_params(str(path)), stage, method="tcr")

    override = {"by_direction": {"v2a": {"lr": 1.0e-3}}}
    assert hash_of("builtin-va", {}, "adapt_v2a") != hash_of("builtin-va", override, "adapt_v2a")
    assert hash_of("builtin", {}, "adapt_i2t") == hash_of("builtin", override, "adapt_i2t")
    doc = qp.param_values(load_params(str(tmp_path / "builtin-0.yaml")), "adapt_i2t", method="tcr")
    assert set(doc["method"]) == {"None", "i2t", "t2i"}


def test_snakemake_schedules_the_drawn_video_audio_query_sets(tmp_path):
    """Under seed_corruptions the second seed's adapt jobs pull in their own drawn query sets and
    streams (rules corrupt_*_drawn, --draw-seed 7); the project seed's read the standard ones."""
    from pipeline_utils import REPO, dry_run_commands

    params = tiny_va_params(yaml.safe_load((REPO / "params.yaml").read_text()))
    cmds, out = dry_run_commands(tmp_path, {**params, "seeds": [42, 7], "seed_corruptions": True}, "corrupt_va")
    assert cmds == {"python stages/corrupt_va.py --side video --corruption gaussian_noise --severity 5",
                    "python stages/corrupt_va.py --side audio --corruption rain --severity 5",
                    "python stages/corrupt_va.py --side video --stream in_clip",
                    "python stages/corrupt_va.py --side video --corruption gaussian_noise --severity 5 --draw-seed 7",
                    "python stages/corrupt_va.py --side audio --corruption rain --severity 5 --draw-seed 7",
                    "python stages/corrupt_va.py --side video --stream in_clip --draw-seed 7"}, cmds
    assert "data/queries/builtin-va/video-seed7/gaussian_noise-s5" in out
