"""What the corruptions look like: a contact sheet of image corruptions and a Markdown table
of text corruptions, for the report (``reports/corruptions/``).

Both show exactly what the pipeline feeds the model: the default seeds are the pipeline's
(:func:`pipeline_seed`: dataset, image/sentence id, corruption, severity/level), so a cell
is the corrupted query of that id (images before their JPEG q95 save).

A text type that cannot run here — a model-based type with no model configured, WordNet
missing — raises a :class:`~qshift.errors.QShiftError` (``seq2seq.ModelNotConfigured``,
``eda.WordNetMissing``, both ``InputError``); its cells read "not run" and the reason is
listed under the table. Any other exception is a bug and propagates.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import InputError, QShiftError
from ..io import atomic_path, derive_seed, write_text
from .image import as_rgb, corrupt_image

NOT_RUN = "not run"
TextCorrupter = Callable[[str, str, int, int], str]  # (name, caption, level, seed) -> caption


def pipeline_seed(dataset: str, item_id: int | str) -> Callable[[str, int], int]:
    """The seed the pipeline uses for ``item_id`` under (corruption, severity/level)."""
    return lambda name, severity: derive_seed(dataset, item_id, name, severity)


# -- contact sheet -----------------------------------------------------------------------------

def _display(arr: np.ndarray, cell: int):
    """Fit an image into a cell x cell box: integer nearest-neighbour enlargement for small
    images (pixels and noise stay visible), area-averaging reduction for large ones."""
    from PIL import Image

    pil = Image.fromarray(arr)
    scale = cell / max(pil.size)
    if scale >= 2:
        k = int(scale)
        return pil.resize((pil.width * k, pil.height * k), Image.NEAREST)
    if scale < 1:
        return pil.resize((max(1, round(pil.width * scale)), max(1, round(pil.height * scale))), Image.BOX)
    return pil


def contact_sheet(image: np.ndarray, names: Sequence[str], severities: Sequence[int], path: str | Path,
                  seed_for: Callable[[str, int], int] | None = None, cell: int = 128,
                  progress: bool = False, implementation: str = "imagecorruptions",
                  options: dict | None = None) -> Path:
    """A PNG grid: one row per corruption, columns clean + each severity, labelled.

    ``image`` is any array :func:`corrupt_image` accepts; it is corrupted at its own size and
    only then scaled for display. ``seed_for(name, severity)`` gives each cell's seed
    (default: :func:`pipeline_seed` of a fixed id).
    """
    from PIL import Image, ImageDraw, ImageFont
    from ..progress import tqdm

    if not names or not severities:
        raise InputError("contact_sheet needs at least one corruption and one severity")
    clean = as_rgb(image, "contact sheet image")
    seed_for = seed_for or pipeline_seed("contact_sheet", 0)
    font = ImageFont.load_default(size=14)
    label_w = max(int(math.ceil(font.getlength(n))) for n in names) + 16
    head_h, pad = 24, 4
    tile = _display(clean, cell)
    tw, th = tile.size
    cols = 1 + len(severities)
    sheet = Image.new("RGB", (label_w + cols * (tw + pad) + pad, head_h + len(names) * (th + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for c, title in enumerate(["clean"] + [f"severity {s}" for s in severities]):
        x = label_w + pad + c * (tw + pad)
        draw.text((x + tw / 2, head_h / 2), title, fill="black", font=font, anchor="mm")
    bar = tqdm(total=len(names) * len(severities), desc="contact sheet", unit="img", disable=not progress,
               leave=False)
    for r, name in enumerate(names):
        y = head_h + pad + r * (th + pad)
        draw.text((8, y + th / 2), name, fill="black", font=font, anchor="lm")
        sheet.paste(tile, (label_w + pad, y))
        for c, severity in enumerate(severities, start=1):
            out = corrupt_image(name, clean, severity, seed_for(name, severity), implementation, options)
            sheet.paste(_display(out, cell), (label_w + pad + c * (tw + pad), y))
            bar.update()
    bar.close()
    path = Path(path)
    with atomic_path(path, ".png") as tmp:
        sheet.save(tmp, format="PNG")
    return path


# -- text table --------------------------------------------------------------------------------

_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_[]<>|#"})


def md_escape(text: str) -> str:
    """A caption as literal Markdown table-cell text (no emphasis, links or broken columns)."""
    return " ".join(text.translate(_MD_SPECIAL).split()) or "(empty)"


def text_examples(captions: Sequence[str], names: Sequence[str], levels: Sequence[int], path_md: str | Path,
                  corrupt: TextCorrupter | None = None, seed_for: Sequence[Callable[[str, int], int]] | None = None,
                  labels: dict[str, str] | None = None) -> dict:
    """Write a Markdown table per caption — rows: text corruption types, columns: levels —
    and return the same content as a dict (``{"captions": [{"clean", "cells": {name: {level:
    text or None}}}], "not_run": {name: reason}}``).

    ``corrupt(name, caption, level, seed)`` defaults to :func:`qshift.corrupt.corrupt_text`;
    pass one bound to your params (models) for model-based types. ``seed_for[i](name, level)``
    gives caption i's seeds (default: :func:`pipeline_seed` of a fixed id per caption).
    """
    from .text import corrupt_text

    if not captions or not names or not levels:
        raise InputError("text_examples needs at least one caption, one corruption and one level")
    corrupt = corrupt or corrupt_text
    seed_for = list(seed_for) if seed_for is not None else [pipeline_seed("text_examples", i)
                                                             for i in range(len(captions))]
    if len(seed_for) != len(captions):
        raise InputError(f"text_examples: {len(captions)} captions but {len(seed_for)} seed functions")
    labels = labels or {}
    not_run: dict[str, str] = {}
    result = {"levels": list(levels), "captions": [], "not_run": not_run}
    lines = ["# Text corruptions", "", "Each caption under every text corruption type (rows) and level "
             "(columns; word probability p = 0.05 x level).", ""]
    for i, (caption, seeds) in enumerate(zip(captions, seed_for)):
        cells: dict[str, dict[int, str | None]] = {}
        lines += [f"## Caption {i + 1}", "", f"Clean: {md_escape(caption)}", "",
                  "| type | " + " | ".join(f"level {lv}" for lv in levels) + " |",
                  "|---|" + "---|" * len(levels)]
        for name in names:
            row: dict[int, str | None] = {}
            for level in levels:
                if name in not_run:
                    row[level] = None
                    continue
                try:
                    row[level] = corrupt(name, caption, level, seeds(name, level))
                except QShiftError as e:  # cannot run here (no model, no WordNet): documented above
                    not_run[name] = str(e)
                    row[level] = None
            cells[name] = row
            shown = [f"*{NOT_RUN}*" if t is None else md_escape(t) for t in row.values()]
            label = labels.get(name, name)
            lines.append(f"| {md_escape(label if label == name else f'{label} ({name})')} | " + " | ".join(shown) + " |")
        lines.append("")
        result["captions"].append({"clean": caption, "cells": cells})
    if not_run:
        lines += ["## Not run", ""] + [f"- {md_escape(n)}: {md_escape(r)}" for n, r in not_run.items()] + [""]
    write_text(path_md, "\n".join(lines))
    return result
