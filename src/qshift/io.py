"""Atomic file writes and small I/O helpers.

Every stage writes its outputs through these helpers: a crash or a ``scancel`` never
leaves a half-written file under the final name, so orchestrators never mistake a
partial output for a finished one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .faults import point as fault_point


# -- where outputs may be replaced --------------------------------------------------------------
# A folder written by :func:`atomic_dir` carries this marker; an existing folder is only ever
# replaced when it has one (so a bad name can never make QShift delete a folder it did not
# write) and when it lies strictly inside an output root.
MARKER = ".qshift-output"
_MARKER_TEXT = "written by QShift (qshift.io.atomic_dir); the folder may be replaced by a rerun\n"
# the project's output folders, relative to the working directory (the repository root when
# a stage runs); more roots (a download or model cache elsewhere) via register_output_root or
# the QSHIFT_OUTPUT_ROOTS environment variable (os.pathsep-separated)
OUTPUT_ROOTS = ("data", "models", "results", "reports", "logs")
_extra_roots: set[Path] = set()


def register_output_root(path: str | os.PathLike) -> None:
    """Allow atomic writers to replace QShift-made folders below ``path`` (e.g. a cache_dir)."""
    _extra_roots.add(Path(path).resolve())


def output_roots() -> list[Path]:
    cwd = Path.cwd().resolve()
    env = [Path(p).resolve() for p in os.environ.get("QSHIFT_OUTPUT_ROOTS", "").split(os.pathsep) if p]
    return [cwd / r for r in OUTPUT_ROOTS] + sorted(_extra_roots) + env


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask would, for a moment, for every thread)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _publish_mode(path: Path, is_dir: bool) -> None:
    """Temp files are created 0600 / 0700; the published output gets the user's umask."""
    os.chmod(path, (0o777 if is_dir else 0o666) & ~_umask())


def check_replaceable(path: str | os.PathLike) -> None:
    """Raise unless the existing folder ``path`` may be replaced by an atomic writer."""
    from .errors import ConfigError

    path = Path(path)
    target = path.resolve()
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents or target == Path.home().resolve() or (target / ".git").exists():
        raise ConfigError(f"refusing to replace {path} ({target}): it is the project folder or above it; "
                          f"check the names in params.yaml that make this path")
    if target.is_dir() and not target.is_symlink() and next(target.iterdir(), None) is None:
        return  # an empty folder (e.g. made by the caller for the output): nothing to lose
    if not any(root in target.parents for root in output_roots()):
        raise ConfigError(f"refusing to replace {path} ({target}): it is not inside an output folder "
                          f"({', '.join(OUTPUT_ROOTS)} of {cwd}, or a registered cache)")
    if target.is_dir() and not (target / MARKER).is_file():
        raise ConfigError(f"refusing to replace {path}: QShift did not write this folder (no {MARKER} marker "
                          f"inside); move or delete it yourself if it should be rebuilt")
    if not target.is_dir():
        raise ConfigError(f"refusing to replace {path}: it exists and is not a folder")


# Temp names carry host and pid, so the next writer of the same target can sweep what a
# killed (kill -9, scancel, OOM) writer left behind: ".<name>.<host>.<pid>.<random><suffix>"
_HOST = socket.gethostname().split(".")[0].replace(".", "_") or "host"


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}.{_HOST}.{os.getpid()}."


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove temp files/folders of ``path`` left by dead writers on this host; returns them.

    Only names of the atomic writers' own pattern are touched, and only when the pid in the
    name is not alive (other hosts' temps on a shared file system are left alone)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    removed = []
    prefix = f".{path.name}.{_HOST}."
    for cand in path.parent.iterdir():
        name = cand.name
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        pid = name[len(prefix):].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or pid_alive(int(pid)):
            continue
        if cand.is_dir() and not cand.is_symlink():
            shutil.rmtree(cand, ignore_errors=True)
        else:
            cand.unlink(missing_ok=True)
        removed.append(cand)
    if removed:
        import logging

        logging.getLogger(__name__).warning("removed %d stale temp file(s)/folder(s) of killed writers beside %s",
                                            len(removed), path)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in the target's directory; rename it over ``path`` on success.
    The published file gets the permissions the user's umask gives a new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=(suffix or "") + ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        fault_point("atomic_path.before_publish")
        if tmp_path.exists():
            _publish_mode(tmp_path, is_dir=False)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; it replaces ``path`` on success.

    An existing ``path`` is replaced only if QShift wrote it (see :func:`check_replaceable`),
    checked before any work. The new folder gets a marker file and umask permissions."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        fault_point("atomic_dir.before_publish")
        (tmp / MARKER).write_text(_MARKER_TEXT)
        for sub in tmp.rglob("*"):  # files a caller made with mkstemp & co. too
            if sub.is_file() and not sub.is_symlink() and not (sub.stat().st_mode & 0o044):
                _publish_mode(sub, is_dir=False)
            elif sub.is_dir() and not sub.is_symlink() and not (sub.stat().st_mode & 0o055):
                _publish_mode(sub, is_dir=True)
        _publish_mode(tmp, is_dir=True)
        if path.exists() or path.is_symlink():
            check_replaceable(path)  # still ours (nothing swapped it in meanwhile)
            old = path.parent / f"{_tmp_prefix(path)}old.tmp"
            os.replace(path, old)  # out of the way first: the final name is never missing for long
            try:
                os.replace(tmp, path)
            except OSError:
                os.replace(old, path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> None:
    with atomic_path(path, ".json") as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, default=_json_default, allow_nan=True) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    from .errors import InputError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{what} {path} is not valid JSON: {e}") from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def stable_hash(obj: Any, n: int = 12) -> str:
    """Short hash of a JSON-serialisable object, independent of key order."""
    blob = json.dumps(obj, sort_keys=True, default=_json_default).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def derive_seed(*parts: Any) -> int:
    """A 32-bit seed from any parts, stable across processes and PYTHONHASHSEED."""
    blob = "\x1f".join(map(str, parts)).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "little")


def query_seed(dataset: str, query_id: Any, corruption: str, severity: int, draw: int | None = None) -> int:
    """The seed of one query's corruption: (dataset, image id or sentid, corruption, severity) —
    the same in a per-corruption set and in a stream — and, for a set drawn anew for another run
    seed (``seed_corruptions``), that ``draw`` seed as well."""
    if draw is None:
        return derive_seed(dataset, query_id, corruption, severity)
    return derive_seed(dataset, query_id, corruption, severity, "draw", int(draw))
