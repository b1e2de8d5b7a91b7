"""Shared plumbing for the stage CLIs in ``stages/``: arguments, config, clean error exits."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable

from .errors import QShiftError


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default=None,
                   help="params file (default: $QSHIFT_PARAMS, set by the Snakefile for --config overrides, "
                        "else params.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a params value, e.g. --set methods.tcr.lr=1e-3 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="disable progress bars")
    return p


def load(args: argparse.Namespace) -> dict:
    """The stage's params; sets their CPU kernels (``cpu_kernels``) before the stage imports torch."""
    from .config import default_params_path, load_params
    from .runtime import set_cpu_kernels

    cfg = load_params(args.params or default_params_path(), args.overrides)
    set_cpu_kernels(cfg.get("cpu_kernels", "native"))
    return cfg


def start_log(path: str) -> logging.Logger:
    """Mirror the stage's log to ``path`` (the file Snakemake's ``log:`` directive names)."""
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return logging.getLogger("qshift.stage")


def progress_enabled(args: argparse.Namespace) -> bool:
    return not args.no_progress and os.environ.get("QSHIFT_PROGRESS", "1") != "0"


def run(main: Callable[[], None]) -> None:
    """Run a stage; user-facing errors print one clear line and exit with status 2."""
    # our own messages at INFO; libraries (open_clip logs through the root logger) at WARNING
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("qshift").setLevel(logging.INFO)
    try:
        main()
    except QShiftError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    log_usage()


CPU_LINE = "cpu: {cpu:.1f} s (this stage's process and its children, imports included), peak RSS {rss:.0f} MiB"


def log_usage() -> None:
    """One closing line in the stage's log with the CPU seconds the process (and the worker
    processes it waited for) used: benchmarks/pipeline_cost.py sums them into the run's work.
    (Snakemake's benchmark files sample cpu_time every 0.5 s for 15 s, then every 30 s, so a
    20-50 s job's figure stops at its 15th second.)"""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    logging.getLogger("qshift.stage").info(CPU_LINE.format(cpu=cpu, rss=own.ru_maxrss / 1024))


def main() -> None:
    """The `qshift` console script (`qshift table`, `qshift compare`): src/qshift/console.py."""
    from .console import main as console_main

    console_main()
