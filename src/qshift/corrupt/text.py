"""Text corruptions of query captions: the benchmark's 15 types, levels 1-7, word
probability p = 0.05 * level.

* char (nlpaug, offline): ``ocr`` (OCR, ``OcrAug``) and ``char_insert`` / ``char_replace`` /
  ``char_swap`` / ``char_delete`` (CI/CR/CS/CD, ``RandomCharAug``), all with ``aug_word_p=p`` and
  nlpaug's other defaults, as the reference scripts call them (at most 10 words and 10
  characters per word; aug_char_p 0.3).
* word (own code, :mod:`.eda`): ``synonym_replace`` / ``random_insert`` (SR/RI, WordNet
  offline), ``random_swap`` / ``random_delete`` (RS/RD), ``insert_punct`` (IP).
* sentence (transformers seq2seq, :mod:`.seq2seq`): ``formal``, ``casual``, ``passive``,
  ``active``, ``backtrans``; they run only when ``corrupt.text.models`` names their model,
  otherwise :func:`not_run_reason` says why and the pipeline skips them.

Each caption is seeded from (dataset, sentence id, corruption, level) by the caller, so a
result is stable under any job order and any PYTHONHASHSEED. Empty or whitespace-only
captions come back unchanged; any other string (non-ASCII included) comes back as a string.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from ..progress import tqdm

from . import eda, semfilter, seq2seq
from ..errors import InputError
from ..registry import Registry

LEVELS = range(1, 8)


@dataclass(frozen=True)
class TextCorruption:
    name: str
    label: str  # the benchmark's abbreviation, used in reports
    group: str  # "char" | "word" | "sentence"
    fn: Callable[[str, float, int], str] | None = None  # (caption, p, seed) -> caption; None: model-based


TEXT_CORRUPTIONS: Registry[TextCorruption] = Registry("text corruption")


def word_probability(level: int) -> float:
    return 0.05 * level


def _nlpaug(make_aug) -> Callable[[str, float, int], str]:
    def corruption(text: str, p: float, seed: int) -> str:
        # nlpaug draws from the global `random` and numpy RNGs: seed them for this caption and
        # put the caller's state back afterwards
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            random.seed(seed)
            np.random.seed(seed % 2**32)
            out = make_aug(p).augment(text)
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
        out = out[0] if isinstance(out, list) else out
        return out if isinstance(out, str) else text

    return corruption


def _ocr(p: float):
    import nlpaug.augmenter.char as nac

    return nac.OcrAug(aug_word_p=p)  # the reference's call: nlpaug's other defaults (e.g. at most 10 words)


def _random_char(action: str):
    def make(p: float):
        import nlpaug.augmenter.char as nac

        return nac.RandomCharAug(action=action, aug_word_p=p)  # the reference's call

    return make


_ALL = (TextCorruption("ocr", "OCR", "char", _nlpaug(_ocr)),
        TextCorruption("char_insert", "CI", "char", _nlpaug(_random_char("insert"))),
        TextCorruption("char_replace", "CR", "char", _nlpaug(_random_char("substitute"))),
        TextCorruption("char_swap", "CS", "char", _nlpaug(_random_char("swap"))),
        TextCorruption("char_delete", "CD", "char", _nlpaug(_random_char("delete"))),
        TextCorruption("synonym_replace", "SR", "word", eda.synonym_replace),
        TextCorruption("random_insert", "RI", "word", eda.random_insert),
        TextCorruption("random_swap", "RS", "word", eda.random_swap),
        TextCorruption("random_delete", "RD", "word", eda.random_delete),
        TextCorruption("insert_punct", "IP", "word", eda.insert_punct),
        TextCorruption("formal", "Formal", "sentence"),
        TextCorruption("casual", "Casual", "sentence"),
        TextCorruption("passive", "Passive", "sentence"),
        TextCorruption("active", "Active", "sentence"),
        TextCorruption("backtrans", "Backtrans", "sentence"))
for _c in _ALL:
    TEXT_CORRUPTIONS.register(_c.name)(_c)

# display labels used in reports (the benchmark's abbreviations), in the benchmark's order
TEXT_LABELS = {c.name: c.label for c in _ALL}
MODEL_BASED = tuple(c.name for c in _ALL if c.group == "sentence")


def _check_level(level: int) -> int:
    if isinstance(level, bool) or int(level) != level or int(level) not in LEVELS:
        raise InputError(f"text corruption level must be an integer in 1..7, got {level!r}")
    return int(level)


def corrupt_texts(name: str, texts: Sequence[str], level: int, seeds: Sequence[int], cfg: dict | None = None,
                  progress: bool = False) -> list[str]:
    """Corrupt many captions (one seed each); model-based types are generated in batches
    with the models ``cfg`` names (:class:`seq2seq.ModelNotConfigured` when none). With
    ``corrupt.text.filter`` set, the types the reference filters are re-drawn until the
    semantic filter passes (:mod:`.semfilter`)."""
    return corrupt_texts_info(name, texts, level, seeds, cfg, progress)[0]


def corrupt_texts_info(name: str, texts: Sequence[str], level: int, seeds: Sequence[int], cfg: dict | None = None,
                       progress: bool = False) -> tuple[list[str], dict | None]:
    """:func:`corrupt_texts` plus the semantic filter's record (None when it does not apply):
    ``{"tries": [...], "cosine": [...], "summary": {...}}`` per caption."""
    spec = TEXT_CORRUPTIONS.get(name)
    level = _check_level(level)
    if len(texts) != len(seeds):
        raise InputError(f"text corruption {name!r}: {len(texts)} captions but {len(seeds)} seeds")
    for t in texts:
        if not isinstance(t, str):
            raise InputError(f"text corruption {name!r} needs string captions, got {type(t).__name__}: {t!r}")
    p = word_probability(level)
    if spec.fn is None:
        def draw(idx: list[int], sds: list[int]) -> list[str]:
            return seq2seq.corrupt_sentences(name, [texts[i] for i in idx], level, sds, cfg, progress=progress)
    else:
        def draw(idx: list[int], sds: list[int]) -> list[str]:
            pairs = tqdm(zip(idx, sds), total=len(idx), desc=f"{name} l{level}", unit="caption",
                         disable=not progress, leave=False)
            return [texts[i] if not texts[i].strip() else spec.fn(texts[i], p, int(s)) for i, s in pairs]
    if not semfilter.applies(cfg, name):
        return draw(list(range(len(texts))), [int(s) for s in seeds]), None
    settings = semfilter.settings(cfg)
    redraws = spec.group != "sentence" or bool(seq2seq.generation_settings(cfg)["do_sample"])
    encoder = semfilter.encoder_for(cfg)
    out, tries, cos = semfilter.filtered_draws(draw, texts, seeds, settings, encoder, redraws)
    return out, {"tries": tries, "cosine": cos, "summary": semfilter.summary(settings, tries, cos, encoder, redraws)}


def corrupt_text(name: str, text: str, level: int, seed: int, cfg: dict | None = None) -> str:
    """Corrupt one caption (model-based types: prefer :func:`corrupt_texts`, which batches)."""
    return corrupt_texts(name, [text], level, [seed], cfg)[0]


def not_run_reason(cfg: dict, name: str) -> str | None:
    """Why ``name`` cannot run with this configuration (None when it can): the report shows
    it in its "not run" list and the pipeline leaves the type out of the grid."""
    if TEXT_CORRUPTIONS.get(name).group == "sentence" and seq2seq.model_sources(cfg, name) is None:
        return f"not run (no model configured: corrupt.text.models.{name})"
    return None


def not_run_types(cfg: dict) -> dict[str, str]:
    """The configured ``corrupt.text.names`` that cannot run here, with the reason."""
    reasons = {n: not_run_reason(cfg, n) for n in cfg["corrupt"]["text"]["names"]}
    return {n: why for n, why in reasons.items() if why is not None}


def available_text_corruptions(cfg: dict) -> list[str]:
    """The configured ``corrupt.text.names`` that can run (in their configured order)."""
    skipped = not_run_types(cfg)
    return [n for n in cfg["corrupt"]["text"]["names"] if n not in skipped]


def validate_text_params(cfg: dict) -> None:
    """Check ``corrupt.text`` (names, levels, models, prefixes, generation); ConfigError if bad."""
    from ..errors import ConfigError

    text = cfg["corrupt"]["text"]
    for name in text.get("names", []):
        TEXT_CORRUPTIONS.check(name)
    for level in text.get("levels", []):
        if isinstance(level, bool) or level not in LEVELS:
            raise ConfigError(f"params: text level {level!r} not in 1..7")
    seq2seq.validate(cfg)
    semfilter.validate(cfg)
