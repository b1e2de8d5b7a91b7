"""params.yaml keeps its layout when DVC rewrites it (`dvc exp run -S` round-trips it through
DVC's own YAML loader/dumper)."""

from __future__ import annotations

import io
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _round_trip(text: str, change=None) -> str:
    from dvc.utils.serialize._yaml import _dump, parse_yaml_for_update

    data = parse_yaml_for_update(text, "params.yaml")
    if change:
        change(data)
    buf = io.StringIO()
    _dump(data, buf)
    return buf.getvalue()


def test_params_yaml_is_unchanged_by_dvcs_yaml_round_trip():
    text = (REPO / "params.yaml").read_text()
    out = _round_trip(text)
    diff = [(a, b) for a, b in zip(text.splitlines(), out.splitlines()) if a != b]
    assert out == text, f"DVC would rewrite params.yaml; first differences: {diff[:5]}"


def test_a_set_value_changes_only_its_line():
    text = (REPO / "params.yaml").read_text()

    def set_lr(d):
        d["methods"]["tcr"]["lr"] = 1e-3

    out = _round_trip(text, set_lr)
    before, after = text.splitlines(), out.splitlines()
    assert len(before) == len(after)
    changed = [(a, b) for a, b in zip(before, after) if a != b]
    assert len(changed) == 1 and changed[0][1].strip() == "lr: 0.001", changed
    assert yaml.safe_load(out)["methods"]["tcr"]["lr"] == 1e-3
