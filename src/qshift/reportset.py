"""Writing the report as a set: report.md, report.html, summary.json and figures/ change together.

:func:`build_report <qshift.report.build_report>` draws every figure and writes every page into
a staging folder beside them (``<report dir>/.report.<pid>.tmp``); :func:`swap_in` then moves
them into place in an order that keeps every state a kill can leave consistent: the new
figures first (file by file, each rename atomic; the old pages' figures keep existing), then
the pages, and only then the figures no page links any more are removed. A kill while
building leaves the previous report untouched and a staging folder that the next report run
sweeps (:func:`staging`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .io import pid_alive

PAGES = ("summary.json", "report.html", "report.md")  # report.md last: it links the figures
FIGURES = "figures"


def staging(out_dir: str | Path) -> Path:
    """A fresh, empty staging folder in ``out_dir``; folders of dead report runs are removed first."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob(".report.*.tmp"):
        pid = old.name.split(".")[2]
        if not pid.isdigit() or int(pid) == os.getpid() or not pid_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    stage = out_dir / f".report.{os.getpid()}.tmp"
    (stage / FIGURES).mkdir(parents=True)
    return stage


def swap_in(stage: Path, out_dir: str | Path) -> None:
    """Move the staged figures and pages into ``out_dir`` (see the module's docstring)."""
    out_dir = Path(out_dir)
    figs = out_dir / FIGURES
    figs.mkdir(parents=True, exist_ok=True)
    new = sorted(p.name for p in (stage / FIGURES).iterdir())
    for name in new:
        os.replace(stage / FIGURES / name, figs / name)
    for name in PAGES:
        os.replace(stage / name, out_dir / name)
    for old in figs.iterdir():  # figures of an earlier grid that no page links now
        if old.name not in new:
            shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
    shutil.rmtree(stage, ignore_errors=True)
