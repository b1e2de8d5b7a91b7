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


def test_a_set_value_changes_only_its_entry():
    """`dvc exp run -S '++methods.tcr.lr=1e-3'` on the default `tcr: {}` (defaults on the class): the
    entry gains the one key, every other line (comments included) stays."""
    text = (REPO / "params.yaml").read_text()

    def set_lr(d):
        d["methods"]["tcr"]["lr"] = 1e-3

    out = _round_trip(text, set_lr)
    before, after = text.splitlines(), out.splitlines()
    i = before.index("  tcr: {}")
    assert after[:i] == before[:i] and after[i:i + 2] == ["  tcr:", "    lr: 0.001"] and after[i + 2:] == before[i + 1:]
    assert yaml.safe_load(out)["methods"]["tcr"]["lr"] == 1e-3
