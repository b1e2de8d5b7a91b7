"""Exports beside the report: DVC metrics (numbers only) and plots, CSV/LaTeX tables, and the
`qshift table` / `qshift compare` console script - on a hand-built grid of results files."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qshift import report, report_export
from qshift.console import main as console_main
from test_report import REPO, grid, make_doc, write_grid
from qshift.config import runs
from qshift.io import write_json


@pytest.fixture
def exported(tmp_path, monkeypatch):
    cfg = grid(severities=(3,), clean_methods=("source",))
    write_grid(cfg, tmp_path)
    monkeypatch.chdir(tmp_path)
    metrics = report_export.export(cfg, tmp_path / "reports")
    return tmp_path, cfg, metrics


def _leaves(d):
    for v in d.values():
        yield from (_leaves(v) if isinstance(v, dict) else [v])


def test_metrics_are_numbers_only_and_match_the_report_tables(exported):
    root, cfg, metrics = exported
    on_disk = json.loads((root / "reports/metrics.json").read_text())
    assert on_disk == metrics
    assert all(isinstance(v, float) for v in _leaves(on_disk))
    found, _ = report.collect(cfg)
    table = report.direction_table(cfg, "i2t", found)
    assert on_disk["i2t"]["tcr"]["avg_r1"] == pytest.approx(table["rows"]["tcr"]["Avg"])
    assert on_disk["i2t"]["tcr"]["r1"]["gaussian_noise"] == table["rows"]["tcr"]["gaussian_noise"]
    assert "clean_r1" in on_disk["i2t"]["source"] and "clean_r1" not in on_disk["i2t"]["tcr"]  # not run: absent


def test_plots_and_tables(exported):
    root, cfg, _ = exported
    r1 = json.loads((root / "reports/plots/r1/t2i.json").read_text())
    assert [r["method"] for r in r1] == ["source", "tcr"] and all("avg_r1" in r for r in r1)
    online = json.loads((root / "reports/plots/online/i2t.json").read_text())
    assert [r["queries"] for r in online] == [64, 128, 192, 256]
    assert set(online[0]) == {"queries", "source", "tcr"} and online[0]["tcr"] > online[0]["source"]
    rows = list(csv.reader(io.StringIO((root / "reports/tables/i2t_r1.csv").read_text())))
    assert rows[0] == ["method", "gaussian_noise", "defocus_blur", "contrast", "Avg", "Clean"]
    assert rows[2][0] == "tcr" and rows[2][-1] == ""  # tcr did not run on clean queries
    tex = (root / "reports/tables/i2t_r1.tex").read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex and "gaussian\\_noise" in tex
    found, _ = report.collect(cfg)
    assert f"{report.direction_table(cfg, 'i2t', found)['rows']['tcr']['Avg']:.1f}" in tex
    assert "+4.5" in (root / "reports/tables/i2t_delta_r1.tex").read_text()
    assert (root / "reports/tables/t2i_r10.csv").is_file()


def test_console_table_and_compare(exported, capsys, tmp_path_factory):
    root, cfg, _ = exported
    (root / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    console_main(["--params", "params.yaml", "table", "--direction", "i2t", "--latex"])
    out = capsys.readouterr().out
    assert "\\toprule" in out and "t2i" not in out.split("\\caption")[0]
    console_main(["--params", "params.yaml", "table", "--csv", "--metric", "R@5"])
    assert capsys.readouterr().out.count("method,") == 2
    with pytest.raises(SystemExit) as e:
        console_main(["--params", "params.yaml", "table", "--direction", "x2y"])
    assert e.value.code == 2 and "adapt.directions" in capsys.readouterr().err
    # B: tcr one point better on every i2t cell
    other = tmp_path_factory.mktemp("b")
    for run in runs(cfg):
        d = make_doc(run)
        if run.method == "tcr" and run.direction == "i2t":
            d["metrics"]["R@1"] += 1.0
        write_json(other / run.result_path, d)
    res = "results/builtin/qshift-tiny-clip"
    console_main(["compare", str(root / res), str(other / res)])
    out = capsys.readouterr().out
    assert "| i2t | tcr | 3 |" in out and out.count("+1.00") == 1  # the avg (tcr has no clean run here)
    assert "| i2t | source | 3 |" in out and "| t2i | tcr | 2 |" in out and "+1.00" not in out.split("| t2i |")[1]


def test_console_script_runs(exported):
    root, cfg, _ = exported
    (root / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run([sys.executable, "-c", "from qshift.cli import main; main()", "table", "--direction", "t2i"],
                         cwd=root, capture_output=True, text=True, env=env, check=True).stdout
    assert "| Method | OCR" in out or "| Method |" in out
    assert "tcr" in out
