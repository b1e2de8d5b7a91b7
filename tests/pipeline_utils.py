"""Helpers for the end-to-end tests: a throw-away copy of the repository with a tiny config."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout.split("\n")
    return [f for f in out if f and not f.startswith("tests/") and (REPO / f).is_file()]


def tiny_params(params: dict) -> dict:
    """The default params with a tiny benchmark and a short pre-training."""
    p = yaml.safe_load(yaml.safe_dump(params))
    p["datasets"]["builtin"].update(n_train=600, n_val=20, n_test=120)
    p["pretrain"].update(steps=30, warmup=5, batch_size=64)
    p["corrupt"]["image"]["names"] = ["gaussian_noise", "defocus_blur"]
    p["corrupt"]["text"]["names"] = ["ocr"]
    p["adapt"]["methods"] = ["source", "tcr"]
    p["adapt"]["clean_methods"] = ["source", "tcr"]
    # one stream of each kind per direction where the tiny grid has the domains, run by tcr only
    p["streams"] = {"methods": ["tcr"],
                    "image": {"mix": {"kind": "mixed", "corruptions": ["gaussian_noise", "defocus_blur"],
                                      "severities": [3]},
                              "seq": {"kind": "sequential", "corruptions": ["gaussian_noise", "defocus_blur"],
                                      "severities": [3]}},
                    "text": {"tseq": {"kind": "sequential", "corruptions": ["ocr", "char_swap"], "levels": [2]}}}
    p["threads"] = 1
    return p


def make_repo(dest: Path) -> Path:
    """Copy the working tree (without tests and outputs) to ``dest`` as a fresh git repository."""
    for f in tracked_files():
        target = dest / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, target)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    (dest / "params.yaml").write_text(yaml.safe_dump(tiny_params(params), sort_keys=False))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(git + ["add", "-A"], cwd=dest, check=True)
    subprocess.run(git + ["commit", "-qm", "test"], cwd=dest, check=True)
    return dest


def env() -> dict:
    e = dict(os.environ)
    e["PATH"] = f"{BIN}{os.pathsep}{e['PATH']}"
    e["PYTHONPATH"] = str(REPO / "src")  # the code under test, whatever the venv has installed
    e["QSHIFT_PROGRESS"] = "0"
    e.pop("MLFLOW_TRACKING_URI", None)
    return e


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-8000:]}")
    return proc


def dry_run_commands(dest: Path, params: dict, script: str = r"corrupt_\w+") -> tuple[set[str], str]:
    """(the stage commands of `script` a whole-grid Snakemake dry run lists, its output) for a
    repository at ``dest`` with ``params``."""
    import re

    import yaml

    repo = make_repo(dest)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(["snakemake", "--dry-run", "--forceall", "--printshellcmds"], repo).stdout
    found = re.findall(rf"^Shell command: (python stages/{script}\.py .+)$", out, re.M)
    return {" ".join(c.split()) for c in found}, out
