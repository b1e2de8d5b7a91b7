"""The torch-free method catalog (qshift.method_catalog): what the Snakefile's parameter checks
read of the TTA methods, cached so a dry run or no-op rerun does not import torch."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from qshift import method_catalog as mc
from qshift.errors import UnknownNameError

REPO = Path(__file__).resolve().parents[1]


def _as_data(reg) -> list:
    return [(n, repr(reg.get(n).defaults), bool(reg.get(n).adapts)) for n in reg.names()]


def test_catalog_round_trip_equals_the_live_registry(tmp_path, monkeypatch):
    from qshift.tta import METHODS

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = mc.catalog_path()
    assert tmp_path in path.parents and not path.exists()
    mc._write(path, METHODS)
    cached = mc._read(path)
    assert cached is not None and cached is not METHODS
    assert _as_data(cached) == _as_data(METHODS)  # names, every default with its type, adapts
    assert {"tcr", "tent", "rest", "source"} <= set(cached.names()) and not cached.get("source").adapts
    with pytest.raises(UnknownNameError, match="valid choices: .*tcr"):
        cached.get("tcrr")
    # a process that has imported qshift.tta gets the live classes, cache or not
    assert mc.registered_methods() is METHODS


def test_key_follows_every_method_source(tmp_path):
    pkg = tmp_path / "tta"
    shutil.copytree(mc.PACKAGE, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    key = mc.catalog_key(pkg)
    assert key == mc.catalog_key(mc.PACKAGE)
    tent = pkg / "tent.py"
    tent.write_text(tent.read_text().replace('"tau": 0.01}', '"tau": 0.02}'))
    assert mc.catalog_key(pkg) != key  # an edited default makes a new key: the catalog is rebuilt
    tent.write_text(tent.read_text().replace('"tau": 0.02}', '"tau": 0.01}'))
    assert mc.catalog_key(pkg) == key
    (pkg / "mine.py").write_text("# a new method file\n")
    assert mc.catalog_key(pkg) != key


def test_bad_or_inexact_caches_are_not_used(tmp_path):
    path = tmp_path / "c.json"
    for text in ("{not json", json.dumps({"format": mc.FORMAT}), json.dumps({"format": 0, "methods": []}),
                 json.dumps({"format": mc.FORMAT, "methods": [{"name": "x"}]})):
        path.write_text(text)
        assert mc._read(path) is None  # rebuilt from qshift.tta, never a half catalog
    assert mc._read(tmp_path / "absent.json") is None

    class Live:
        def __init__(self, defaults):
            self.spec = mc.MethodSpec("m", defaults)

        def names(self):
            return ["m"]

        def get(self, name):
            return self.spec

    for inexact in ({"betas": (0.9, 0.999)}, {"x": float("nan")}, {"x": {1: 2}}):
        mc._write(path := tmp_path / "inexact.json", Live(inexact))
        assert not path.exists()  # JSON would not give it back as it is: not cached
    mc._write(path, Live({"lr": 1e-3, "topk": 1, "on": True, "mode": "a", "none": None, "grid": [1, 2.0]}))
    assert repr(mc._read(path).get("m").defaults) == repr({"lr": 1e-3, "topk": 1, "on": True, "mode": "a",
                                                           "none": None, "grid": [1, 2.0]})
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:  # an unwritable cache: no catalog, no error
        mc._write(ro / "sub" / "c.json", Live({"lr": 1e-3}))
    finally:
        ro.chmod(0o700)


# Snakemake's own entry point, in a process where any `import torch` raises ImportError
SNAKEMAKE_WITHOUT_TORCH = ("import sys; sys.modules['torch'] = None; from snakemake.cli import main; "
                           "sys.argv = ['snakemake'] + sys.argv[1:]; main()")


def test_snakemake_plans_without_torch_once_cached(tmp_path, monkeypatch):
    """What the Snakefile does on every invocation (load, validate and resolve params, plan the
    DAG) imports no torch once the catalog is cached, for every task — image-text, composed image
    retrieval (its planning half: qshift.cir_plan) and video-audio (qshift.va_plan): a dry run, a
    no-op rerun and each SLURM job's own Snakemake save the ~2 s torch import. The first (cold) call
    builds the catalog from qshift.tta."""
    from pipeline_utils import make_repo, run

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    repo = make_repo(tmp_path / "repo")
    dry = [sys.executable, "-c", SNAKEMAKE_WITHOUT_TORCH, "--dry-run", "--forceall", "--cores", "1"]
    cold = run(dry, repo, check=False)
    assert cold.returncode != 0 and "torch" in cold.stdout + cold.stderr  # no catalog yet: it needs qshift.tta
    run([sys.executable, "-c", "from qshift.method_catalog import registered_methods as r; r()"], repo)
    assert (tmp_path / "cache" / "qshift" / "method-catalog" / f"{mc.catalog_key()}.json").is_file()
    for preset, job in (("builtin", "adapt_"), ("coco-c", "adapt_"), ("flickr-c", "adapt_"),
                        ("builtin-cir", "adapt_cir"), ("builtin-va", "adapt_v2a")):
        out = run(dry + ["--config", f"benchmark={preset}"], repo).stdout
        assert job in out and "pretrain" in out, (preset, out[-2000:])
