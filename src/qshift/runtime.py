"""Device selection, seeding, threads, CPU kernels and run provenance (git commit, SLURM job, host)."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import random
import socket
import subprocess
import sys
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


# params `cpu_kernels`: which code paths torch's CPU libraries take. An x86-64 CPU with AVX-512
# (or AMX) otherwise runs other kernels than an AVX2-only one — ATen's vectorised ops (GELU,
# LayerNorm, softmax, attention), MKL's GEMMs, oneDNN's convolutions — whose float sums round
# differently, so the same params and seed train a source model that differs in the last bits,
# and tuning picks and tables can follow (README: *Same numbers on another CPU*). `avx2` pins all
# three to their AVX2 paths (MKL's conditional numerical reproducibility branch), so x86-64 CPUs
# with AVX2 compute the same bits at the same thread count; `native` leaves them to pick.
# The variables must be set before torch is loaded: each stage does it in qshift.cli.load.
CPU_KERNELS = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "native": {},
}


def check_cpu_kernels(kind: str) -> None:
    """``cpu_kernels`` names a choice of :data:`CPU_KERNELS` (params validation: the name only)."""
    if kind not in CPU_KERNELS:
        raise ConfigError(f"params: cpu_kernels is {kind!r}; valid: {', '.join(CPU_KERNELS)}")


def cpu_kernel_env(kind: str) -> dict[str, str]:
    """The environment variables ``cpu_kernels: kind`` sets: none off x86-64 (the pinned paths are
    x86 ones), and none on an x86-64 CPU without AVX2 and FMA, where ATen would take the AVX2
    request on trust and stop at the first AVX2 instruction (it does not check the CPU)."""
    check_cpu_kernels(kind)
    if not CPU_KERNELS[kind] or not _on_x86() or not _x86_has_avx2():
        return {}
    return dict(CPU_KERNELS[kind])


def _on_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def _x86_has_avx2() -> bool:
    """Whether this x86-64 CPU has AVX2 and FMA, what ATen's AVX2 kernels need (Linux's
    /proc/cpuinfo; elsewhere assumed, as on every x86-64 Mac and PC since 2013)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), None)
    return flags is None or {"avx2", "fma"} <= set(flags)


def set_cpu_kernels(kind: str) -> None:
    """Put ``cpu_kernels: kind``'s variables in this process's environment (and so its children's).
    Call it before torch is imported; after, torch may have fixed its kernels already, which is
    logged (not an error: a library caller's process keeps working, only its last bits may differ)."""
    env = cpu_kernel_env(kind)
    log = logging.getLogger("qshift.runtime")
    if CPU_KERNELS[kind] and not env and _on_x86():  # asked for, and only the CPU's flags refused it
        log.warning(f"cpu_kernels: {kind} needs a CPU with AVX2 and FMA, which this one lacks; torch picks "
                    f"its own kernels, so the numbers match only CPUs like this one")
    changed = [k for k, v in env.items() if os.environ.get(k) != v]
    os.environ.update(env)
    if changed and "torch" in sys.modules:
        log.warning(
            f"cpu_kernels: {kind} set after torch was imported in this process ({', '.join(changed)}); "
            f"it holds for new processes, this one may keep its own kernels")


def cpu_capability() -> str | None:
    """The vectorised code path ATen runs (AVX2, AVX512, ...), for a result's provenance."""
    import torch

    try:
        return torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        return None


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
        "cpu_kernels": cpu_capability(),
    }
