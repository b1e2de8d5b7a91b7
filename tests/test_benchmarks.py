"""benchmarks/pipeline_cost.py on a synthetic finished run, and benchmarks/gpu.py on CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import pipeline_cost  # noqa: E402

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _bench(root: Path, rel: str, seconds: float, rss, cpu: float | None = None) -> None:
    p = root / "logs/benchmarks" / f"{rel}.tsv"
    p.parent.mkdir(parents=True, exist_ok=True)
    cpu = seconds if cpu is None else cpu
    p.write_text(HEADER + f"{seconds}\t0:00:{int(seconds):02d}\t{rss}\t1\t1\t1\t0\t0\t50\t{cpu}\n")


def _log(root: Path, rel: str, start: str, end: str, cpu: float | None = None) -> None:
    from qshift.cli import CPU_LINE

    p = root / "logs" / f"{rel}.log"
    p.parent.mkdir(parents=True, exist_ok=True)
    closing = f"2026-12-01 10:{end} INFO qshift.stage: {CPU_LINE.format(cpu=cpu, rss=300)}\n" if cpu else ""
    p.write_text(f"2026-12-01 10:{start} INFO qshift.stage: start\nsome progress line\n"
                 f"2026-12-01 10:{end} INFO qshift.stage: done\n" + closing)


def _result(root: Path, rel: str, seconds: float) -> None:
    ds, model, direction, method = rel.split("/")[:4]
    cell = rel.split("/")[-1]
    corruption, sev = cell.rsplit("-s", 1)
    p = root / "results" / f"{rel}.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({"key": {"dataset": ds, "model": model, "direction": direction, "method": method,
                                     "corruption": corruption, "severity": int(sev)},
                             "timing": {"seconds": seconds, "queries_per_s": 1.0}}))


@pytest.fixture
def run(tmp_path):
    """prepare 10 s, pretrain 100 s on two threads (180 CPU s) (benchmark files); 4 adapt jobs: source 5 s wall / 1 s
    adapting, tcr 14 s / 10 s on the same two cells; one tcr job has only its log (12 s span)."""
    root = tmp_path
    (root / "params.yaml").write_text(yaml.safe_dump({"adapt": {"steps": 3}}))
    _bench(root, "prepare/builtin", 10.0, 300.5)
    _log(root, "prepare/builtin", "00:00,000", "00:09,000", cpu=9.5)  # the stage's own CPU line
    _bench(root, "pretrain/m", 100.0, 900.0, cpu=180.0)
    _log(root, "pretrain/m", "00:10,000", "01:50,000")
    for method, wall, sec in (("source", 5.0, 1.0), ("tcr", 14.0, 10.0)):
        for cell in ("clean-s0", "gaussian_noise-s3"):
            rel = f"builtin/m/i2t/{method}/{cell}"
            _result(root, rel, sec)
            if (method, cell) == ("tcr", "gaussian_noise-s3"):
                _log(root, f"adapt/{rel}", "02:00,000", "02:12,000")  # no benchmark file
            else:
                _bench(root, f"adapt/{rel}", wall, 450.0)
    _bench(root, "adapt/builtin/m/t2i/tent/ocr-s2", 3.0, 400.0)  # killed job: no results file
    return root


def test_budget_figures(run):
    b = pipeline_cost.budget(run, steps=3)
    assert b["n_jobs"] == 7
    assert b["stages"]["pretrain"]["wall"] == 100.0 and b["stages"]["prepare"]["rss"] == 300.5
    assert b["stages"]["adapt"]["from"] == ["benchmark", "log"]
    a = b["adapt"]
    assert a["jobs"] == 4 and a["missing_results"] == 1
    assert a["wall"] == pytest.approx(5 + 5 + 14 + 12) and a["adapt"] == pytest.approx(22.0)
    assert a["overhead"] == pytest.approx((36 - 22) / 36)
    tcr, src = b["methods"]["tcr"], b["methods"]["source"]
    assert src["x_source"] == 1.0 and src["x_floor"] == 1.0
    assert tcr["x_source"] == pytest.approx(10.0) and tcr["floor"] == 9.0
    assert tcr["x_floor"] == pytest.approx(10 / 9)
    assert b["peak_rss"] == 900.0
    assert b["elapsed"] == pytest.approx(132.0)  # 10:00:00 -> 10:02:12
    assert b["stages"]["pretrain"]["cpu"] == 180.0


def test_budget_work_bound(run):
    """The run's CPU work over the cores: no schedule beats it, and the elapsed time against it is
    the scheduling's efficiency. A job's CPU seconds: its log's closing line (prepare: 9.5), else
    the larger of the benchmark's sampled cpu_time and the wall time (the job with only a log: 12)."""
    r = pipeline_cost.budget(run, steps=3, cores=2)["run"]
    work = 9.5 + 180 + (5 + 5 + 14) + 12 + 3
    assert r["cpu_work"] == pytest.approx(work) and r["no_cpu_time"] == 6 and r["cores"] == 2
    assert r["bound"] == pytest.approx(work / 2) and r["efficiency"] == pytest.approx(work / 2 / 132)
    assert pipeline_cost.budget(run, steps=3, cores=4)["run"]["bound"] == pytest.approx(work / 4)


def test_budget_cli_prints_the_tables(run):
    out = subprocess.run([sys.executable, str(REPO / "benchmarks/pipeline_cost.py"), "--root", str(run), "--cores", "2", "--json"],
                         capture_output=True, text=True, check=True).stdout
    assert "1. per stage (7 jobs)" in out
    assert "overhead 38.9 %" in out  # (36 - 22) / 36
    assert "CPU work 228.5 core-s" in out and "on 2 cores no schedule finishes under 114.2 s" in out
    line = next(x for x in out.splitlines() if x.startswith("tcr "))
    assert line.split()[1:6] == ["2", "20.0", "10.00", "9", "1.11"]
    assert json.loads(out.strip().splitlines()[-1])["adapt"]["jobs"] == 4


def test_budget_of_job_level_adapt_jobs(tmp_path):
    """An adapt job per (method, direction, seed): its wall time against the sum of its cells."""
    root = tmp_path
    for method, wall, secs in (("source", 4.0, (1.0, 1.0)), ("tcr", 25.0, (10.0, 12.0))):
        _bench(root, f"adapt/builtin/m/i2t/{method}/seed42", wall, 500.0)
        for cell, sec in zip(("clean-s0", "gaussian_noise-s3"), secs):
            _result(root, f"builtin/m/i2t/{method}/seed42/{cell}", sec)
    b = pipeline_cost.budget(root, steps=3)
    a = b["adapt"]
    assert (a["jobs"], a["cells"], a["missing_results"]) == (2, 4, 0)
    assert a["wall"] == pytest.approx(29.0) and a["adapt"] == pytest.approx(24.0)
    assert a["overhead"] == pytest.approx(5 / 29)
    assert b["methods"]["tcr"]["cells"] == 2 and b["methods"]["tcr"]["x_source"] == pytest.approx(11.0)


def test_budget_of_direction_level_adapt_jobs(tmp_path):
    """An adapt job per (direction, seed) running every method (params adapt_jobs: direction):
    its wall time against the cells of every method's folder of that seed."""
    root = tmp_path
    _bench(root, "adapt/builtin/m/i2t/seed42", 30.0, 500.0)
    for method, secs in (("source", (1.0, 1.0)), ("tcr", (10.0, 12.0))):
        for cell, sec in zip(("clean-s0", "gaussian_noise-s3"), secs):
            _result(root, f"builtin/m/i2t/{method}/seed42/{cell}", sec)
    _result(root, "builtin/m/i2t/tcr/seed7/clean-s0", 50.0)  # another seed's job: not this one's
    a = pipeline_cost.budget(root, steps=3)["adapt"]
    assert (a["jobs"], a["cells"], a["missing_results"]) == (1, 4, 0)
    assert a["wall"] == pytest.approx(30.0) and a["adapt"] == pytest.approx(24.0)
    assert a["overhead"] == pytest.approx(6 / 30)


def test_budget_of_an_empty_folder_and_of_single_line_logs(tmp_path, capsys):
    pipeline_cost.main(["--root", str(tmp_path)])
    assert "no finished jobs found" in capsys.readouterr().out
    _log(tmp_path, "prepare/builtin", "00:00,000", "00:00,000")  # one instant: no wall time
    b = pipeline_cost.main(["--root", str(tmp_path)])
    assert b["n_jobs"] == 0 and b["untimed"] == {"jobs": 1, "stages": ["prepare"]}
    assert "1 jobs have no wall time" in capsys.readouterr().out


def test_gpu_benchmark_runs_on_cpu(tmp_path):
    """The CUDA benchmark's CPU path: the same tables, from a tiny random CLIP and 12 scenes."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["pretrain"].update(embed_dim=32, vision={"image_size": 32, "patch_size": 8, "width": 32, "layers": 1,
                                                    "heads": 2},
                              text={"context_length": 40, "width": 32, "layers": 1, "heads": 2})
    params["datasets"]["builtin"]["image_size"] = 32
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [sys.executable, str(REPO / "benchmarks/gpu.py"), "--params", str(tmp_path / "params.yaml"),
           "--device", "cpu", "--n", "12", "--batch-size", "8", "--adapt-batch-size", "4",
           "--methods", "source,tent"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=tmp_path,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"}).stdout
    assert "1. gallery encoding" in out and "plain open_clip" in out
    rows = {x.split()[0]: x.split() for x in out.splitlines() if x.split() and x.split()[0] in ("image", "text")}
    assert set(rows) == {"image", "text"}
    assert all(float(r[3]) > 0 for r in rows.values())  # QShift / plain ratio measured
    doc = json.loads(out.strip().splitlines()[-1])
    assert doc["n_images"] == 12 and doc["n_captions"] == 60 and doc["memory"] == "peak RSS MiB"
    assert set(doc["adapt"]) == {"source", "tent"}
    assert doc["adapt"]["tent"]["fp32"]["queries_per_s"] > 0 and "bf16" not in doc["adapt"]["tent"]
    tent_row = next(x for x in out.splitlines() if x.startswith("tent "))
    assert "n/a" in tent_row  # no bf16 autocast on CPU


def test_loader_pins_memory_only_for_a_cuda_model(tmp_path):
    import torch

    from _tiny import TinyDual
    from qshift.data.manifest import Split
    from qshift.gallery import make_loader

    split = Split(dataset="x", manifest=tmp_path, image_ids=[0], image_paths=[tmp_path / "a.png"], sentids=[0],
                  captions=["a red ball"], txt2img=[0])
    model = TinyDual()
    assert make_loader(model, "image", split, num_workers=0).pin_memory is False
    model.device = torch.device("cuda")  # never moved: only the loader's setting is read
    loader = make_loader(model, "image", split, num_workers=2)
    assert loader.pin_memory is True and loader.num_workers == 2


def test_pretrain_speed_benchmark_prints_its_seven_variants(tmp_path):
    """benchmarks/pretrain_speed.py on a tiny configuration: seven rows (full/trimmed text x
    fp32/fast matmul, then trimmed text with the fused AdamW, with Muon and with Muon's iteration
    in bf16, each projected over its recipe's steps), the first the reference, every time measured."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["pretrain"].update(embed_dim=32, batch_size=8, vision={"image_size": 32, "patch_size": 8, "width": 32,
                                                                  "layers": 1, "heads": 2},
                              text={"context_length": 40, "width": 32, "layers": 1, "heads": 2})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [sys.executable, str(REPO / "benchmarks/pretrain_speed.py"), "--params", str(tmp_path / "params.yaml"),
           "--steps", "2", "--warmup", "1", "--threads", "1", "--adamw-steps", "5", "--muon-steps", "7"]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    text = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=tmp_path, env=env).stdout
    assert "pretraining step cost on cpu (1 threads), batch 8" in text
    doc = json.loads(subprocess.run(cmd + ["--json"], capture_output=True, text=True, check=True, cwd=tmp_path,
                                    env=env).stdout)
    rows = doc["rows"]
    assert [r["text"] for r in rows] == ["full context", "trimmed", "full context", "trimmed"] + ["trimmed"] * 3
    assert [r["optimizer"] for r in rows] == ["adamw"] * 4 + ["fused", "muon", "muon-bf16"]
    assert [r["steps"] for r in rows] == [5] * 5 + [7, 7]
    assert rows[0]["matmul"] == rows[1]["matmul"] == "fp32" and rows[0]["speedup"] == 1.0
    assert rows[3]["matmul"] == "fp32"  # fast on the CPU
    assert all(r["s_per_step"] > 0 and r["train_s"] == round(r["s_per_step"] * r["steps"], 1) for r in rows)


def test_cpu_kernels_benchmark_trains_under_each_choice(tmp_path):
    """benchmarks/cpu_kernels.py on a tiny configuration: one row per cpu_kernels choice, each from
    its own interpreter (avx2 runs ATen's AVX2 kernels where the CPU has them), the weights' digest
    the same on a second run (so equal digests across machines mean equal bits, not luck)."""
    from test_cpu_kernels import _has_avx2

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["pretrain"].update(embed_dim=32, vision={"image_size": 32, "patch_size": 8, "width": 32,
                                                    "layers": 1, "heads": 2},
                              text={"context_length": 40, "width": 32, "layers": 1, "heads": 2})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [sys.executable, str(REPO / "benchmarks/cpu_kernels.py"), "--params", str(tmp_path / "params.yaml"),
           "--steps", "2", "--batch-size", "8", "--threads", "1"]
    text = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert "2 pretraining steps of batch 8 on 1 threads" in text and "sha256" in text
    runs = [json.loads(subprocess.run(cmd + ["--json"], capture_output=True, text=True, check=True,
                                      cwd=tmp_path).stdout) for _ in range(2)]
    rows = runs[0]["rows"]
    assert [r["cpu_kernels"] for r in rows] == ["avx2", "native"]
    assert all(r["s_per_step"] > 0 and len(r["sha256"]) == 64 for r in rows)
    if _has_avx2():
        assert rows[0]["capability"] == "AVX2"
    assert [r["sha256"] for r in runs[1]["rows"]] == [r["sha256"] for r in rows]
    assert runs[0]["same_bits"] == (rows[0]["sha256"] == rows[1]["sha256"])


def test_a_stage_logs_its_cpu_seconds_last(tmp_path):
    """qshift.cli.run closes the stage's log with the CPU seconds of the process and its children,
    in the form benchmarks/pipeline_cost.py reads (a busy child's seconds are counted)."""
    import logging
    import multiprocessing as mp
    import resource

    from qshift import cli

    log_path = tmp_path / "logs/stage/x.log"

    def stage():
        cli.start_log(str(log_path)).info("working")
        p = mp.get_context("fork").Process(target=_spin, args=(0.3,))
        p.start()
        p.join()

    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # this test process's earlier subprocesses
    try:
        cli.run(stage)
    finally:
        for h in list(logging.getLogger().handlers):
            if isinstance(h, logging.FileHandler) and h.baseFilename == str(log_path):
                logging.getLogger().removeHandler(h)
                h.close()
    own = resource.getrusage(resource.RUSAGE_SELF)
    last = log_path.read_text().splitlines()[-1]
    cpu = float(pipeline_cost.CPU_LOGGED.search(last).group(1))
    earlier = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    assert cpu - earlier >= 0.25 and "peak RSS" in last  # the child's 0.3 s


def _spin(seconds: float) -> None:
    import time

    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
