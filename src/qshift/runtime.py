"""Device selection, seeding, threads and run provenance (git commit, SLURM job, host)."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")


def pick_device(pref: str = "auto") -> "torch.device":
    import torch

    if pref not in DEVICES and not pref.startswith("cuda:"):
        raise ConfigError(f"device {pref!r} is not valid; choose one of {', '.join(DEVICES)} or cuda:N")
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if pref.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {pref!r} requested but CUDA is not available on {socket.gethostname()}")
    return torch.device(pref)


def autocast(device: "torch.device", enabled: bool):
    """Mixed precision on CUDA when enabled; a no-op context on CPU."""
    import torch

    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def set_threads(n: int) -> None:
    import torch

    if n and n > 0:
        torch.set_num_threads(n)


def job_cpus() -> int:
    """The CPUs this job was given: Snakemake's thread count for the job (it exports
    ``OMP_NUM_THREADS=<threads>`` to every job, scaled to ``--cores``), else every CPU this
    process may run on (a DVC stage, a stage run by hand)."""
    try:
        n = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        n = 0
    if n > 0:
        return n
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def die_with_parent(parent: int) -> None:
    """Tie a pool worker to its job (call it in the pool's initializer): a worker must not outlive
    the job, and a ``kill -9`` of the job (or scancel, OOM) would otherwise leave the workers
    (~200 MB each) and multiprocessing's resource tracker running.
    Linux: the kernel sends SIGKILL when the parent dies (PR_SET_PDEATHSIG); everywhere: a
    watchdog thread exits once the parent is gone (re-parented)."""
    import ctypes
    import signal
    import threading
    import time

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # died before prctl took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="qshift-parent-watchdog", daemon=True).start()


@lru_cache(maxsize=1)
def git_commit(cwd: str | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd or Path.cwd(), capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    commit = out.stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd or Path.cwd(),
                           capture_output=True, text=True, timeout=10).stdout.strip()
    return commit + ("-dirty" if dirty else "")


def provenance(device: "torch.device | str") -> dict:
    import torch

    return {
        "git_commit": git_commit(),
        "host": socket.gethostname(),
        "device": str(device),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "torch": torch.__version__,
    }
