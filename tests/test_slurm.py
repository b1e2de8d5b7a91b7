"""End-to-end on a real single-node SLURM cluster (tests/slurm_cluster.py).

One cluster for the module (2 CPUs, 8 GB, 2 fake GPUs) and one throw-away repository copy
with a tiny config, driven by ``snakemake --profile slurm`` exactly as a user types it (plus
a short first status-check delay, so the tests do not idle for the plugin's default 40 s):

* the whole pipeline runs as SLURM jobs, one adapt job per (method, direction, seed);
  every results file and MLflow run carries the SLURM job id, GPU jobs got their GPU;
* an adapt job cancelled mid-run (``scancel``) leaves no partial output, and a rerun does
  only the missing work (the job's finished cells are kept: keep-incomplete, update() outputs);
* an adapt job whose process is killed once (a crash, an OOM kill) succeeds on the retry
  the profile asks for — no test hook in the code under test;
* DVC adopts the Snakemake-on-SLURM outputs (``dvc commit -f``): ``dvc status`` is clean
  and ``dvc repro`` runs nothing.

Skipped with the reason when the SLURM/munge binaries or root are missing
(``bash scripts/system-deps.sh`` installs them).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from pipeline_utils import REPO, env, make_repo, run
from slurm_cluster import SlurmCluster, unavailable_reason

REASON = unavailable_reason()
# `pipeline` too: these are slow end-to-end runs, left out of `-m "not pipeline"` quick runs
pytestmark = [pytest.mark.slurm, pytest.mark.pipeline,
              pytest.mark.skipif(REASON is not None, reason=REASON or "")]

# the profile as typed by a user; the extra flag only shortens the plugin's first status poll
SNAKE = ["snakemake", "--profile", "slurm", "--slurm-init-seconds-before-status-checks", "2"]


def merged_profile(repo: Path = REPO) -> dict:
    """The settings `snakemake --profile slurm` ends up with: Snakemake applies the workflow
    profile (workflow/profiles/default) after ./slurm, and the later profile wins a key."""
    user = yaml.safe_load((repo / "slurm/config.yaml").read_text())
    default = repo / "workflow/profiles/default/config.yaml"
    return {**user, **(yaml.safe_load(default.read_text()) or {} if default.is_file() else {})}




# ---------------------------------------------------------------------------- helpers
def results(repo: Path) -> list[Path]:
    from qshift.config import load_params, runs

    return [repo / r.result_path for r in runs(load_params(repo / "params.yaml"))]


def squeue(fmt: str = "JobID,State,Comment:200") -> list[dict]:
    """Every job the controller remembers (MinJobAge=600 keeps finished ones)."""
    fields = fmt.split(",")
    spec = ",".join(f + "|" if ":" in f else f + ":|" for f in fields)  # '|' after each field
    out = subprocess.run(["squeue", "-h", "-t", "all", "-O", spec], capture_output=True, text=True,
                         check=True).stdout
    keys = [f.split(":")[0] for f in fields]
    return [dict(zip(keys, (v.strip() for v in line.split("|")))) for line in out.splitlines() if line.strip()]


def job_ids() -> set[int]:
    return {int(j["JobID"]) for j in squeue()}


def stage_pids(repo: Path, *words: str) -> list[int]:
    """Processes running `stages/adapt.py` with these arguments in ``repo`` — only the pipeline
    under test (other test sessions on this machine may run the same stage elsewhere)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            cwd = Path(os.readlink(proc / "cwd"))
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv if a]
        if (cwd == repo.resolve() and len(args) >= 2 and Path(args[0]).name.startswith("python")
                and args[1] == "stages/adapt.py" and all(w in args for w in words)):
            pids.append(int(proc.name))
    return pids


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"snakemake ended ({proc.returncode}) before {what}:\n{out[-3000:]}\n{err[-5000:]}")
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def start(cmd: list[str], repo: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=repo, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
        raise AssertionError(f"snakemake did not finish within {timeout} s:\n{err[-5000:]}")
    return proc.returncode, out + err


def planned(repo: Path) -> dict[str, int]:
    out = run(SNAKE + ["--dry-run"], repo).stdout
    if "Nothing to be done" in out:
        return {}
    table = out[out.index("Job stats:"):]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^([\w-]+)\s+(\d+)\s*$", table, re.M)
            if m.group(1) != "total"}


def no_partial_files(repo: Path) -> list[Path]:
    """Hidden temporaries of the atomic writers, or results that do not parse."""
    bad = [p for p in (repo / "results").rglob(".*")]
    for p in (repo / "results").rglob("*.json"):
        try:
            json.loads(p.read_text())
        except ValueError:
            bad.append(p)
    return bad


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with SlurmCluster(tmp_path_factory.mktemp("slurm-cluster")) as c:
        yield c


@pytest.fixture(scope="module")
def slurm_repo(cluster, tmp_path_factory):
    """The tiny config slimmed to one method, one image and one text corruption (two adapt jobs:
    tcr on i2t, tcr on t2i), run once through `snakemake --profile slurm`."""
    repo = make_repo(tmp_path_factory.mktemp("slurm-repo"))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["corrupt"]["image"]["names"] = ["gaussian_noise"]
    params["corrupt"]["text"]["names"] = ["ocr"]
    params["adapt"]["methods"] = ["tcr"]
    params["streams"] = {"methods": [], "image": {}, "text": {}}  # streams have their own tests
    params["adapt"]["clean_methods"] = []  # (Snakemake and DVC disagree on clean runs of unlisted methods)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "slim"], cwd=repo,
                   check=True)
    before = job_ids()
    t0 = time.perf_counter()
    run(SNAKE, repo, timeout=600)
    return repo, {"seconds": time.perf_counter() - t0, "jobs": job_ids() - before}


# ---------------------------------------------------------------------------- tests
def test_profile_is_where_snakemake_looks_and_names_the_site_block():
    text = (REPO / "slurm/config.yaml").read_text()
    assert "SITE SETTINGS" in text and text.index("SITE SETTINGS") < text.index("executor:")
    prof = merged_profile()
    assert prof["executor"] == "slurm"
    assert prof["default-resources"]["slurm_partition"]
    assert prof["slurm-status-command"] == "squeue" and prof["slurm-no-account"] is True
    # adapt jobs are not bundled (each runs all cells of its method x direction x seed), and a
    # failed job keeps the cells it finished
    assert "group-components" not in prof and prof["keep-incomplete"] is True
    assert "adapt_jobs=method" in prof["config"]  # one adapt job per method x direction x seed: parallel GPU jobs


def test_profile_retries_survive_the_workflow_profile():
    # the workflow profile (workflow/profiles/default) is applied last: it must not reset retries
    assert merged_profile()["retries"] >= 1


def test_pipeline_runs_as_slurm_jobs(slurm_repo, cluster):
    repo, info = slurm_repo
    jobs = {int(j["JobID"]): j for j in squeue("JobID,State,Comment:200,tres-per-job") if int(j["JobID"]) in info["jobs"]}
    assert jobs and all(j["State"] == "COMPLETED" for j in jobs.values()), jobs
    comments = [j["Comment"] for j in jobs.values()]
    for rule in ("prepare", "pretrain", "corrupt_images", "corrupt_text", "encode_gallery", "observe", "report"):
        assert any(c.startswith(f"rule_{rule}") for c in comments), (rule, comments)

    # every run: a results file from a SLURM job, on a GPU, tracked in MLflow with the job id
    files = results(repo)
    assert len(files) >= 2 and all(p.is_file() for p in files)
    adapt_jobs = set()
    for path in files:
        doc = json.loads(path.read_text())
        job = doc["env"]["slurm_job_id"]
        assert job and int(job) in jobs, (path, job)
        assert doc["env"]["cuda_visible_devices"] not in (None, ""), path
        assert doc["mlflow"]["logged"], doc["mlflow"]
        adapt_jobs.add(int(job))
    # one SLURM job per (method, direction, seed), its cells inside, one GPU each
    from qshift.config import load_params, runs

    grid = {(r.method, r.direction, r.seed) for r in runs(load_params(repo / "params.yaml"))}
    assert len(adapt_jobs) == len(grid) == 2, adapt_jobs
    for j in adapt_jobs:
        assert jobs[j]["tres-per-job"] == "gres:gpu:1", jobs[j]
    encode = next(j for j in jobs.values() if j["Comment"].startswith("rule_encode_gallery"))
    assert encode["tres-per-job"] == "gres:gpu:1", encode
    detail = subprocess.run(["scontrol", "show", "job", "-d", encode["JobID"]], capture_output=True, text=True).stdout
    assert "JOB_GRES=gpu:fake:1" in detail, detail

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    found = [r for r in client.search_runs([client.get_experiment_by_name("qshift-builtin").experiment_id],
                                           max_results=1000) if "qshift.run_key" in r.data.tags]
    assert len(found) == len(files)
    for r in found:
        assert int(r.data.tags["qshift.slurm_job_id"]) in adapt_jobs, r.data.tags
        assert r.data.tags.get("qshift.cuda_visible_devices") is not None

    assert "Every run of the grid finished." in (repo / "reports/report.md").read_text()
    assert planned(repo) == {}  # a rerun does nothing
    print(f"\n[slurm] pipeline via snakemake --profile slurm: {info['seconds']:.0f} s, {len(jobs)} SLURM jobs")


# The fault tests share one victim: the first cancels its job mid-run; the second reruns the
# whole pipeline, kills the victim's stage process once and expects the retry to finish it.
VICTIM = "results/builtin/qshift-tiny-clip/t2i/tcr/seed42/ocr-s2.json"
VICTIM_LOG = "logs/adapt/builtin/qshift-tiny-clip/t2i/tcr/seed42.log"  # the job's log (tcr, t2i, seed 42)
VICTIM_ARGS = ("--method", "tcr", "--direction", "t2i")
_state: dict = {}


def test_scancel_mid_run_leaves_no_partial_output(slurm_repo, cluster):
    repo, _ = slurm_repo
    victim, log = repo / VICTIM, repo / VICTIM_LOG
    _state["others"] = {p: p.stat().st_mtime_ns for p in results(repo) if p != victim}
    victim.unlink()
    log.unlink()
    before = job_ids()
    proc = start(SNAKE + ["--retries", "0", VICTIM], repo)
    try:
        def running_job():
            new = [j for j in squeue() if int(j["JobID"]) not in before and j["State"] == "RUNNING"]
            return new[0]["JobID"] if new and log.exists() else None  # the stage is past its imports

        job = wait_for(running_job, 180, "the adapt job to run", proc)
        subprocess.run(["scancel", job], check=True)
        code, out = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code != 0, out
    assert {j["JobID"]: j["State"] for j in squeue()}[job] == "CANCELLED"
    assert not victim.exists()
    assert no_partial_files(repo) == []
    # what a rerun would do: exactly the cancelled run and the observe + report jobs that read it
    assert planned(repo) == {"adapt_t2i_tcr": 1, "observe": 1, "report": 1, "all": 1}
    _state["cancelled"] = job


def catch_up(repo: Path) -> None:
    """Finish what a skipped or failed fault test left undone (plain rerun of the profile)."""
    if planned(repo):
        run(SNAKE, repo)


def test_rerun_does_only_the_missing_work_and_retries_a_job_killed_once(slurm_repo, cluster):
    repo, _ = slurm_repo
    if "cancelled" not in _state:
        pytest.skip("needs the state test_scancel_mid_run_leaves_no_partial_output leaves behind")
    victim, log = repo / VICTIM, repo / VICTIM_LOG
    before = job_ids()
    proc = start(SNAKE, repo)  # the profile as is: retries included
    try:
        pid = wait_for(lambda: log.exists() and (stage_pids(repo, *VICTIM_ARGS) or [None])[0], 180,
                       "the adapt stage", proc)
        os.kill(pid, signal.SIGKILL)  # the job's stage process dies once (a crash, an OOM kill)
        code, out = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, out
    new = sorted((int(j["JobID"]), j["State"], j["Comment"]) for j in squeue() if int(j["JobID"]) not in before)
    assert [(s, c.split("_")[1]) for _, s, c in new] == [("FAILED", "adapt"), ("COMPLETED", "adapt"),
                                                       ("COMPLETED", "observe"), ("COMPLETED", "report")], new
    doc = json.loads(victim.read_text())
    assert int(doc["env"]["slurm_job_id"]) == new[1][0] and doc["metrics"]["R@1"] >= 0
    assert {p: p.stat().st_mtime_ns for p in _state["others"]} == _state["others"]  # nothing else redone
    assert no_partial_files(repo) == []
    assert planned(repo) == {}


def test_dvc_adopts_the_slurm_outputs(slurm_repo):
    repo, _ = slurm_repo
    catch_up(repo)
    run(["dvc", "commit", "-f"], repo)
    status = run(["dvc", "status"], repo).stdout
    assert "up to date" in status, status
    again = run(["dvc", "repro"], repo).stdout
    assert "Running stage" not in again and "didn't change, skipping" in again, again


@pytest.mark.slow
@pytest.mark.parametrize("task", ["video-audio", "cir"])
def test_the_other_tasks_run_as_slurm_jobs(cluster, tmp_path, task):
    """The built-in video-audio and CIR benchmarks (tiny) through `snakemake --profile slurm`: each
    task's own corruption rules and its adapt jobs as SLURM jobs (one per method x direction, a GPU
    each), every results file from one of them; a rerun does nothing."""
    from test_cir import tiny_cir_params
    from test_va import tiny_va_params

    from qshift.config import load_params, runs

    tiny, rules, directions, n_files, heading = {
        "video-audio": (tiny_va_params, ("corrupt_video", "corrupt_audio", "pretrain", "encode_gallery", "report"),
                        {"v2a", "a2v"}, 7, "Video-to-audio retrieval"),
        "cir": (tiny_cir_params, ("corrupt_images", "corrupt_text", "corrupt_stream_cir", "pretrain",
                                  "encode_gallery", "tune", "report"), {"cir"}, 9, "Composed image retrieval")}[task]
    repo = make_repo(tmp_path)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny(params), sort_keys=False))
    before = job_ids()
    run(SNAKE, repo, timeout=900)
    jobs = {int(j["JobID"]): j for j in squeue("JobID,State,Comment:200,tres-per-job") if int(j["JobID"]) not in before}
    assert jobs and all(j["State"] == "COMPLETED" for j in jobs.values()), jobs
    comments = [j["Comment"] for j in jobs.values()]
    for rule in rules:
        assert any(c.startswith(f"rule_{rule}") for c in comments), (rule, comments)
    cfg = load_params(repo / "params.yaml")
    grid = {(r.method, r.direction) for r in runs(cfg)}
    assert {d for _, d in grid} == directions
    adapt = {j: v for j, v in jobs.items() if v["Comment"].startswith("rule_adapt_")}
    assert sorted(v["Comment"].split("_wildcards")[0] for v in adapt.values()) == sorted(
        f"rule_adapt_{d}_{m}" for m, d in grid), comments
    assert all(v["tres-per-job"] == "gres:gpu:1" for v in adapt.values()), adapt
    files = [repo / r.result_path for r in runs(cfg)]
    assert len(files) == n_files
    for path in files:
        doc = json.loads(path.read_text())
        assert doc["status"] == "ok" and int(doc["env"]["slurm_job_id"]) in adapt, path
    assert heading in (repo / "reports/report.md").read_text()
    assert planned(repo) == {}
