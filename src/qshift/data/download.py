"""Resumable, verified HTTP downloads and safe archive extraction (stdlib only).

The real benchmarks (COCO val2014 is 6 GB) are fetched on clusters over links that drop,
so :func:`fetch` is built to survive that and never to leave a wrong file under a final
name:

* bytes go to ``<dest>.part``; a rerun (or a retry) asks for the rest with an HTTP
  ``Range`` request. A server that ignores ``Range`` (``200`` instead of ``206``) is handled
  by starting over, never by appending a second copy;
* connection errors, timeouts, truncated bodies and ``5xx``/``429``/``408`` answers are
  retried with exponential backoff; other ``4xx`` fail at once (retrying a 404 is pointless);
* the sha256 (when one is recorded in params) is checked *before* the atomic rename; a
  mismatch deletes the part file, so the next run starts clean instead of resuming garbage;
* a ``<dest>.meta.json`` sidecar records which canonical URL the cached file came from, so
  a changed URL in params is fetched again while a mirror of the same URL is not.

:func:`safe_extract` checks every member of a zip or tar archive *before* writing anything
(absolute paths, ``..`` components, links leaving the target, device files and FIFOs are
rejected with the member named) and builds the target in a temporary sibling folder that
is renamed into place only on success.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import posixpath
import re
import shutil
import stat
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Mapping

from ..progress import tqdm

from ..errors import ConfigError, InputError
from ..io import atomic_dir, sha256_file, write_json

log = logging.getLogger("qshift.download")

USER_AGENT = "qshift-download/1"
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MAX_BACKOFF = 60.0
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class DownloadError(InputError):
    """A download that failed for good (after retries, or on a non-retryable answer)."""


class _Retryable(Exception):
    """An attempt failed in a way that another attempt may fix."""


@dataclass
class Fetched:
    """What :func:`fetch` produced: the file and how it was obtained (for download.json)."""

    url: str  # the canonical URL (as in params)
    fetched_from: str  # after the mirror override
    path: str
    size: int
    sha256: str
    verified: bool  # True when it matched a sha256 recorded in params
    cached: bool  # True when an existing cache file was reused

    def as_dict(self) -> dict:
        return asdict(self)


def check_sha256(value: object, where: str) -> str | None:
    """Validate a params checksum: null or 64 hex digits (case-insensitive)."""
    if value is None:
        return None
    if not isinstance(value, str) or not _SHA256.match(value.lower()):
        raise ConfigError(f"params: {where} must be null or a sha256 hex digest (64 hex digits), got {value!r}")
    return value.lower()


def apply_mirror(url: str, mirror: Mapping[str, str] | None) -> str:
    """Replace the longest matching URL prefix by its mirror (``download.mirror`` in params)."""
    if not mirror:
        return url
    if not isinstance(mirror, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                  for k, v in mirror.items()):
        raise ConfigError(f"params: download.mirror must map URL prefixes to replacement prefixes, got {mirror!r}")
    best = max((p for p in mirror if url.startswith(p)), key=len, default=None)
    return url if best is None else mirror[best] + url[len(best):]


def _meta_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".meta.json")


def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 (http/https/file by design)


def _attempt(url: str, part: Path, timeout: float, progress: bool, chunk: int) -> None:
    """One request: append to (or restart) ``part``; return once the body is complete."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        resp = _open(url, offset, timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # asked past the end: the part is complete or bogus
            total = _total_from_content_range(e.headers.get("Content-Range"))
            e.close()
            if total == offset:
                return
            part.unlink()  # longer than the file, or unknown: start over
            raise _Retryable(f"HTTP 416 for a resume at byte {offset}; restarting") from None
        e.close()
        if e.code in RETRY_STATUS:
            raise _Retryable(f"HTTP {e.code} {e.reason}") from None
        raise DownloadError(f"download of {url} failed: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise _Retryable(f"{type(e).__name__}: {getattr(e, 'reason', e)}") from None
    with resp:
        status = getattr(resp, "status", None) or 200  # file:// answers carry no status
        length = resp.headers.get("Content-Length")
        expected = int(length) if length is not None and length.isdigit() else None
        if status == 206:
            start = _start_from_content_range(resp.headers.get("Content-Range"))
            if start != offset:
                part.unlink(missing_ok=True)
                raise _Retryable(f"server resumed at byte {start}, not {offset}; restarting")
            mode = "ab"
        else:  # 200: the server ignored Range (or there was none): the body is the whole file
            if offset:
                log.info("%s ignored the Range request; restarting from byte 0", url)
            offset, mode = 0, "wb"
        total = None if expected is None else offset + expected
        got = 0
        bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=posixpath.basename(url) or url, disable=not progress, leave=False)
        try:
            with open(part, mode) as fh:
                while True:
                    try:
                        block = resp.read(chunk)
                    except (OSError, http.client.HTTPException) as e:
                        raise _Retryable(f"connection lost after {offset + got} bytes: {type(e).__name__}") from None
                    if not block:
                        break
                    fh.write(block)
                    got += len(block)
                    bar.update(len(block))
        finally:
            bar.close()
        if expected is not None and got < expected:
            raise _Retryable(f"body ended after {offset + got} of {total} bytes")


def _start_from_content_range(value: str | None) -> int | None:
    m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", value or "")
    return int(m.group(1)) if m else None


def _total_from_content_range(value: str | None) -> int | None:
    m = re.match(r"bytes \*/(\d+)", value or "")
    return int(m.group(1)) if m else None


def fetch(url: str, dest: str | os.PathLike, sha256: str | None = None, *,
          mirror: Mapping[str, str] | None = None, retries: int = 5, backoff: float = 2.0,
          timeout: float = 60.0, progress: bool = True, chunk: int = 1 << 20,
          sleep: Callable[[float], None] = time.sleep, warn_unverified: bool = True) -> Fetched:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), verify it, rename it atomically.

    ``retries`` counts consecutive failed attempts: an attempt that received bytes resets
    the count, so a long download over a flaky link keeps going as long as it progresses.
    The wait before retry ``k`` (1-based) is ``backoff * 2**(k-1)`` seconds, capped at 60 s.
    """
    dest = Path(dest)
    sha256 = check_sha256(sha256, f"sha256 of {url}")
    source = apply_mirror(url, mirror)
    part, meta = _part_path(dest), _meta_path(dest)
    cached = _reuse(dest, meta, url, sha256)
    if cached is not None:
        return Fetched(url, source, str(dest), dest.stat().st_size, cached, sha256 is not None, True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if part.exists() and _meta_url(meta) not in (None, url):
        part.unlink()  # a part of another file: never resume across URLs
    write_json(meta, {"url": url, "complete": False})
    failures = 0
    while True:
        before = part.stat().st_size if part.exists() else 0
        try:
            _attempt(source, part, timeout, progress, chunk)
            break
        except _Retryable as e:
            after = part.stat().st_size if part.exists() else 0
            failures = 1 if after > before else failures + 1
            if failures > retries:
                kept = f" (the partial file {part} is kept; rerun to resume)" if part.exists() else ""
                raise DownloadError(f"download of {source} failed after {retries} retries: {e}{kept}") from None
            wait = min(backoff * 2 ** (failures - 1), MAX_BACKOFF)
            log.warning("download of %s: %s; retry %d/%d in %.1f s", source, e, failures, retries, wait)
            sleep(wait)
    actual = sha256_file(part)
    if sha256 is not None and actual != sha256:
        part.unlink()
        meta.unlink(missing_ok=True)
        raise DownloadError(f"checksum mismatch for {source}: expected sha256 {sha256}, got {actual}; "
                            f"the download was deleted (a wrong mirror, or a changed upstream file?)")
    if sha256 is None and warn_unverified:  # (per-image downloads of NoCaps: one summary line instead)
        log.warning("no sha256 recorded for %s: verification skipped; to verify future downloads set "
                    "its sha256 in params.yaml to %s", url, actual)
    os.replace(part, dest)
    write_json(meta, {"url": url, "complete": True, "size": dest.stat().st_size, "sha256": actual})
    return Fetched(url, source, str(dest), dest.stat().st_size, actual, sha256 is not None, False)


def _meta_url(meta: Path) -> str | None:
    try:
        return json.loads(meta.read_text()).get("url")
    except (OSError, ValueError, AttributeError):
        return None


def _reuse(dest: Path, meta: Path, url: str, sha256: str | None) -> str | None:
    """The sha256 of a cached ``dest`` that may be reused, else None (and it is removed)."""
    if not dest.is_file():
        return None
    try:
        info = json.loads(meta.read_text())
    except (OSError, ValueError):
        info = {}
    if info.get("url") == url and info.get("complete") and info.get("size") == dest.stat().st_size:
        digest = info.get("sha256")
        if sha256 is None or digest == sha256:
            return digest
    if sha256 is not None and sha256_file(dest) == sha256:  # e.g. a file copied into the cache by hand
        write_json(meta, {"url": url, "complete": True, "size": dest.stat().st_size, "sha256": sha256})
        return sha256
    log.info("cached %s does not match %s; fetching it again", dest, url)
    dest.unlink()
    return None


# -- archives ---------------------------------------------------------------------------------
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


def is_archive(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


@dataclass
class _Member:
    name: str  # normalised relative POSIX path
    kind: str  # "file" | "dir" | "link" (links are never written)
    handle: object  # ZipInfo | TarInfo


def _unsafe(archive: Path, name: str, why: str) -> InputError:
    return InputError(f"unsafe archive {archive}: member {name!r} {why}; nothing was extracted")


def _clean_name(archive: Path, name: str) -> str:
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise _unsafe(archive, name, "has an absolute path")
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if ".." in parts:
        raise _unsafe(archive, name, "has a '..' component")
    return "/".join(p for p in parts if p not in ("", "."))


def _link_escapes(member: str, target: str, hard: bool) -> bool:
    """Whether a link at ``member`` pointing at ``target`` resolves outside the archive root."""
    if target.startswith("/") or re.match(r"^[A-Za-z]:", target):
        return True
    base = "" if hard else posixpath.dirname(member)  # hardlink targets are archive-relative
    depth = 0
    for part in PurePosixPath(posixpath.join(base, target)).parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


def _members(archive: Path) -> tuple[list[_Member], object]:
    """Every member, validated; raises before anything is written."""
    out: list[_Member] = []
    try:
        if zipfile.is_zipfile(archive):
            zf = zipfile.ZipFile(archive)
            for info in zf.infolist():
                name = _clean_name(archive, info.filename)
                # unix mode bits only mean something in zips made on unix (create_system 3);
                # a file type of 0 (no S_IFMT bits, as zipfile.writestr leaves it) is a file
                mode = info.external_attr >> 16 if info.create_system == 3 else 0
                if stat.S_ISLNK(mode):
                    target = zf.read(info).decode("utf-8", "replace")
                    if _link_escapes(name, target, hard=False):
                        raise _unsafe(archive, info.filename, f"is a symlink to {target!r} outside the target")
                    out.append(_Member(name, "link", info))
                elif stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                    raise _unsafe(archive, info.filename, "is a device file, FIFO or socket")
                else:
                    out.append(_Member(name, "dir" if info.is_dir() else "file", info))
            return out, zf
        tf = tarfile.open(archive)
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as e:
        raise InputError(f"cannot read archive {archive}: {e}") from None
    try:
        for info in tf.getmembers():
            name = _clean_name(archive, info.name)
            if info.issym() or info.islnk():
                if _link_escapes(name, info.linkname, hard=info.islnk()):
                    kind = "hardlink" if info.islnk() else "symlink"
                    raise _unsafe(archive, info.name, f"is a {kind} to {info.linkname!r} outside the target")
                out.append(_Member(name, "link", info))
            elif info.isdir():
                out.append(_Member(name, "dir", info))
            elif info.isfile():
                out.append(_Member(name, "file", info))
            else:
                raise _unsafe(archive, info.name, "is a device file, FIFO or socket")
    except (tarfile.TarError, OSError, EOFError) as e:
        tf.close()
        raise InputError(f"cannot read archive {archive}: {e}") from None
    except InputError:
        tf.close()
        raise
    return out, tf


def safe_extract(archive: str | os.PathLike, target: str | os.PathLike,
                 select: Callable[[str], str | None] | None = None, progress: bool = True) -> dict[str, str]:
    """Extract the regular files of a zip/tar archive into ``target`` (replaced atomically).

    ``select(member_name)`` returns the relative path to write the member to, or None to
    skip it (default: every file at its own path). Links are never created (the real
    datasets have none); escaping ones make the whole archive rejected. Returns
    {member name: written relative path}.
    """
    archive, target = Path(archive), Path(target)
    if not archive.is_file():
        raise InputError(f"archive not found: {archive}")
    members, handle = _members(archive)
    links = [m.name for m in members if m.kind == "link"]
    if links:
        log.warning("archive %s: %d link(s) inside the archive not extracted (e.g. %s)", archive, len(links), links[0])
    plan: dict[str, _Member] = {}
    written: dict[str, str] = {}
    for m in members:
        if m.kind != "file":
            continue
        rel = select(m.name) if select else m.name
        if rel is None:
            continue
        rel = _clean_name(archive, rel)  # a select() bug must not escape either
        if rel in plan:
            continue  # the first member wins (sorted archives: deterministic)
        plan[rel] = m
        written[m.name] = rel
    try:
        with atomic_dir(target) as tmp:
            for rel, m in tqdm(plan.items(), desc=f"extract {archive.name}", unit="file", disable=not progress,
                               leave=False):
                out = tmp / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(handle, zipfile.ZipFile):
                    src = handle.open(m.handle)
                else:
                    src = handle.extractfile(m.handle)
                with src, open(out, "wb") as fh:
                    shutil.copyfileobj(src, fh, 1 << 20)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as e:
        raise InputError(f"archive {archive} is corrupt ({type(e).__name__}: {e}); delete it and download again") from None
    finally:
        handle.close()  # type: ignore[attr-defined]
    return written
