"""Text corruptions of query captions (levels 1-7, word probability p = 0.05 * level).

Character-level types use nlpaug (offline, no models): OCR (``OcrAug``) and random
character insert / replace / swap / delete (``RandomCharAug``) — the CI/CR/CS/CD of the
benchmark. Each caption is seeded from (dataset, sentence id, corruption, level), so the
result is stable under any job order and any PYTHONHASHSEED.
"""

from __future__ import annotations

import random

import numpy as np

from ..errors import InputError
from ..registry import Registry

TEXT_CORRUPTIONS: Registry = Registry("text corruption")
# display labels used in reports (the benchmark's abbreviations)
TEXT_LABELS = {"ocr": "OCR", "char_insert": "CI", "char_replace": "CR", "char_swap": "CS", "char_delete": "CD"}


def word_probability(level: int) -> float:
    return 0.05 * level


def _nlpaug(name: str, make_aug):
    def corruption(text: str, level: int, seed: int) -> str:
        if not text.strip():
            return text
        random.seed(seed)
        np.random.seed(seed % 2**32)
        out = make_aug(word_probability(level)).augment(text)
        return out[0] if isinstance(out, list) else out

    corruption.__name__ = name
    return corruption


def _ocr(p: float):
    import nlpaug.augmenter.char as nac

    return nac.OcrAug(aug_word_p=p, aug_word_max=None, aug_char_max=None)


def _random_char(action: str):
    def make(p: float):
        import nlpaug.augmenter.char as nac

        return nac.RandomCharAug(action=action, aug_word_p=p, aug_word_max=None, aug_char_max=None)

    return make


TEXT_CORRUPTIONS.register("ocr")(_nlpaug("ocr", _ocr))
TEXT_CORRUPTIONS.register("char_insert")(_nlpaug("char_insert", _random_char("insert")))
TEXT_CORRUPTIONS.register("char_replace")(_nlpaug("char_replace", _random_char("substitute")))
TEXT_CORRUPTIONS.register("char_swap")(_nlpaug("char_swap", _random_char("swap")))
TEXT_CORRUPTIONS.register("char_delete")(_nlpaug("char_delete", _random_char("delete")))


def corrupt_text(name: str, text: str, level: int, seed: int) -> str:
    fn = TEXT_CORRUPTIONS.get(name)
    if not 1 <= int(level) <= 7:
        raise InputError(f"text corruption level must be in 1..7, got {level!r}")
    if not isinstance(text, str):
        raise InputError(f"text corruption {name!r} needs a string, got {type(text).__name__}")
    return fn(text, int(level), seed)
