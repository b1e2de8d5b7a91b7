"""End-to-end: the real pipeline through Snakemake and through DVC on a tiny configuration.

These run the actual stage CLIs (data generation, pre-training, corruption, gallery
encoding, TCR adaptation, MLflow logging, report) in a throw-away copy of the repository.
"""

from __future__ import annotations

import copy
import json
import re
import time
from pathlib import Path

import pytest
import yaml

from pipeline_utils import make_repo, run

pytestmark = pytest.mark.pipeline


def expected_results(repo: Path) -> list[Path]:
    from qshift.config import load_params, runs

    cfg = load_params(repo / "params.yaml")
    return [repo / r.result_path for r in runs(cfg)]


def planned_jobs(repo: Path, *extra: str) -> dict[str, int]:
    """Rule -> job count of what `snakemake --dry-run` would run."""
    out = run(["snakemake", "--cores", "2", "--dry-run", *extra], repo).stdout
    if "Nothing to be done" in out:
        return {}
    table = out[out.index("Job stats:"):]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^([\w-]+)\s+(\d+)\s*$", table, re.M)
            if m.group(1) != "total"}


def adapt_jobs(cfg: dict, method=None, direction=None, seed=None) -> dict[str, int]:
    """{rule: jobs} of the adapt jobs holding the grid's cells of (method, direction, seed):
    rule adapt_<direction> per (direction, seed) under params adapt_jobs: direction (every
    method in one job), adapt_<direction>_<method> per (method, direction, seed) under method."""
    from qshift.config import runs

    per_direction = cfg.get("adapt_jobs", "method") == "direction"
    jobs = {(f"adapt_{d}" if per_direction else f"adapt_{d}_{m}", s) for m, d, s in
            {(r.method, r.direction, r.seed) for r in runs(cfg)}
            if (method in (None, m)) and (direction in (None, d)) and (seed in (None, s))}
    out: dict[str, int] = {}
    for rule, _ in jobs:
        out[rule] = out.get(rule, 0) + 1
    return out


@pytest.fixture(scope="module")
def snake_repo(tmp_path_factory):
    repo = make_repo(tmp_path_factory.mktemp("snake"))
    run(["snakemake", "--cores", "2"], repo)
    return repo


def test_snakemake_runs_everything(snake_repo):
    results = expected_results(snake_repo)
    # 2 methods x (clean + cells) per direction, and tcr on 2 image streams and 1 text stream
    assert len(results) == 2 * (1 + 2) + 2 * (1 + 1) + 3
    for path in results:
        doc = json.loads(path.read_text())
        assert set(doc["metrics"]) == {"R@1", "R@5", "R@10"}
        if doc["key"]["corruption"] in ("mix", "seq", "tseq"):
            by = doc["metrics_by_domain"]
            assert sum(v["n_queries"] for v in by.values()) == doc["n_queries"]
            assert len(doc["online"]["domain"]) == len(doc["online"]["batch_r1"])
            if doc["stream"]["kind"] == "sequential":  # the domains arrive in blocks, in the listed order
                assert list(dict.fromkeys(doc["online"]["domain"])) == doc["stream"]["domains"]
        assert doc["n_queries"] == (120 if doc["key"]["direction"] == "i2t" else 600)
        assert len(doc["online"]["batch_r1"]) == -(-doc["n_queries"] // 64)
        assert doc["mlflow"]["logged"], doc["mlflow"]
        assert doc["env"]["git_commit"]
    report = (snake_repo / "reports/report.md").read_text()
    assert "| tcr |" in report and "| source |" in report
    assert "Every run of the grid finished." in report
    for fig in ("i2t_r1.png", "i2t_online.png", "t2i_r1.png", "t2i_online.png"):
        assert (snake_repo / "reports/figures" / fig).stat().st_size > 1000
    summary = json.loads((snake_repo / "reports/summary.json").read_text())
    assert summary["directions"]["i2t"]["tcr"]["avg_r1"] is not None
    assert "### Streams — i2t" in report and "### Streams — t2i" in report
    assert summary["streams"]["i2t"]["mix"]["methods"]["tcr"]["alone_r1"] is not None
    assert (snake_repo / "reports/figures/i2t_forgetting.png").stat().st_size > 1000
    assert (snake_repo / "reports/figures/t2i_forgetting.png").stat().st_size > 1000
    # the observations section: the source model's statistics per shift, angles for tcr (observe.grad_angle)
    assert "## Observations (TCR / REST)" in report and "Before adaptation (`source`):" in report
    obs = json.loads((snake_repo / "reports/observations.json").read_text())
    assert obs["directions"]["i2t"]["source"]["clean"]["uniformity"] > 0 and not obs["without"]
    assert obs["directions"]["i2t"]["methods"]["tcr"]["gaussian_noise-s3"]["angle"]["n"] >= 1
    assert obs["mlflow"]["logged"] == len(expected_results(snake_repo))


def test_runs_are_tracked_in_mlflow(snake_repo):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{snake_repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("qshift-builtin")
    found = client.search_runs([exp.experiment_id], filter_string="tags.`qshift.role` = 'run'", max_results=1000)
    keys = {r.data.tags["qshift.run_key"] for r in found}
    assert len(found) == len(expected_results(snake_repo)) == len(keys)
    parents = client.search_runs([exp.experiment_id], filter_string="tags.`qshift.role` = 'sweep'")
    assert len(parents) == 1
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in found)
    some = next(r for r in found if r.data.tags["qshift.run_key"].endswith("/i2t/tcr/clean-s0/seed42"))
    assert {"R_at_1", "R_at_5", "R_at_10"} <= set(some.data.metrics)
    assert some.data.params["hp.tau"] == "0.02"
    assert some.data.tags["qshift.git_commit"] and some.data.tags["qshift.params_hash"]
    history = client.get_metric_history(some.info.run_id, "online.batch_r1")
    assert len(history) == 2  # 120 queries in batches of 64


def test_rerun_does_nothing_and_is_fast(snake_repo):
    t0 = time.perf_counter()
    assert planned_jobs(snake_repo) == {}
    out = run(["snakemake", "--cores", "2"], snake_repo).stdout + ""
    assert time.perf_counter() - t0 < 60  # generous; the benchmark script prints the real figure
    assert "Nothing to be done" in out or "Nothing to be done" in run(["snakemake", "-n"], snake_repo).stdout


def test_deleting_a_result_reruns_only_that_cell_and_the_report(snake_repo):
    from qshift.config import load_params

    root = snake_repo / "results/builtin/qshift-tiny-clip"
    victim = root / "i2t/tcr/seed42/gaussian_noise-s3.json"
    before_victim = json.loads(victim.read_text())
    # the other cells of the victim's job (i2t, seed 42: tcr's and, with adapt_jobs: direction, every
    # method's) and a cell of another job (t2i)
    assert load_params(snake_repo / "params.yaml")["adapt_jobs"] == "direction"  # params.yaml's default
    siblings = [p for p in (root / "i2t/tcr/seed42").iterdir() if p.name != victim.name] + \
        [root / "i2t/source/seed42/gaussian_noise-s3.json"] + sorted((root / "t2i/source/seed42").glob("*.json"))[:1]
    before = {p: p.read_bytes() for p in siblings}
    other_mtime = siblings[-1].stat().st_mtime_ns
    victim.unlink()
    assert planned_jobs(snake_repo) == {"adapt_i2t": 1, "observe": 1, "report": 1, "all": 1}
    run(["snakemake", "--cores", "2"], snake_repo)
    # the job ran its one missing cell: the others were up to date (qshift.cells) and kept as they
    # were (byte for byte: Snakemake touches a finished job's outputs), the other job's not even touched
    assert {p: p.read_bytes() for p in siblings} == before and siblings[-1].stat().st_mtime_ns == other_mtime
    log = (snake_repo / "logs/adapt/builtin/qshift-tiny-clip/i2t/seed42.log").read_text()  # the direction's job
    assert "5 cells, 4 up to date, 1 to run" in log and "3 cells, 3 up to date, 0 to run" in log, log  # tcr; source
    after = json.loads(victim.read_text())
    assert after["metrics"] == before_victim["metrics"] and after["fingerprint"] == before_victim["fingerprint"]
    assert after["online"]["batch_r1"] == before_victim["online"]["batch_r1"]
    assert planned_jobs(snake_repo) == {}


@pytest.mark.parametrize("override", [["methods={tcr: {lr: 3.0e-4}}"], ["set=methods.tcr.lr=3.0e-4"],
                                      ["seed=42", "set=adapt.steps=3"]])
def test_a_no_op_override_reruns_nothing(snake_repo, override):
    assert planned_jobs(snake_repo, "--config", *override) == {}


def test_an_override_reruns_exactly_the_jobs_that_read_it(snake_repo):
    from qshift.config import load_params, runs

    cfg = load_params(snake_repo / "params.yaml", ["methods.tcr.lr=1e-3"])
    n_tcr = sum(r.method == "tcr" for r in runs(cfg))
    downstream = {"report": 1, "observe": 1, "all": 1}  # what reads every results file
    tune = {"tune": 1}  # tcr's own tune job (one per method)
    assert n_tcr and planned_jobs(snake_repo, "--config", "set=methods.tcr.lr=1e-3") == {
        **adapt_jobs(cfg, method="tcr"), **tune, **downstream}
    # the jobs read the resolved file (same typed values as the stage CLI would resolve)
    resolved = sorted((snake_repo / ".snakemake" / "qshift").glob("params-*.yaml"))
    assert any(load_params(p)["methods"]["tcr"].get("lr") == pytest.approx(1e-3) for p in resolved)  # others: none
    # a new severity: only its corruption and adapt jobs (and the report)
    # (each method's i2t job reruns; inside it only the new cells run: test_deleting_a_result_...)
    n_images = len(cfg["corrupt"]["image"]["names"])
    assert planned_jobs(snake_repo, "--config", "set=corrupt.image.severities=[3,5]") == {
        "corrupt_images": n_images, **adapt_jobs(cfg, direction="i2t"), **downstream}
    # the YAML form keeps types (Snakemake reads nested values as strings)
    assert planned_jobs(snake_repo, "--config", "adapt={batch_size: 64}") == {}


def test_a_new_seed_runs_only_its_adapt_jobs_and_coexists(snake_repo):
    from mlflow.tracking import MlflowClient

    from qshift.config import load_params, runs

    cfg = load_params(snake_repo / "params.yaml", ["seeds=[42,7]"])
    new = [r for r in runs(cfg) if r.seed == 7]
    assert new and len(new) == len(list(runs(cfg, [42])))
    # adding a seed: that seed's adapt jobs, the observations and the report; no data, model or tune job
    assert planned_jobs(snake_repo, "--config", "seeds=[42, 7]") == {**adapt_jobs(cfg, seed=7), "observe": 1,
                                                                      "report": 1, "all": 1}
    # run one of them: it lands beside seed 42's file, which stays as it was
    target = next(r for r in new if r.method == "tcr" and r.direction == "i2t" and r.corruption == "gaussian_noise")
    seed42 = snake_repo / target.result_path.replace("/seed7/", "/seed42/")
    before = seed42.read_bytes()
    run(["snakemake", "--cores", "1", "--config", "seeds=[42, 7]", "--", target.result_path], snake_repo)
    a, b = json.loads(seed42.read_text()), json.loads((snake_repo / target.result_path).read_text())
    assert seed42.read_bytes() == before and a["key"]["seed"] == 42 and b["key"]["seed"] == 7
    assert b["run"]["seed"] == 7 and b["run_key"].endswith("/gaussian_noise-s3/seed7")
    assert a["online"]["batch_r1"] != b["online"]["batch_r1"] or a["metrics"] == b["metrics"]  # another order
    client = MlflowClient(tracking_uri=f"sqlite:///{snake_repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("qshift-builtin")
    keys = {r.data.tags["qshift.run_key"]: r.info.run_name for r in client.search_runs(
        [exp.experiment_id], filter_string="tags.`qshift.role` = 'run'", max_results=1000)}
    assert keys[a["run_key"]] == "tcr · i2t · gaussian_noise s3 · seed 42"
    assert keys[b["run_key"]] == "tcr · i2t · gaussian_noise s3 · seed 7"
    # back to the default list: nothing to do (seed 7's file is simply not part of that grid)
    assert planned_jobs(snake_repo) == {}


def test_seed_corruptions_draws_the_new_seeds_query_sets_only(snake_repo):
    from qshift.config import load_params, query_cells, runs, streams

    over = ["seeds=[42, 7]", "seed_corruptions=true"]
    cfg = load_params(snake_repo / "params.yaml", over)
    n_img, n_txt = (len([c for c in query_cells(cfg, d) if c[0] != "clean"]) for d in ("i2t", "t2i"))
    planned = planned_jobs(snake_repo, "--config", *over)
    # seed 7's own draws of every query set and stream, its adapt jobs, the report; seed 42 untouched
    assert planned == {"corrupt_images_drawn": n_img, "corrupt_text_drawn": n_txt,
                       "corrupt_stream_image_drawn": len(streams(cfg, "i2t")),
                       "corrupt_stream_text_drawn": len(streams(cfg, "t2i")),
                       **adapt_jobs(cfg, seed=7), "observe": 1, "report": 1, "all": 1}
    target = next(r for r in runs(cfg) if r.seed == 7 and r.direction == "t2i" and r.method == "source"
                  and r.corruption == "ocr")
    run(["snakemake", "--cores", "1", "--config", *over, "--", target.result_path], snake_repo)
    drawn = snake_repo / "data/queries/builtin/text-seed7/ocr-s2.json"
    std = json.loads((snake_repo / "data/queries/builtin/text/ocr-s2.json").read_text())
    new = json.loads(drawn.read_text())
    assert new["meta"]["draw_seed"] == 7 and "draw_seed" not in std["meta"]
    caps = lambda d: [s["raw"] for im in d["images"] for s in im["sentences"]]  # noqa: E731
    assert caps(new) != caps(std) and len(caps(new)) == len(caps(std))
    a = json.loads((snake_repo / target.result_path.replace("/seed7/", "/seed42/")).read_text())
    b = json.loads((snake_repo / target.result_path).read_text())
    assert a["n_queries"] == b["n_queries"] and b["key"]["seed"] == 7


def test_same_seed_same_metrics_across_orchestrators(snake_repo, dvc_repo):
    for path in expected_results(snake_repo):
        a = json.loads(path.read_text())
        b = json.loads((dvc_repo / path.relative_to(snake_repo)).read_text())
        assert a["metrics"] == b["metrics"], path
        assert a["online"]["batch_r1"] == b["online"]["batch_r1"], path


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory):
    repo = make_repo(tmp_path_factory.mktemp("dvc"))
    run(["dvc", "repro"], repo)
    return repo


def test_dvc_repro_runs_everything_and_then_nothing(dvc_repo):
    for path in expected_results(dvc_repo):
        assert path.is_file(), path
    assert (dvc_repo / "reports/report.md").is_file()
    status = run(["dvc", "status"], dvc_repo).stdout
    assert "up to date" in status, status
    again = run(["dvc", "repro"], dvc_repo).stdout
    assert "didn't change, skipping" in again and "Running stage" not in again


def _dvc_changed(repo: Path) -> set[str]:
    """The stages `dvc status` reports as changed (deps, params or outs)."""
    out = run(["dvc", "status", "--json"], repo).stdout
    return {name.split(":")[-1] for name in json.loads(out or "{}")}


def test_dvc_reruns_exactly_the_stages_that_read_a_changed_key(dvc_repo):
    """The stage table's parameter keys, under DVC: a method's value reruns that method's tune and
    adapt stages; a new severity its corruption stages, the i2t adapt stages and the report; nothing
    touches pretrain; the same file again changes nothing. An edit to evaluation.py: every tune and adapt stage."""
    path = dvc_repo / "params.yaml"
    original = path.read_text()
    params = yaml.safe_load(original)
    seeds = params.get("seeds") or [params["seed"]]
    try:
        changed = copy.deepcopy(params)
        changed["methods"]["tcr"] = {**(changed["methods"]["tcr"] or {}), "lr": 1.0e-3}
        path.write_text(yaml.safe_dump(changed, sort_keys=False))
        assert _dvc_changed(dvc_repo) == {"tune@tcr", *(f"adapt_{d}@tcr-{s}" for d in ("i2t", "t2i") for s in seeds)}
        path.write_text(yaml.safe_dump(params, sort_keys=False))  # the same values, rewritten
        assert _dvc_changed(dvc_repo) == set()
        changed = copy.deepcopy(params)
        changed["corrupt"]["image"]["severities"] = params["corrupt"]["image"]["severities"] + [5]
        path.write_text(yaml.safe_dump(changed, sort_keys=False))
        got = _dvc_changed(dvc_repo)
        new = {f"corrupt_images@{c}-5" for c in params["corrupt"]["image"]["names"]}
        i2t = {f"adapt_i2t@{m}-{s}" for m in params["adapt"]["methods"] for s in seeds}
        assert got == new | i2t | {"report"}, got
    finally:
        path.write_text(original)
    assert _dvc_changed(dvc_repo) == set()
    # an edit to the code every cell's result runs through (R@K: qshift.cells.CODE) reruns every tune and
    # adapt stage, and nothing else
    code = dvc_repo / "src/qshift/evaluation.py"
    text = code.read_text()
    try:
        code.write_text(text + "\n# an edit\n")
        methods = params["adapt"]["methods"]
        assert _dvc_changed(dvc_repo) == {*(f"tune@{m}" for m in methods),
                                          *(f"adapt_{d}@{m}-{s}" for d in ("i2t", "t2i") for m in methods for s in seeds)}
    finally:
        code.write_text(text)
    assert _dvc_changed(dvc_repo) == set()


def snakemake_stages(repo: Path) -> set[tuple[str, frozenset]]:
    """(command, outputs) of every job Snakemake would run for the whole grid (its dry run)."""
    out = run(["snakemake", "--dry-run", "--forceall", "--printshellcmds"], repo).stdout
    stages = set()
    for block in re.split(r"\n\s*\n", out):
        outputs = re.search(r"^\s+output: (.+)$", block, re.M)
        cmd = re.search(r"^Shell command: (.+)$", block, re.M)
        if outputs and cmd:
            # an adapt job's results files: DVC's out is their folder (results/.../<method>/seed<N>)
            outs = {re.sub(r"^(results/.+/seed\d+)/[^/]+\.(json|npz)$", r"\1", o.strip().removesuffix(" (update)"))
                    for o in outputs.group(1).split(",")}
            stages.add((" ".join(cmd.group(1).split()), frozenset(outs)))
    return stages


def dvc_stages(repo: Path) -> set[tuple[str, frozenset]]:
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc:
        return {(" ".join(s.cmd.split()), frozenset(str(o.def_path) for o in s.outs)) for s in dvc.index.stages}


def _per_method(repo: Path) -> None:
    """params adapt_jobs: method — Snakemake's adapt jobs as DVC's adapt stages (one per method)."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump({**params, "adapt_jobs": "method"}, sort_keys=False))


def _cells(stages: set) -> set[str]:
    return {o for _, outs in stages for o in outs if o.startswith("results/")}


def test_snakemake_and_dvc_describe_the_same_dag(tmp_path):
    repo = make_repo(tmp_path)
    # params.yaml's default adapt_jobs: direction groups every method of a direction in one job:
    # the same commands for every other stage and the same results folders as DVC's per-method stages
    snake, dvc = snakemake_stages(repo), dvc_stages(repo)
    adapt = lambda st: {s for s in st if s[0].startswith("python stages/adapt.py")}  # noqa: E731
    assert snake - adapt(snake) == dvc - adapt(dvc) and _cells(adapt(snake)) == _cells(adapt(dvc))
    assert {c for c, _ in adapt(snake)} == {"python stages/adapt.py --method source,tcr --direction i2t --seed 42",
                                           "python stages/adapt.py --method source,tcr --direction t2i --seed 42"}
    _per_method(repo)  # one job per method: the very same DAG
    snake, dvc = snakemake_stages(repo), dvc_stages(repo)
    assert snake == dvc, f"only in Snakemake: {sorted(snake - dvc)}\nonly in DVC: {sorted(dvc - snake)}"
    # and with the default params too (the full default grid)
    (repo / "params.yaml").write_text((Path(__file__).parents[1] / "params.yaml").read_text())
    _per_method(repo)
    assert snakemake_stages(repo) == dvc_stages(repo)


def test_snakemake_config_override_reaches_the_stages(tmp_path):
    from qshift.config import load_params

    repo = make_repo(tmp_path)
    out = run(["snakemake", "--dry-run", "--printshellcmds", "--forceall", "--config", "seed=7",
               "set=adapt.batch_size=32 methods.tcr.lr=1e-3"], repo).stdout
    assert "python stages/prepare.py\n" in out  # job commands do not carry the overrides
    (resolved,) = (repo / ".snakemake" / "qshift").glob("params-*.yaml")
    cfg = load_params(resolved)
    assert (cfg["seed"], cfg["adapt"]["batch_size"], cfg["methods"]["tcr"]["lr"]) == (7, 32, 1e-3)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["seed"] == 42  # the file stays the single source; the override is explicit
    # a stage started by Snakemake reads it (QSHIFT_PARAMS); a bad dotted override fails at DAG time
    bad = run(["snakemake", "--dry-run", "--config", "set=adapt.batch_size=0"], repo, check=False)
    assert bad.returncode == 2 and "error: params: adapt.batch_size must be an integer >= 1, got 0" in bad.stderr


def test_the_sites_adapt_resources_reach_every_adapt_rule(tmp_path):
    """`set-resources: adapt: gpu_model: X` (slurm/config.yaml's site block) applies to every
    adapt_<direction>_<method> rule; other GPU rules keep their own."""
    repo = make_repo(tmp_path)
    out = run(["snakemake", "--dry-run", "--forceall", "--cores", "1", "--set-resources", "adapt:gpu_model='a100'"],
              repo).stdout
    blocks = [b for b in re.split(r"\n\s*\n", out) if re.search(r"^rule adapt_", b, re.M)]
    assert len(blocks) == 2 and all("gpu_model=a100" in b for b in blocks), blocks  # adapt_i2t, adapt_t2i
    out = run(["snakemake", "--dry-run", "--forceall", "--cores", "1", "--set-resources", "adapt:gpu_model='a100'",
               "--config", "adapt_jobs=method"], repo).stdout  # one rule per method x direction (the slurm profile)
    blocks = [b for b in re.split(r"\n\s*\n", out) if re.search(r"^rule adapt_", b, re.M)]
    assert len(blocks) == 4 and all("gpu_model=a100" in b for b in blocks), blocks
    enc = next(b for b in re.split(r"\n\s*\n", out) if re.search(r"^rule encode_gallery", b, re.M))
    assert "gpu_model=a100" not in enc


def test_both_orchestrators_run_method_variants_as_their_own_jobs(tmp_path):
    """Variants (methods.<name>: {method: BASE, ...}) are grid rows with '-' in their names: the
    Snakemake wildcards and DVC's matrix both take them, and the observe stage feeds the report."""
    repo = make_repo(tmp_path)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["adapt"]["methods"] = ["source", "tcr", "rest", "rest_no-decouple", "rest_k3"]
    params["adapt_jobs"] = "method"  # (the default, direction, runs them in one job per direction)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    snake, dvc = snakemake_stages(repo), dvc_stages(repo)
    assert snake == dvc, f"only in Snakemake: {sorted(snake - dvc)}\nonly in DVC: {sorted(dvc - snake)}"
    cmds = {cmd for cmd, _ in snake}
    assert "python stages/adapt.py --method rest_no-decouple --direction i2t --seed 42" in cmds
    assert "python stages/adapt.py --method rest_k3 --direction t2i --seed 42" in cmds
    assert ("python stages/observe.py", frozenset({"reports/observations.json"})) in snake


# -- what a researcher sees: DVC experiments, metrics and plots; Snakemake's report -----------------

def _exp_metrics(node, out, name=None):
    """(experiment name or rev, reports/metrics.json data, params.yaml data) of every row of `dvc exp show --json`."""
    if isinstance(node, list):
        for x in node:
            _exp_metrics(x, out, name)
    elif isinstance(node, dict):
        name = node.get("name") or node.get("rev") or name
        data = node.get("data")
        if isinstance(data, dict) and "metrics" in data:
            m = (data.get("metrics") or {}).get("reports/metrics.json", {}).get("data")
            p = (data.get("params") or {}).get("params.yaml", {}).get("data")
            out.append((name, m, p))
        for v in node.values():
            if isinstance(v, (list, dict)):
                _exp_metrics(v, out, name)
    return out


@pytest.mark.slow
def test_dvc_exp_run_then_exp_show_shows_the_changed_metric(dvc_repo):
    before = json.loads((dvc_repo / "reports/metrics.json").read_text())
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    run(git + ["add", "-A"], dvc_repo)  # dvc.lock, reports/metrics.json and reports/plots/ (tracked by git)
    run(git + ["commit", "-qm", "baseline"], dvc_repo)
    # `++`: the hyperparameter's default lives on the class, so the entry may not have the key yet
    out = run(["dvc", "exp", "run", "-S", "++methods.tcr.lr=1e-3"], dvc_repo).stdout
    assert "Running stage 'report'" in out and "Running stage 'pretrain'" not in out
    after = json.loads((dvc_repo / "reports/metrics.json").read_text())
    # the tiny model moves few queries: some tcr number changes (t2i clean did here), source's none
    assert {d: after[d]["tcr"] for d in after} != {d: before[d]["tcr"] for d in before}
    assert {d: after[d]["source"] for d in after} == {d: before[d]["source"] for d in before}
    rows = _exp_metrics(json.loads(run(["dvc", "exp", "show", "--json"], dvc_repo).stdout), [])
    lr = lambda p: (p or {}).get("methods", {}).get("tcr", {}).get("lr")  # noqa: E731
    assert any(n not in ("workspace", "master", "main") and lr(p) == 0.001 and m == after for n, m, p in rows), rows
    # the baseline commit: no lr in the file (tcr: {}), the class default ran
    assert any(lr(p) is None and m == before for _, m, p in rows), rows
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], dvc_repo).stdout)
    files = next(iter(shown.values()))["data"]
    assert "reports/summary.json" not in files  # strings and nulls stay out of DVC's metrics
    leaves = json.dumps(files["reports/metrics.json"]["data"])
    assert "null" not in leaves and '": "' not in leaves
    plots = json.loads(run(["dvc", "plots", "show", "--json"], dvc_repo).stdout)["data"]
    assert {"reports/plots/r1/i2t.json", "reports/plots/online/t2i.json"} <= set(plots), sorted(plots)
    # README: a forced rebuild of the report alone
    again = run(["dvc", "repro", "-s", "-f", "report"], dvc_repo).stdout
    assert re.findall(r"Running stage '([^']+)'", again) == ["report"], again


def test_snakemake_report_has_the_figures_and_tables(snake_repo):
    run(["snakemake", "--report", "report.html"], snake_repo)
    page = (snake_repo / "report.html").read_text(errors="replace")
    for name in ("i2t_r1.png", "t2i_online.png", "i2t_heatmap.png", "i2t_r1.csv", "report.md"):
        assert name in page, name


# -- DVC follows the benchmark switch: dvc.yaml rendered for the preset, the other tasks too -------

DRAWN = {"seeds": [42, 7], "seed_corruptions": True}


@pytest.mark.parametrize("benchmark,extra", [
    pytest.param("builtin-cir", {}, id="cir"), pytest.param("builtin-va", DRAWN, id="va-drawn"),
    pytest.param("coco-c", {}, id="coco-c", marks=pytest.mark.slow),
    pytest.param("builtin", DRAWN, id="drawn", marks=pytest.mark.slow)])
def test_dvc_yaml_rendered_for_a_preset_is_the_dag_snakemake_runs(tmp_path, benchmark, extra):
    """`python -m qshift.pipeline dvc` for another preset (its full grid; coco-c: a fetched BLIP and
    the preset's values written out; seed_corruptions: seed 7's own draws of every query set):
    the same commands and outputs as Snakemake's jobs."""
    import sys

    repo = make_repo(tmp_path)
    params = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump({**params, "benchmark": benchmark, "adapt_jobs": "method",
                                                      **extra}, sort_keys=False))
    out = run([sys.executable, "-m", "qshift.pipeline", "dvc"], repo).stdout
    assert f"benchmark '{benchmark}'" in out
    snake, dvc = snakemake_stages(repo), dvc_stages(repo)
    assert snake == dvc, f"only in Snakemake: {sorted(snake - dvc)}\nonly in DVC: {sorted(dvc - snake)}"
    assert any("--draw-seed 7" in cmd for cmd, _ in dvc) == bool(extra)
    assert run([sys.executable, "-m", "qshift.pipeline", "dvc", "--check"], repo).returncode == 0


def _other_task_repo(tmp_path: Path, task: str) -> Path:
    import sys

    from test_cir import tiny_cir_params
    from test_va import tiny_va_params

    repo = make_repo(tmp_path)
    params = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    tiny = (tiny_cir_params if task == "cir" else tiny_va_params)(params)
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny, sort_keys=False))
    run([sys.executable, "-m", "qshift.pipeline", "dvc"], repo)
    return repo


@pytest.mark.slow
@pytest.mark.pipeline
def test_dvc_repro_runs_the_video_audio_and_composed_tasks(tmp_path):
    """`dvc repro` on builtin-va and builtin-cir (tiny): every results file Snakemake's run makes
    (tests test_va / test_cir list them), then nothing to do; an edited preset stream reruns its
    stream stage and the adapt stages of its direction only."""
    from test_cir import TINY_CIR_RESULTS
    from test_va import TINY_VA_RESULTS

    va = _other_task_repo(tmp_path / "va", "va")
    run(["dvc", "repro"], va, timeout=900)
    res = va / "results/builtin-va/qshift-tiny-va"
    files = sorted(p.relative_to(res).as_posix() for p in res.rglob("*.json") if p.parent.name != "tuned")
    assert files == TINY_VA_RESULTS
    assert "Video-to-audio retrieval" in (va / "reports/report.md").read_text()
    assert _dvc_changed(va) == set()
    params = yaml.safe_load((va / "params.yaml").read_text())
    params["benchmarks"]["builtin-va"]["streams"]["video"]["in_clip"]["severities"] = [3]
    (va / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert _dvc_changed(va) == {"corrupt_stream_video@in_clip", "adapt_v2a@source-42", "adapt_v2a@tcr-42",
                                "observe", "report"}
    cir = _other_task_repo(tmp_path / "cir", "cir")
    run(["dvc", "repro"], cir, timeout=900)
    res = cir / "results/builtin-cir/qshift-tiny-cir/cir"
    files = sorted(p.relative_to(res).as_posix() for p in res.rglob("*.json"))
    assert files == TINY_CIR_RESULTS
    assert "Composed image retrieval" in (cir / "reports/report.md").read_text()
    assert _dvc_changed(cir) == set()
