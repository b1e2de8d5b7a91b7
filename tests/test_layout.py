"""The snakemake-workflows layout: workflow/envs, workflow/schemas (checked by the Snakefile),
workflow/report, LICENSE."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline_utils import make_repo, run

REPO = Path(__file__).resolve().parents[1]


def test_license_is_mit_as_pyproject_says():
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License") and "QShift contributors" in text
    assert 'license = { text = "MIT" }' in (REPO / "pyproject.toml").read_text()


def test_rule_env_matches_environment_yml():
    root = yaml.safe_load((REPO / "environment.yml").read_text())
    rules = yaml.safe_load((REPO / "workflow/envs/qshift.yaml").read_text())
    assert rules["channels"] == root["channels"]
    strip = lambda deps: [d if isinstance(d, str) else {"pip": [x.replace("../../", "").replace("../..", ".")
                                                                  for x in d["pip"]]} for d in deps]  # noqa: E731
    assert strip(rules["dependencies"]) == root["dependencies"]
    for smk in (REPO / "workflow/rules").glob("*.smk"):
        assert "environment.yml" not in smk.read_text()


def test_params_yaml_matches_the_schema_and_a_wrong_type_does_not():
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    schema = str(REPO / "workflow/schemas/config.schema.yaml")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    validate(params, schema, set_default=False)
    params["adapt"]["batch_size"] = "64"
    with pytest.raises(WorkflowError):
        validate(params, schema, set_default=False)


def test_snakefile_stops_on_a_schema_error_with_one_line(tmp_path):
    repo = make_repo(tmp_path)
    proc = run(["snakemake", "--dry-run", "--config", "amp=maybe"], repo, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert len(line) == 1 and "amp" in line[0] and "'maybe'" in line[0], proc.stderr[-2000:]
    # nested values arrive as strings from Snakemake: checked after they are typed (no false alarm)
    assert run(["snakemake", "--dry-run", "--config", "adapt={batch_size: 64}"], repo).returncode == 0


# -- the stage table (src/qshift/pipeline.py): one definition for both orchestrators -------------

def test_dvc_yaml_is_generated_from_the_stage_table():
    """dvc.yaml is the stage table rendered; a hand edit (or a table change without regenerating)
    fails here with the command that fixes it."""
    from qshift import pipeline
    from qshift.config import read_raw_params

    assert (REPO / "dvc.yaml").read_text() == pipeline.render_dvc(read_raw_params(REPO / "params.yaml")), \
        "dvc.yaml is stale: regenerate it with `python -m qshift.pipeline dvc`"
    proc = subprocess.run([sys.executable, "-m", "qshift.pipeline", "dvc", "--check"], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("benchmark", ["builtin", "builtin-cir", "builtin-va"])
def test_dvc_deps_of_the_adapt_and_tune_stages_cover_what_a_cells_fingerprint_hashes(benchmark):
    """Every file a cell's fingerprint hashes (qshift.cells: the adapt code and the task's own files)
    is a DVC dep of the adapt stages and of tune (which runs the same loop on the validation split):
    an edit to e.g. evaluation.py, which changes every result, is one `dvc repro` sees."""
    from qshift import cells, pipeline, tasks
    from qshift.config import read_raw_params

    raw = {**read_raw_params(REPO / "params.yaml"), "benchmark": benchmark}
    stages = yaml.safe_load(pipeline.render_dvc(raw))["stages"]
    task = tasks.cfg_task(pipeline._Render.of(raw).resolved).name
    src = REPO / "src" / "qshift"
    hashed = [f for name in cells.CODE for f in ((src / name).rglob("*.py") if (src / name).is_dir() else [src / name])]
    hashed += [src / f for f in tasks.TASKS.get(task).hooks.get("code", ())]
    assert all(f.is_file() for f in hashed) and len(hashed) > len(cells.CODE)
    checked = [n for n in stages if n.startswith("adapt_") or n == "tune"]
    assert "tune" in checked and len(checked) >= 2
    for name in checked:
        deps = [REPO / d for d in stages[name]["deps"]]
        missing = [str(f.relative_to(REPO)) for f in hashed if not any(f == d or d in f.parents for d in deps)]
        assert not missing, f"dvc.yaml stage {name} ({benchmark}) lacks deps its cells' fingerprints hash: {missing}"


def test_dvc_check_fails_on_a_stale_file(tmp_path):
    stale = tmp_path / "dvc.yaml"
    stale.write_text((REPO / "dvc.yaml").read_text().replace("- adapt.steps\n", "", 1))
    proc = subprocess.run([sys.executable, "-m", "qshift.pipeline", "dvc", "--check", "--file", str(stale),
                           "--params", str(REPO / "params.yaml")],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert proc.returncode == 1 and "stale" in proc.stderr and "python -m qshift.pipeline dvc" in proc.stderr


def test_every_parameter_key_of_the_stage_table_exists_in_params_yaml():
    """A typo in a stage's key list would silently drop a rerun trigger from both orchestrators."""
    from qshift import pipeline
    from qshift.config import load_params

    cfgs = [load_params(REPO / "params.yaml", [f"benchmark={b}", *drawn])  # a pipeline of every stage's
            for b in ("builtin", "builtin-cir", "builtin-va", "coco-c")
            for drawn in ([], ["seeds=[42, 7]", "seed_corruptions=true"])]
    for name, stage in pipeline.STAGES.items():
        cfg = next(c for c in cfgs if stage.when is None or stage.when(c))
        for key in (*stage.params, *stage.grid):
            if key in pipeline.DERIVED:
                continue
            node = cfg
            for part in pipeline._fill(key, stage.context).split("."):
                assert isinstance(node, dict) and part in node, (stage.name, key)
                node = node[part]
        values = pipeline.param_values(cfg, name, method="tcr", stream="mix")
        assert set(values) == set(stage.params)


def test_a_method_variant_reruns_when_its_base_entry_changes():
    from qshift import pipeline
    from qshift.config import load_params

    cfg = load_params(REPO / "params.yaml")
    cfg["methods"]["tcr_fast"] = {"method": "tcr", "lr": 1e-3}
    before = pipeline.param_hash(cfg, "adapt_i2t", method="tcr_fast")
    cfg["methods"]["tcr"]["w_mu"] = 0.5
    assert pipeline.param_hash(cfg, "adapt_i2t", method="tcr_fast") != before
    assert pipeline.param_hash(cfg, "adapt_i2t", method="tent") == pipeline.param_hash(
        load_params(REPO / "params.yaml"), "adapt_i2t", method="tent")


def test_every_rule_takes_its_resources_from_the_stage_table(tmp_path):
    import re

    from qshift import pipeline

    repo = make_repo(tmp_path)
    out = run(["snakemake", "--dry-run", "--forceall", "--cores", "2"], repo).stdout
    seen = {}
    for block in re.split(r"\n\s*\n", out):
        rule, res = re.search(r"^(?:local)?rule (\w+):", block, re.M), re.search(r"resources: (.*)", block)
        if rule and res and rule[1] != "all":
            seen[rule[1]] = dict(kv.split("=", 1) for kv in res[1].split(", "))
            methods = re.search(r"stages/adapt\.py --method (\S+)", block)
            seen[rule[1]]["_methods"] = len(methods[1].split(",")) if methods else 1
    assert {"pretrain", "encode_gallery", "tune", "report", "adapt_i2t"} <= set(seen)
    assert seen["adapt_i2t"]["_methods"] == 2  # adapt_jobs: direction: source and tcr in one job
    for rule, res in seen.items():
        stage = re.sub(r"^(adapt_(?:i2t|t2i))_.*", r"\1", rule)
        for key, value in pipeline.resources(stage).items():
            # an adapt job's runtime: the stage's (one method's cells) per method it runs
            want = value * res["_methods"] if key == "runtime" and stage.startswith("adapt_") else value
            assert res[key] == str(want), (rule, key, res)


def test_every_rule_writes_a_log_and_a_benchmark_file():
    """benchmarks/pipeline_cost.py reads each job's wall time, CPU time and peak RSS from its
    rule's `benchmark:` file: a rule without one (tune and observe had none) drops out of the
    cost budget and the work bound."""
    import re

    missing, checked = [], set()
    for path in [REPO / "workflow/Snakefile", *sorted((REPO / "workflow/rules").glob("*.smk"))]:
        # each rule's block: from its `rule NAME:` / `rule:` line to the next rule (or the end)
        blocks = re.split(r"^\s*(?:local)?rule\b", path.read_text(), flags=re.M)[1:]
        for block in blocks:
            name = re.match(r"\s*(\w*)\s*:", block)[1] or re.search(r"name:\s*(.+)", block)[1].strip()
            if name == "all":
                continue
            checked.add(name)
            for directive in ("log:", "benchmark:"):
                if not re.search(rf"^\s+{directive}", block, re.M):
                    missing.append(f"{path.name}: rule {name} has no {directive}")
    assert not missing, missing
    assert {"prepare", "pretrain", "tune", "observe", "report", "encode_gallery"} <= checked and len(checked) >= 15
