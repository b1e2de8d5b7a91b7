"""Decoding real video clips (PyAV, i.e. FFmpeg's libraries) into frames and a 16 kHz waveform.

One clip at a time — nothing here holds more than one clip's selected frames and its audio
(at most ``max_samples``), so a clip list of any length streams through bounded memory.

Frames follow CAV-MAE's extraction (YuanGongND/cav-mae ``src/preprocess/extract_video_frame.py``):
of the first 10 seconds (``total = min(frame count, int(fps * 10))``), frame ``k`` of ``n`` is the
decoded frame at index ``max(int(k * total / n) - 1, 0)`` (it seeks to ``CAP_PROP_POS_FRAMES =
idx - 1`` and reads one frame); ``n = 10`` gives its 10 frames; ``n = 1`` gives the frame CAV-MAE's
retrieval uses (``frame_use = 5`` of 10: index ``int(total / 2) - 1``). Each kept frame is resized
(shorter side to ``image_size``, bilinear, antialiased) and centre-cropped, as its extraction
does before saving; the JPEG it then writes is not reproduced (frames stay lossless uint8).

Audio follows CAV-MAE's ``extract_audio.py`` (``ffmpeg -ar 16000`` then ``sox remix 1``): the
first audio stream resampled to 16 kHz by libswresample (what ffmpeg uses), channel 1 only,
float32 in [-1, 1], cut at ``max_samples`` (the 1024 fbank frames CAV-MAE keeps need
``1023 * 160 + 400`` samples: anything later is cut by the model anyway).

A clip that cannot be used raises :class:`ClipError` naming the file and why: unreadable or
truncated container, no video stream, no audio track, no decodable frame, audio shorter than
one 25 ms fbank frame. The adapters (:mod:`.av_lists`) record those as skips.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError

SAMPLE_RATE = 16000
MAX_SECONDS = 10.0  # CAV-MAE's frame extraction looks at the first 10 s
CAV_MAE_SAMPLES = 1023 * 160 + 400  # samples behind 1024 fbank frames (25 ms window, 10 ms hop) at 16 kHz
MIN_SAMPLES = 400  # one 25 ms frame at 16 kHz


class ClipError(InputError):
    """A clip that cannot be decoded into frames + audio (the message names the file)."""

    def __init__(self, path: str | Path, reason: str, kind: str):
        super().__init__(f"clip {path}: {reason}")
        self.path = str(path)
        self.reason = reason
        self.kind = kind  # unreadable | no-video | no-audio | no-frames | short-audio


@dataclass
class Clip:
    frames: np.ndarray  # uint8 [n_frames, image_size, image_size, 3]
    audio: np.ndarray  # float32 [samples] at SAMPLE_RATE
    info: dict = field(default_factory=dict)


def frame_indices(total: int, n: int) -> list[int]:
    """CAV-MAE's frame positions (module docstring) for ``n`` frames of ``total``."""
    if n == 1:
        return [max(int(total / 2) - 1, 0)]
    return [max(int(k * (total / n)) - 1, 0) for k in range(n)]


def _resize_crop(frame: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image
    from torchvision import transforms as T

    img = T.CenterCrop(size)(T.Resize(size)(Image.fromarray(frame)))
    return np.asarray(img, dtype=np.uint8)


def _open(path: Path):
    import av

    try:
        return av.open(str(path))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise ClipError(path, f"unreadable ({type(e).__name__}: {e})", "unreadable") from None


def _count_video_frames(path: Path, max_seconds: float) -> tuple[int, float]:
    """(frames within the first ``max_seconds``, fps) from the demuxed packets (no decoding)."""
    import av

    with _open(path) as c:
        if not c.streams.video:
            raise ClipError(path, "has no video stream", "no-video")
        s = c.streams.video[0]
        fps = float(s.average_rate or s.guessed_rate or 0) or 25.0
        tb = float(s.time_base) if s.time_base else None
        n = 0
        try:
            for pkt in c.demux(s):
                if pkt.size == 0:
                    continue
                if pkt.pts is not None and tb is not None and pkt.pts * tb >= max_seconds:
                    continue
                n += 1
        except av.FFmpegError:
            pass  # a truncated file: count what was readable; decoding reports the rest
    return min(n, int(fps * max_seconds)) if n else 0, fps


def decode_frames(path: str | Path, n_frames: int = 1, image_size: int = 224,
                  max_seconds: float = MAX_SECONDS) -> tuple[np.ndarray, dict]:
    """``n_frames`` frames (CAV-MAE's positions) resized/cropped to ``image_size``."""
    import av

    path = Path(path)
    total, fps = _count_video_frames(path, max_seconds)
    if total == 0:
        raise ClipError(path, "has no video frames in its first "
                        f"{max_seconds:g} s (zero-length or empty video stream)", "no-frames")
    want = frame_indices(total, n_frames)
    needed = set(want)
    got: dict[int, np.ndarray] = {}
    last, decoded = None, 0
    with _open(path) as c:
        s = c.streams.video[0]
        try:
            for i, frame in enumerate(c.decode(s)):
                decoded = i + 1
                if i in needed:
                    got[i] = _resize_crop(frame.to_ndarray(format="rgb24"), image_size)
                    last = got[i]
                if i >= max(want):
                    break
        except av.FFmpegError as e:
            if not got:
                raise ClipError(path, f"video stream does not decode ({type(e).__name__}: {e})", "unreadable") from None
    if not got:
        raise ClipError(path, "no video frame could be decoded", "no-frames")
    # a truncated stream: indices past the last decodable frame reuse the last frame kept
    frames = []
    for i in want:
        if i in got:
            last = got[i]
        else:
            earlier = [k for k in got if k <= i]
            last = got[max(earlier)] if earlier else got[min(got)]
        frames.append(last)
    info = {"fps": round(fps, 3), "video_frames": total, "frame_indices": want,
            "frames_missing": sum(1 for i in want if i not in got), "decoded_frames": decoded}
    return np.stack(frames), info


def decode_audio(path: str | Path, sample_rate: int = SAMPLE_RATE, max_samples: int | None = CAV_MAE_SAMPLES
                 ) -> tuple[np.ndarray, dict]:
    """The first audio stream, resampled to ``sample_rate``, first channel, float32."""
    import av

    path = Path(path)
    chunks: list[np.ndarray] = []
    n = 0
    with _open(path) as c:
        if not c.streams.audio:
            raise ClipError(path, "has no audio track", "no-audio")
        s = c.streams.audio[0]
        source_rate = s.rate
        resampler = av.AudioResampler(format="fltp", rate=sample_rate)  # keeps the channel layout
        try:
            for frame in c.decode(s):
                for out in resampler.resample(frame):
                    x = out.to_ndarray()[0].astype(np.float32, copy=True)
                    chunks.append(x)
                    n += x.shape[0]
                if max_samples is not None and n >= max_samples:
                    break
            else:
                for out in resampler.resample(None):
                    x = out.to_ndarray()[0].astype(np.float32, copy=True)
                    chunks.append(x)
                    n += x.shape[0]
        except av.FFmpegError as e:
            if n < MIN_SAMPLES:
                raise ClipError(path, f"audio track does not decode ({type(e).__name__}: {e})", "unreadable") from None
    wave = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if max_samples is not None:
        wave = wave[:max_samples]
    if wave.shape[0] < MIN_SAMPLES * sample_rate // SAMPLE_RATE:
        raise ClipError(path, f"audio track holds {wave.shape[0]} samples, less than one 25 ms frame", "short-audio")
    return wave, {"source_sample_rate": source_rate, "samples": int(wave.shape[0])}


def decode_clip(path: str | Path, n_frames: int = 1, image_size: int = 224, sample_rate: int = SAMPLE_RATE,
                max_samples: int | None = CAV_MAE_SAMPLES, max_seconds: float = MAX_SECONDS) -> Clip:
    """Frames + audio of one clip (module docstring); :class:`ClipError` when unusable."""
    path = Path(path)
    if not path.is_file():
        raise ClipError(path, "not found", "missing")
    if path.stat().st_size == 0:
        raise ClipError(path, "is an empty file (zero bytes)", "unreadable")
    frames, vinfo = decode_frames(path, n_frames, image_size, max_seconds)
    wave, ainfo = decode_audio(path, sample_rate, max_samples)
    return Clip(frames, wave, {**vinfo, **ainfo})
