"""Progress that reaches the log: a tqdm bar on an interactive terminal, log lines elsewhere.

Stages run under Snakemake, DVC or SLURM with stderr going to a log file or a shared
terminal, where tqdm's carriage returns pile up (or two parallel jobs overwrite each other's
bar). :func:`tqdm` is a drop-in for the subset of tqdm QShift uses: on a terminal (and
progress enabled) it is tqdm itself; otherwise it logs one line per 10% of the work (or
every 30 s when the total is unknown) to the ``qshift.progress`` logger, with the elapsed
time and an ETA, so each stage's log file (``logs/<stage>/...``) shows how far a job got.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Iterable, Iterator

log = logging.getLogger("qshift.progress")

STEP = 0.10  # log every 10% of the total
UNKNOWN_TOTAL_EVERY_S = 30.0


def interactive() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _fmt_time(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class LogProgress:
    """The tqdm calls QShift makes (iterate, update, set_postfix, close, with) as log lines."""

    def __init__(self, iterable: Iterable | None = None, total: int | float | None = None, desc: str = "",
                 unit: str = "it", initial: int = 0, **_: Any):
        self.iterable = iterable
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.total, self.desc, self.unit = total, desc or "progress", unit
        self.n = initial
        self.start = time.monotonic()
        self._last_log = self.start
        self._next = STEP
        self._postfix = ""
        self._closed = False

    def __iter__(self) -> Iterator:
        for item in self.iterable or ():
            yield item
            self.update()
        self.close()

    def __enter__(self) -> "LogProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kw: Any) -> None:
        items = {**(ordered_dict or {}), **kw}
        self._postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    def refresh(self) -> None:
        pass

    def update(self, n: int | float = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self.total:
            frac = self.n / self.total
            if frac >= self._next and self.n < self.total:
                self._emit(now)
                while self._next <= frac:
                    self._next += STEP
        elif now - self._last_log >= UNKNOWN_TOTAL_EVERY_S:
            self._emit(now)

    def _emit(self, now: float, done: bool = False) -> None:
        self._last_log = now
        elapsed = now - self.start
        if self.total:
            pct = 100.0 * self.n / self.total
            rate = self.n / elapsed if elapsed > 0 else 0.0
            eta = (self.total - self.n) / rate if rate > 0 and not done else 0.0
            what = f"{pct:3.0f}% ({self.n:g}/{self.total:g} {self.unit})"
            timing = f"elapsed {_fmt_time(elapsed)}" + ("" if done else f", ETA {_fmt_time(eta)}")
        else:
            what, timing = f"{self.n:g} {self.unit}", f"elapsed {_fmt_time(elapsed)}"
        extra = f" [{self._postfix}]" if self._postfix else ""
        log.info("%s: %s, %s%s", self.desc, what, timing, extra)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.n:  # a loop that ran: one closing line with the total time
            self._emit(time.monotonic(), done=True)


def tqdm(iterable: Iterable | None = None, *args: Any, disable: bool = False, **kw: Any):
    """tqdm on an interactive terminal (unless ``disable``), :class:`LogProgress` otherwise.
    ``disable`` (``--no-progress`` / ``QSHIFT_PROGRESS=0``) turns off the bar only: the log
    lines are a few per job and always kept."""
    if interactive() and not disable:
        from tqdm.auto import tqdm as bar

        return bar(iterable, *args, **kw)
    return LogProgress(iterable, **kw)
