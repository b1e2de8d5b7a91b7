"""The video-audio task's torch-free half: what Snakemake needs to plan a video-audio pipeline —
the query cells and their clip-set paths, a cell's corruptions, the streams' domains and every parameter
check — so that a dry run or a no-op rerun (and each SLURM job's own Snakemake) does not import
torch. :mod:`qshift.va` (clip sets, loaders, encoding, building query sets) re-exports these;
the task's reconstruction notes are there.
"""

from __future__ import annotations

from pathlib import Path

from .config import AUDIO_QUERIES, DRAWN, VA_STREAM_QUERIES, VIDEO_QUERIES
from .errors import ConfigError

CLIPS = "clips.json"
SIDE = {"v2a": "video", "a2v": "audio"}
STREAM_KINDS = ("mixed", "sequential", "segments")


# -- the dataset and query-set paths ------------------------------------------------------------------

def dataset_dir(cfg: dict) -> Path:
    from .config import DATASET_DIR

    return Path(DATASET_DIR.format(dataset=cfg["benchmark"]))


def test_set(cfg: dict) -> Path:
    return dataset_dir(cfg) / "test"


def query_cells(cfg: dict, direction: str) -> list[tuple[str, int]]:
    from .results import CLEAN

    side = _side_cfg(cfg, SIDE[direction])
    return [(CLEAN, 0)] + [(c, int(s)) for c in side.get("names") or [] for s in side.get("severities") or []]


def _side_cfg(cfg: dict, side: str) -> dict:
    return dict(((cfg.get("corrupt") or {}).get(side)) or {})


def query_set_path(cfg: dict, direction: str, corruption: str, severity: int, seed=None) -> str:
    """A cell's query set: drawn for run ``seed`` when seed_corruptions makes it its own draw."""
    from .config import draw_seed

    return _set_path(cfg, SIDE[direction], corruption, severity, draw_seed(cfg, seed))


def _set_path(cfg: dict, side: str, corruption: str, severity: int, draw: int | None) -> str:
    """The query set of one (side, corruption, severity), the project's or that of ``draw``."""
    if draw is not None:
        return DRAWN[side].format(dataset=cfg["benchmark"], draw=draw, corruption=corruption, severity=severity)
    pattern = VIDEO_QUERIES if side == "video" else AUDIO_QUERIES
    return pattern.format(dataset=cfg["benchmark"], corruption=corruption, severity=severity)


def stream_path(cfg: dict, direction: str, stream: str, seed=None) -> str:
    from .config import draw_seed

    return _stream_path(cfg, SIDE[direction], stream, draw_seed(cfg, seed))


def _stream_path(cfg: dict, side: str, stream: str, draw: int | None) -> str:
    if draw is not None:
        return DRAWN["va-stream"].format(dataset=cfg["benchmark"], side=side, draw=draw, stream=stream)
    return VA_STREAM_QUERIES.format(dataset=cfg["benchmark"], side=side, stream=stream)


def queries_path(cfg: dict, direction: str, corruption: str, severity: int, seed=None) -> str:
    from .config import is_stream
    from .results import CLEAN

    if corruption == CLEAN:
        return str(test_set(cfg) / CLIPS)
    if is_stream(cfg, direction, corruption):
        return stream_path(cfg, direction, corruption, seed) + "/" + CLIPS
    return query_set_path(cfg, direction, corruption, severity, seed) + "/" + CLIPS


def registry(side: str):
    from .corrupt.audio import AUDIO_CORRUPTIONS
    from .corrupt.video import VIDEO_CORRUPTIONS

    return VIDEO_CORRUPTIONS if side == "video" else AUDIO_CORRUPTIONS


def query_corruptions(direction: str) -> tuple[str, tuple]:
    """A cell's corruption (qshift.cells.check_cell): one of the queried side's (video or audio)."""
    reg = registry(SIDE[direction])
    return reg.kind, (reg,)


# -- streams ------------------------------------------------------------------------------------------

def stream_domains(spec: dict) -> list[tuple[str, int]]:
    from .results import CLEAN

    out = []
    for c in spec["corruptions"]:
        if c == CLEAN:
            out.append((CLEAN, 0))
        else:
            out += [(c, int(s)) for s in spec["severities"]]
    return out


def reported_domains(spec: dict, direction: str | None = None) -> list[tuple[str, int]]:
    """The domains a stream's results break down by (report, stats): each block's for mixed and
    sequential streams; none for ``segments`` (every clip holds every domain)."""
    return [] if spec.get("kind") == "segments" else stream_domains(spec)


def validate_va_stream(name: str, spec, side: str, reserved: set) -> None:
    from .results import CLEAN
    from .streams import NAME

    where = f"params: streams.{side}.{name}"
    if not isinstance(name, str) or not NAME.match(name):
        raise ConfigError(f"params: streams.{side} has stream name {name!r}; names use a-z, 0-9 and _ only")
    if name in reserved:
        raise ConfigError(f"{where}: the name collides with a corruption name (or 'clean'); pick another name")
    if not isinstance(spec, dict) or set(spec) - {"kind", "corruptions", "severities"}:
        raise ConfigError(f"{where} must be a mapping with keys kind, corruptions, severities")
    kinds = STREAM_KINDS if side == "video" else STREAM_KINDS[:2]
    if spec.get("kind") not in kinds:
        raise ConfigError(f"{where}.kind is {spec.get('kind')!r}; valid: {', '.join(kinds)}")
    cs, levels = spec.get("corruptions"), spec.get("severities")
    if not isinstance(cs, list) or not cs or len(set(cs)) != len(cs):
        raise ConfigError(f"{where}.corruptions must be a non-empty list without repeats")
    for c in cs:
        if c != CLEAN:
            registry(side).check(c)
    if not isinstance(levels, list) or not levels or any(s not in range(1, 6) for s in levels):
        raise ConfigError(f"{where}.severities must be a non-empty list of integers in 1..5")
    if len(stream_domains(spec)) < 2:
        raise ConfigError(f"{where} has a single domain; a stream needs at least two")


# -- validation ---------------------------------------------------------------------------------------

def validate(cfg: dict) -> None:
    """The video-audio grid's own keys, before any work."""
    from .config import check_name
    from .results import CLEAN

    for side in ("video", "audio"):
        sc = _side_cfg(cfg, side)
        if not isinstance((cfg.get("corrupt") or {}).get(side, {}), dict):
            raise ConfigError(f"params: corrupt.{side} must be a mapping with keys names, severities")
        unknown = set(sc) - {"names", "severities"} - ({"noise_dir", "bed_rms"} if side == "audio" else set())
        if unknown:
            raise ConfigError(f"params: corrupt.{side} has unknown key(s) {', '.join(sorted(unknown))}; valid: "
                              f"names, severities{', noise_dir, bed_rms' if side == 'audio' else ''}")
        for n in sc.get("names") or []:
            check_name(f"corrupt.{side}.names entry", n)
            registry(side).check(n)
        for s in sc.get("severities") or []:
            if isinstance(s, bool) or s not in range(1, 6):
                raise ConfigError(f"params: corrupt.{side}.severities has {s!r}; valid: 1..5 (READ's severities)")
    nd = _side_cfg(cfg, "audio").get("noise_dir")
    if nd not in (None, "") and not isinstance(nd, str):
        raise ConfigError(f"params: corrupt.audio.noise_dir must be a folder path or null, got {nd!r}")
    br = _side_cfg(cfg, "audio").get("bed_rms")
    if br is not None and (isinstance(br, bool) or not isinstance(br, (int, float)) or not 0 < br <= 1):
        raise ConfigError(f"params: corrupt.audio.bed_rms must be a number in (0, 1] or null, got {br!r}")
    st = cfg.get("streams") or {}
    validate_tune(cfg)
    reserved = {CLEAN, *registry("video").names(), *registry("audio").names()}
    for side in ("video", "audio"):
        defs = st.get(side) or {}
        if not isinstance(defs, dict):
            raise ConfigError(f"params: streams.{side} must be a mapping of stream name -> definition")
        for name, spec in defs.items():
            validate_va_stream(name, spec, side, reserved)


# -- tuning (stage tune, qshift.tune) ------------------------------------------------------------------
# The validation split's clips under validation-only corruptions: tune.video for v2a (image corruptions
# per frame, seeded like the reported sets), tune.audio for a2v. A type the reported grid uses
# (corrupt.<side>.names or a stream's domain) is refused: tuning on it would select on the test shift.

def tune_cells(cfg: dict, direction: str) -> tuple[list[str], int]:
    """(validation-only corruption names, their severity) of ``direction``'s tuning queries."""
    side = ((cfg.get("tune") or {}).get(SIDE[direction])) or {}
    return list(side.get("corruptions") or []), int(side.get("severity") or 0)


def _reported(cfg: dict, side: str) -> set[str]:
    names = set(_side_cfg(cfg, side).get("names") or [])
    for spec in (((cfg.get("streams") or {}).get(side)) or {}).values():
        names |= set(spec.get("corruptions") or []) if isinstance(spec, dict) else set()
    return names


def validate_tune(cfg: dict) -> None:
    """tune.video / tune.audio: {corruptions: [...], severity: 1..5}, validation-only types."""
    t = cfg.get("tune") or {}
    if not isinstance(t, dict):
        return  # qshift.tune.validate_tune names it
    for side in ("video", "audio"):
        spec = t.get(side)
        if spec is None:
            continue
        if not isinstance(spec, dict) or set(spec) - {"corruptions", "severity"}:
            raise ConfigError(f"params: tune.{side} must be a mapping with keys corruptions, severity; got {spec!r}")
        names = spec.get("corruptions") or []
        if not isinstance(names, list):
            raise ConfigError(f"params: tune.{side}.corruptions must be a list, got {names!r}")
        reported = _reported(cfg, side)
        for c in names:
            registry(side).check(c)
            if c in reported:
                raise ConfigError(f"params: tune.{side}.corruptions has {c!r}, which the reported grid uses "
                                  f"(corrupt.{side}.names or a stream); tuning on it would select on the test "
                                  f"corruptions — use validation-only types"
                                  + (", e.g. gaussian_blur, spatter" if side == "video" else ", e.g. wind, thunder"))
        sev = spec.get("severity")
        if names and (isinstance(sev, bool) or sev not in range(1, 6)):
            raise ConfigError(f"params: tune.{side}.severity is {sev!r}; valid: 1..5 (READ's severities)")
