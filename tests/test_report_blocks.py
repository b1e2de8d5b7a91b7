"""The report's blocks: Markdown and HTML renderers, the inline renderer's escaping, and the
package's rule that no function runs over 60 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from qshift.report.blocks import (Bullets, Cell, Column, Details, Figure, Heading, Para, Row, Table, html, html_only,
                                  inline, markdown, md_only, page)

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 60


def test_inline_escapes_html_and_renders_marks():
    assert inline("a < b & c > d") == "a &lt; b &amp; c &gt; d"
    assert inline("<script>alert('x')</script>") == "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;"
    assert inline("**Avg** is *the* mean") == "<b>Avg</b> is <i>the</i> mean"
    assert inline("see `a**b**<c>` here") == "see <code>a**b**&lt;c&gt;</code> here"  # code: no marks inside
    assert inline("**bold `code` bold**") == "<b>bold <code>code</code> bold</b>"
    assert inline("[notes.md](corruptions/notes.md)") == "<a href='corruptions/notes.md'>notes.md</a>"
    assert inline("[x](a?b=1&c='2')") == "<a href='a?b=1&amp;c=&#x27;2&#x27;'>x</a>"
    assert inline("[x](javascript:alert(1))").startswith("[x](javascript:")  # no script links
    assert inline("+1.3* ±0.8 and 2 * 3") == "+1.3* ±0.8 and 2 * 3"  # a lone star is text
    assert inline("mean_i ||z_i - zbar||") == "mean_i ||z_i - zbar||"


def test_paragraph_and_heading_keep_markdown_and_render_html():
    p = Para("gap < 0 & **mixed** `x`", "note")
    assert p.markdown() == "gap < 0 & **mixed** `x`"
    assert p.html() == "<p class='note'>gap &lt; 0 &amp; <b>mixed</b> <code>x</code></p>"
    assert Heading(2, "Variants of `rest`").markdown() == "## Variants of `rest`"
    assert Heading(2, "Variants of `rest`").html() == "<h2>Variants of <code>rest</code></h2>"


def test_nested_bullets():
    b = Bullets(["one `a`", ("two:", ["x < y", ("deeper", ["z"])])], lead="Lead **l**:", cls="missing")
    assert b.markdown() == "Lead **l**:\n- one `a`\n- two:\n  - x < y\n  - deeper\n    - z"
    assert b.html() == ("<p>Lead <b>l</b>:</p><ul class='missing'><li>one <code>a</code></li><li>two:<ul>"
                        "<li>x &lt; y</li><li>deeper<ul><li>z</li></ul></li></ul></li></ul>")


def test_table_with_bold_cells_and_html_extras():
    t = Table([Column("Method", "left", "m"), Column("Avg", cls="avg", note="ours / paper")],
              [Row([Cell("source", note="(reference)"), Cell("1.0", bold=True)], "ref"),
               Row([Cell("a|b", code=True), Cell("<2>", italic=True, best=True, sub="+1.0", sub_cls="pos")])])
    assert t.markdown() == "| Method | Avg |\n|---|---:|\n| source | **1.0** |\n| `a\\|b` | *<2>* |"
    h = t.html()
    assert h.startswith("<table><tr><th class='m'>Method</th><th class='avg'>Avg<br><span class='note'>ours / paper")
    assert "<tr class='ref'><td class='m'>source <span class='note'>(reference)</span></td><td class='avg'><b>1.0</b>" in h
    assert "<td class='m'><code>a|b</code></td>" in h
    assert "<span class='best'><i>&lt;2&gt;</i></span><span class='d pos'>+1.0</span>" in h
    g = Table.grid(["Method", "Domain", "R@1"], [["tcr", "fog", "1.0"]], left=2)
    assert g.markdown() == "| Method | Domain | R@1 |\n|---|---|---:|\n| tcr | fog | 1.0 |"


def test_folded_details_and_format_only_blocks(tmp_path):
    png = tmp_path / "f.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    blocks = [Heading(1, "T"), md_only(Para("md only")), html_only(Para("html only", "note")),
              Details("R@5 and R@10", [Para("R@5"), Table.grid(["Method", "x"], [["a", "1"]])]),
              Figure(png, "figures/f.png", "F", "F, i2t")]
    md = markdown(blocks)
    assert md == ("# T\n\nmd only\n\n<details><summary>R@5 and R@10</summary>\n\nR@5\n\n| Method | x |\n|---|---:|\n"
                  "| a | 1 |\n\n</details>\n\n![F](figures/f.png)\n")
    h = html(blocks)
    assert "md only" not in h and "<p class='note'>html only</p>" in h
    folded = h.split("<details>")[1].split("</details>")[0]
    assert folded.startswith("<summary>R@5 and R@10</summary>") and "<table>" in folded
    assert "<img alt='F, i2t' src='data:image/png;base64,iVBORw0KGgpmYWtl'>" in h
    full = page("A <title>", blocks)
    assert full.startswith("<!DOCTYPE html>") and "<title>A &lt;title&gt;</title>" in full
    with pytest.raises(ValueError):
        md_only(Para("x")).__class__("pdf", [])


def _long_functions(root: Path) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_LINES:
                    out.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({n} lines)")
    return out


def test_no_function_in_the_report_package_runs_over_60_lines():
    assert (REPO / "src/qshift/report/__init__.py").is_file() and not (REPO / "src/qshift/report.py").exists()
    assert _long_functions(REPO / "src/qshift/report") == []
