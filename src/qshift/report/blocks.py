"""The report's building blocks, each rendered to Markdown and to HTML.

A report is a list of blocks (:class:`Heading`, :class:`Para`, :class:`Bullets`,
:class:`Table`, :class:`Figure`, :class:`Details`, :class:`Only`). Text in a block is
Markdown source with the inline marks the report uses — ``**bold**``, ``*italic*``,
```code``` and ``[text](url)``; :meth:`markdown` returns it as it is and :meth:`html`
renders it with :func:`inline` (HTML-escaped, marks as tags). Nothing converts a finished
Markdown document to HTML.

:func:`markdown` joins blocks with a blank line between them (the report's Markdown
layout); :func:`html` joins their HTML one per line.
"""

from __future__ import annotations

import base64
import html as _html
import re
from dataclasses import dataclass, field
from pathlib import Path

_CODE = re.compile(r"`([^`]*)`")
_LINK = re.compile(r"\[([^\]\n]+)\]\(([^)\s]+)\)")
_BOLD = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*")
_ITALIC = re.compile(r"(?<![*\w])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![*\w])")
_HOLE = "\x00{}\x00"


def esc(text) -> str:
    """HTML-escaped text (quotes too: safe inside attributes)."""
    return _html.escape(str(text), quote=True)


def attr(name: str, value: str | None) -> str:
    """`` name='value'`` (escaped), or nothing for an empty value."""
    return f" {name}='{esc(value)}'" if value else ""


def inline(text: str) -> str:
    """HTML of one line of Markdown inline text: escaped, with `code` spans (their content
    left as it is, ``**`` included), **bold**, *italic* and [links](url)."""
    codes: list[str] = []

    def hold(m: re.Match) -> str:
        codes.append(f"<code>{esc(m.group(1))}</code>")
        return _HOLE.format(len(codes) - 1)

    out = esc(_CODE.sub(hold, str(text).replace("\x00", "")))
    out = _LINK.sub(_link, out)
    out = _BOLD.sub(r"<b>\1</b>", out)
    out = _ITALIC.sub(r"<i>\1</i>", out)
    return re.sub("\x00(\\d+)\x00", lambda m: codes[int(m.group(1))], out)


def _link(m: re.Match) -> str:
    """A link; a URL with a scheme other than http(s)/mailto (javascript:, data:) stays text."""
    text, url = m.group(1), m.group(2)
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", url)
    if scheme and scheme.group(1).lower() not in ("http", "https", "mailto"):
        return m.group(0)
    return f"<a href='{url}'>{text}</a>"


class Block:
    """A piece of the report with a Markdown and an HTML form."""

    def markdown(self) -> str:
        raise NotImplementedError

    def html(self) -> str:
        raise NotImplementedError

    def leaves(self, fmt: str) -> list[Block]:
        """The blocks this one stands for in ``fmt`` ("md" or "html")."""
        return [self]


@dataclass
class Heading(Block):
    level: int
    text: str

    def markdown(self) -> str:
        return f"{'#' * self.level} {self.text}"

    def html(self) -> str:
        return f"<h{self.level}>{inline(self.text)}</h{self.level}>"


@dataclass
class Para(Block):
    """A paragraph; ``cls`` is its HTML class (note, missing, ok)."""

    text: str
    cls: str | None = None

    def markdown(self) -> str:
        return self.text

    def html(self) -> str:
        return f"<p{attr('class', self.cls)}>{inline(self.text)}</p>"


@dataclass
class Bullets(Block):
    """A list; an item is text or (text, [sub-items]) for a nested list. ``lead``: a line
    right above the list (no blank line between them in Markdown; a paragraph in HTML)."""

    items: list
    lead: str | None = None
    cls: str | None = None

    def markdown(self) -> str:
        lines = [self.lead] if self.lead is not None else []
        return "\n".join(lines + _md_items(self.items, 0))

    def html(self) -> str:
        lead = f"<p>{inline(self.lead)}</p>" if self.lead is not None else ""
        return lead + _html_items(self.items, self.cls)


def _split(item) -> tuple[str, list]:
    return (item[0], list(item[1])) if isinstance(item, tuple) else (item, [])


def _md_items(items: list, depth: int) -> list[str]:
    lines = []
    for item in items:
        text, sub = _split(item)
        lines += [f"{'  ' * depth}- {text}"] + _md_items(sub, depth + 1)
    return lines


def _html_items(items: list, cls: str | None = None) -> str:
    lis = []
    for item in items:
        text, sub = _split(item)
        lis.append(f"<li>{inline(text)}{_html_items(sub) if sub else ''}</li>")
    return f"<ul{attr('class', cls)}>{''.join(lis)}</ul>"


# -- tables -------------------------------------------------------------------------------------------

@dataclass
class Cell:
    """A table cell: its text (plain, not Markdown) with emphasis flags. HTML only: ``best``
    (underlined), ``sub`` a second line with class ``sub_cls`` (a difference: pos/neg),
    ``note`` a grey remark after the text, ``cls`` the cell's class."""

    text: str
    bold: bool = False
    italic: bool = False
    code: bool = False
    best: bool = False
    sub: str | None = None
    sub_cls: str = ""
    note: str | None = None
    cls: str | None = None

    def markdown(self) -> str:
        text = self.text.replace("|", "\\|")
        text = f"`{text}`" if self.code else text
        text = f"*{text}*" if self.italic else text
        return f"**{text}**" if self.bold else text

    def html(self) -> str:
        text = esc(self.text)
        for on, tag in ((self.code, "code"), (self.italic, "i"), (self.bold, "b")):
            text = f"<{tag}>{text}</{tag}>" if on else text
        text = f"<span class='best'>{text}</span>" if self.best else text
        text += f" <span class='note'>{esc(self.note)}</span>" if self.note else ""
        if self.sub is not None:
            text += f"<span class='d {self.sub_cls}'>{esc(self.sub)}</span>"
        return text


@dataclass
class Column:
    """A column: its header, alignment (``left`` or ``right``), HTML class and a second
    header line (``note``, HTML only)."""

    name: str
    align: str = "right"
    cls: str | None = None
    note: str | None = None


@dataclass
class Row:
    cells: list[Cell]
    cls: str | None = None


def cell(value) -> Cell:
    return value if isinstance(value, Cell) else Cell(str(value))


@dataclass
class Table(Block):
    columns: list[Column]
    rows: list[Row] = field(default_factory=list)

    @classmethod
    def grid(cls, header: list[str], rows: list[list], left: int = 1) -> Table:
        """A table from a header and rows of text (or :class:`Cell`), its first ``left``
        columns left-aligned (and class ``m`` in HTML), the others right-aligned."""
        cols = [Column(h, "left" if i < left else "right", "m" if i < left else None) for i, h in enumerate(header)]
        return cls(cols, [Row([cell(v) for v in r]) for r in rows])

    def markdown(self) -> str:
        head = "| " + " | ".join(c.name for c in self.columns) + " |"
        rule = "|" + "".join("---|" if c.align == "left" else "---:|" for c in self.columns)
        body = ["| " + " | ".join(c.markdown() for c in r.cells) + " |" for r in self.rows]
        return "\n".join([head, rule] + body)

    def html(self) -> str:
        head = "".join(f"<th{attr('class', c.cls)}>{esc(c.name)}"
                       + (f"<br><span class='note'>{esc(c.note)}</span>" if c.note else "") + "</th>"
                       for c in self.columns)
        body = "".join(f"<tr{attr('class', r.cls)}>" + "".join(
            f"<td{attr('class', v.cls or col.cls)}>{v.html()}</td>" for col, v in zip(self.columns, r.cells))
            + "</tr>" for r in self.rows)
        return f"<table><tr>{head}</tr>{body}</table>"


# -- figures, folds, format-only blocks --------------------------------------------------------------------

@dataclass
class Figure(Block):
    """An image: ``src`` is its path in the Markdown (relative to report.md), ``path`` the
    file embedded in the HTML (a data URI); ``alt`` the Markdown text, ``html_alt`` the HTML's."""

    path: Path
    src: str
    alt: str
    html_alt: str | None = None

    def markdown(self) -> str:
        return f"![{self.alt}]({self.src})"

    def html(self) -> str:
        data = base64.b64encode(Path(self.path).read_bytes()).decode("ascii")
        return f"<div class='fig'><img alt='{esc(self.html_alt or self.alt)}' src='data:image/png;base64,{data}'></div>"


@dataclass
class Details(Block):
    """A folded part: its summary line and its blocks."""

    summary: str
    blocks: list[Block]

    def markdown(self) -> str:
        inner = markdown(self.blocks).rstrip("\n")
        return f"<details><summary>{self.summary}</summary>\n\n{inner}\n\n</details>"

    def html(self) -> str:
        return f"<details><summary>{inline(self.summary)}</summary>\n{html(self.blocks)}\n</details>"


@dataclass
class Only(Block):
    """Blocks shown in one format only (``md`` or ``html``): where the two forms differ,
    e.g. the Markdown's folded R@5/R@10 tables and the HTML's tables with a Δ line per cell."""

    fmt: str
    blocks: list[Block]

    def __post_init__(self):
        if self.fmt not in ("md", "html"):
            raise ValueError(f"Only: fmt must be 'md' or 'html', got {self.fmt!r}")

    def leaves(self, fmt: str) -> list[Block]:
        return [leaf for b in self.blocks for leaf in b.leaves(fmt)] if fmt == self.fmt else []


def md_only(*blocks: Block) -> Only:
    return Only("md", list(blocks))


def html_only(*blocks: Block) -> Only:
    return Only("html", list(blocks))


def leaves(blocks: list[Block], fmt: str) -> list[Block]:
    return [leaf for b in blocks for leaf in b.leaves(fmt)]


def markdown(blocks: list[Block]) -> str:
    """The Markdown of the blocks: each followed by a blank line."""
    return "".join(b.markdown() + "\n\n" for b in leaves(blocks, "md"))[:-1]


def html(blocks: list[Block]) -> str:
    return "\n".join(b.html() for b in leaves(blocks, "html"))


# -- the page ---------------------------------------------------------------------------------------------

CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:0 auto;max-width:1150px;padding:18px 26px;
color:#1d2330;line-height:1.45;background:#fff}
h1{font-size:1.6em;border-bottom:2px solid #2f5d9b;padding-bottom:6px}h2{font-size:1.3em;margin-top:1.8em;
border-bottom:1px solid #d5dbe5;padding-bottom:3px}h3{font-size:1.05em;margin-top:1.3em}
table{border-collapse:collapse;margin:8px 0 14px;font-size:0.88em;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d5dbe5;padding:4px 8px;text-align:right;vertical-align:top}
th{background:#eef2f8}td.m,th.m{text-align:left;font-weight:600}
td.avg,th.avg{border-left:2px solid #2f5d9b;font-weight:600}td.clean,th.clean{background:#f5f5f2;color:#555}
tr.ref td{background:#fbf8ec}.d{display:block;font-size:0.8em}.pos{color:#1b7a33}.neg{color:#b3261e}
.best{font-weight:700;text-decoration:underline}
.note{color:#555;font-size:0.9em}.fig{margin:10px 0 18px}.fig img{max-width:100%;border:1px solid #e3e7ee}
ul.missing li{font-family:monospace;font-size:0.88em}code{background:#f1f3f7;padding:0 3px;border-radius:3px}
.ok{color:#1b7a33}.bad{color:#b3261e}
"""


def page(title: str, blocks: list[Block]) -> str:
    """A self-contained HTML page: inline CSS, figures as data URIs, no scripts."""
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>\n" + html(blocks) + "\n</body></html>\n")
