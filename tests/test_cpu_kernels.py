"""params cpu_kernels: torch's CPU libraries pinned to their AVX2 paths before torch loads (the same
bits on an AVX-512 CPU as on an AVX2 one), set by every stage process in qshift.cli.load."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qshift.config import load_params
from qshift.errors import ConfigError
from qshift.runtime import CPU_KERNELS, cpu_kernel_env, provenance, set_cpu_kernels

REPO = Path(__file__).resolve().parent.parent
PINNED = CPU_KERNELS["avx2"]


def _has_avx2() -> bool:
    """An x86-64 CPU with AVX2 and FMA: where ``cpu_kernels: avx2`` sets its variables."""
    return bool(cpu_kernel_env("avx2"))


def _python(code: str) -> dict:
    """Run ``code`` in a fresh interpreter whose environment has none of the pinned variables; it
    prints one JSON line."""
    env = {k: v for k, v in os.environ.items() if k not in PINNED}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


REPORT = ("import json, os, torch; from qshift.runtime import provenance; "
          "print(json.dumps({'cap': torch.backends.cpu.get_cpu_capability(), "
          "'env': {k: os.environ.get(k) for k in %r}, 'prov': provenance('cpu')['cpu_kernels']}))" % list(PINNED))


@pytest.mark.skipif(not _has_avx2(), reason="the avx2 kernels need an x86-64 CPU with AVX2")
def test_a_stage_process_runs_the_avx2_kernels_params_yaml_asks_for():
    # what every stage does first: cli.load reads params.yaml (cpu_kernels: avx2) before torch is imported
    got = _python("import argparse; from qshift import cli; "
                  "cli.load(argparse.Namespace(params='params.yaml', overrides=[])); " + REPORT)
    assert load_params(REPO / "params.yaml")["cpu_kernels"] == "avx2"
    assert got["cap"] == "AVX2" and got["prov"] == "AVX2"  # ATen's vectorised kernels, as results record
    assert got["env"] == PINNED  # MKL's AVX2 reproducibility branch and oneDNN's ISA cap, for children too


@pytest.mark.skipif(not _has_avx2(), reason="the avx2 kernels need an x86-64 CPU with AVX2")
def test_native_leaves_torch_its_own_choice():
    plain = _python(REPORT)
    native = _python("import argparse; from qshift import cli; "
                     "cli.load(argparse.Namespace(params='params.yaml', overrides=['cpu_kernels=native'])); "
                     + REPORT)
    assert native == plain  # e.g. AVX512 on an AVX-512 CPU, and no variable set
    assert native["env"] == {k: None for k in PINNED}


def test_an_unknown_choice_fails_before_any_work_and_names_the_valid_ones():
    with pytest.raises(ConfigError, match=r"cpu_kernels is 'avx512'; valid: avx2, native"):
        load_params(REPO / "params.yaml", ["cpu_kernels=avx512"])
    with pytest.raises(ConfigError, match="valid: avx2, native"):
        cpu_kernel_env("fast")


def test_setting_them_after_torch_is_imported_says_so(monkeypatch, caplog):
    import torch  # noqa: F401 - this process has torch loaded, as a library caller's may

    for k in PINNED:
        monkeypatch.delenv(k, raising=False)
    with caplog.at_level(logging.WARNING, logger="qshift.runtime"):
        set_cpu_kernels("avx2")
    expected = _has_avx2()  # nothing to set off x86-64 or without AVX2
    assert ("set after torch was imported" in caplog.text) == expected
    assert {k: os.environ.get(k) for k in PINNED} == (PINNED if expected else {k: None for k in PINNED})
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="qshift.runtime"):
        set_cpu_kernels("avx2")  # already in place: nothing changed, nothing to say
    assert caplog.text == ""
    assert "cpu_kernels" in provenance("cpu")


# the smallest arguments each stage parses before it reads its params
STAGE_ARGS = {"adapt": ["--method", "tent", "--direction", "i2t"],
              "corrupt_images": ["--corruption", "gaussian_noise", "--severity", "3"],
              "corrupt_stream": ["--direction", "i2t", "--stream", "mixed"],
              "corrupt_text": ["--corruption", "ocr", "--level", "2"],
              "corrupt_va": ["--side", "video"], "tune": ["--method", "tent"]}


def test_every_stage_reads_its_params_before_it_imports_torch():
    """The variables hold only if set before torch loads: each stage's cli.load must come first
    (encode_gallery once imported the model code above it and ran the CPU's own kernels)."""
    stages = sorted(p.stem for p in (REPO / "stages").glob("*.py") if p.stem != "__init__")
    probe = ("import json, runpy, sys; from qshift import cli; real = cli.load\n"
             "def load(args):\n"
             "    print(json.dumps({'torch_before_load': 'torch' in sys.modules})); sys.exit(0)\n"
             "cli.load = load\n"
             "sys.argv = [sys.argv[1]] + sys.argv[2:]\n"
             "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    early = {}
    for stage in stages:
        out = subprocess.run([sys.executable, "-c", probe, f"stages/{stage}.py", *STAGE_ARGS.get(stage, [])],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and out.stdout.strip(), f"{stage}: {out.stderr[-2000:]}"
        early[stage] = json.loads(out.stdout.strip().splitlines()[-1])["torch_before_load"]
    assert len(early) >= 12
    assert [s for s, before in early.items() if before] == []


def test_a_cpu_without_avx2_gets_no_avx2_request_and_a_warning(monkeypatch, caplog, tmp_path):
    """ATen takes ATEN_CPU_CAPABILITY=avx2 on trust (it does not check the CPU), so on a CPU without
    AVX2 the request would crash the first vectorised kernel: nothing is set there, and it says so."""
    import qshift.runtime as runtime

    monkeypatch.setattr(runtime.platform, "machine", lambda: "x86_64")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse sse2 avx f16c\n")  # an Ivy Bridge: AVX, no AVX2
    real_path = runtime.Path
    monkeypatch.setattr(runtime, "Path", lambda p: cpuinfo if str(p) == "/proc/cpuinfo" else real_path(p))
    assert runtime.cpu_kernel_env("avx2") == {}
    for k in PINNED:
        monkeypatch.delenv(k, raising=False)
    with caplog.at_level(logging.WARNING, logger="qshift.runtime"):
        set_cpu_kernels("avx2")
    assert "needs a CPU with AVX2 and FMA" in caplog.text
    assert {k: os.environ.get(k) for k in PINNED} == {k: None for k in PINNED}
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse sse2 avx fma avx2 f16c\n")
    assert runtime.cpu_kernel_env("avx2") == PINNED
