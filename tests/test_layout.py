"""The snakemake-workflows layout: workflow/envs, workflow/schemas (checked by the Snakefile),
workflow/report, LICENSE."""

from __future__ import annotations

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
