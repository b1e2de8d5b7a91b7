"""Corruption examples for the report: the contact sheet, the text table and their stage."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qshift.corrupt import TEXT_CORRUPTIONS, corrupt_image, corrupt_text
from qshift.corrupt.examples import NOT_RUN, contact_sheet, md_escape, pipeline_seed, text_examples
from qshift.errors import InputError
from qshift.io import derive_seed

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (32, 40, 3), dtype=np.uint8)


def test_contact_sheet_grid_holds_the_corrupted_images(image, tmp_path):
    names, sevs = ["gaussian_noise", "frost", "contrast"], [1, 5]
    seed_for = pipeline_seed("toy", 7)
    path = contact_sheet(image, names, sevs, tmp_path / "sheet.png", seed_for=seed_for, cell=80)
    with Image.open(path) as im:
        sheet = np.asarray(im.convert("RGB"))
    # 40 px wide -> x2 nearest-neighbour tiles of 80x64; 3 rows, clean + 2 severity columns
    tw, th, pad, head = 80, 64, 4, 24
    label_w = sheet.shape[1] - 3 * (tw + pad) - pad
    assert sheet.shape[0] == head + 3 * (th + pad) + pad
    assert label_w > 50  # room for the longest row label
    for r, name in enumerate(names):
        y = head + pad + r * (th + pad)
        clean_tile = sheet[y:y + th, label_w + pad:label_w + pad + tw]
        assert np.array_equal(clean_tile[::2, ::2], image)
        for c, sev in enumerate(sevs, start=1):
            x = label_w + pad + c * (tw + pad)
            expected = corrupt_image(name, image, sev, derive_seed("toy", 7, name, sev))
            assert np.array_equal(sheet[y:y + th, x:x + tw][::2, ::2], expected), (name, sev)
    again = contact_sheet(image, names, sevs, tmp_path / "again.png", seed_for=seed_for, cell=80)
    assert again.read_bytes() == path.read_bytes()


def test_contact_sheet_large_image_is_reduced(tmp_path):
    big = np.full((300, 400, 3), 128, np.uint8)
    path = contact_sheet(big, ["brightness"], [3], tmp_path / "s.png", cell=100)
    with Image.open(path) as im:
        assert im.height == 24 + 75 + 8  # 400x300 -> 100x75 tiles


def test_contact_sheet_errors(image, tmp_path):
    with pytest.raises(InputError, match="at least one corruption"):
        contact_sheet(image, [], [1], tmp_path / "s.png")
    with pytest.raises(InputError, match="dtype float64"):
        contact_sheet(image / 255.0, ["contrast"], [1], tmp_path / "s.png")
    assert not (tmp_path / "s.png").exists()


def _rows(md: str) -> list[list[str]]:
    """Table rows split on unescaped pipes."""
    import re

    return [re.split(r"(?<!\\)\|", line)[1:-1] for line in md.splitlines() if line.startswith("|")]


def test_text_examples_table(tmp_path):
    captions = ["A man rides a horse on the beach.", "Ünïcödé café | with *stars* and _under_ [x]", ""]
    names, levels = ["ocr", "char_swap", "char_delete"], [1, 4, 7]
    out = text_examples(captions, names, levels, tmp_path / "t.md")
    md = (tmp_path / "t.md").read_text()
    rows = _rows(md)
    assert len(rows) == 3 * (2 + len(names))  # header + rule + one row per type, per caption
    assert all(len(r) == 1 + len(levels) for r in rows)
    seeds = pipeline_seed("text_examples", 0)
    expected = corrupt_text("char_swap", captions[0], 4, seeds("char_swap", 4))
    assert out["captions"][0]["cells"]["char_swap"][4] == expected
    assert md_escape(expected) in md
    assert "Ünïcödé" in md and "\\|" in md and "\\*stars\\*" in md
    assert out["captions"][2]["cells"]["ocr"][1] == ""  # empty captions stay empty, shown as (empty)
    assert "(empty)" in md and out["not_run"] == {}
    assert text_examples(captions, names, levels, tmp_path / "t2.md") == out  # deterministic


def test_text_examples_not_run(tmp_path):
    """A type that cannot run here raises a QShiftError (the documented contract): 'not run'."""
    def corrupt(name, text, level, seed):
        if name == "needs_model":
            raise InputError("text corruption 'needs_model' needs a seq2seq model but none is configured")
        return corrupt_text(name, text, level, seed)

    out = text_examples(["a dog"], ["ocr", "needs_model"], [1, 2], tmp_path / "t.md", corrupt=corrupt)
    md = (tmp_path / "t.md").read_text()
    assert out["captions"][0]["cells"]["needs_model"] == {1: None, 2: None}
    assert f"| needs\\_model | *{NOT_RUN}* | *{NOT_RUN}* |" in md
    assert "none is configured" in out["not_run"]["needs_model"] and "## Not run" in md


@pytest.mark.skipif("formal" not in TEXT_CORRUPTIONS, reason="model-based text types not registered")
def test_unconfigured_model_type_is_not_run(tmp_path):
    out = text_examples(["a dog runs"], ["formal"], [1], tmp_path / "t.md")
    assert out["captions"][0]["cells"]["formal"] == {1: None} and "formal" in out["not_run"]


def test_text_examples_bugs_propagate(tmp_path):
    def broken(name, text, level, seed):
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        text_examples(["x"], ["ocr"], [1], tmp_path / "t.md", corrupt=broken)


def test_stage_writes_the_report_files(tmp_path):
    sys.path.insert(0, str(ROOT / "tests"))
    from _tiny import make_tiny_dataset

    make_tiny_dataset(tmp_path / "data" / "builtin", n_test=3)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    subprocess.run([sys.executable, str(ROOT / "stages" / "examples.py"), "--captions", "1", "--no-progress"],
                   cwd=tmp_path, check=True, capture_output=True, text=True)
    out = tmp_path / "reports" / "corruptions"
    with Image.open(out / "contact_sheet.png") as im:
        assert im.format == "PNG" and im.height > 16 * 100
    md = (out / "text_examples.md").read_text()
    assert "| OCR (ocr) |" in md and md.count("## Caption") == 1
    doc = json.loads((out / "examples.json").read_text())
    assert len(doc["contact_sheet"]["corruptions"]) == 16 and doc["text"]["levels"] == list(range(1, 8))
    bad = subprocess.run([sys.executable, str(ROOT / "stages" / "examples.py"), "--image", "9"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--image 9 out of range" in bad.stderr
