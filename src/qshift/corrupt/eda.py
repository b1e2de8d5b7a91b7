"""Word-level text corruptions: EDA's four operations and AEDA's punctuation insertion.

SR / RI / RS / RD follow EDA (Wei & Zou, 2019) as the benchmark's scripts run it
(MM_Robustness text_perturbation/eda.py, called with one operation at a time and
num_aug=1), with word probability ``p = 0.05 * level`` and ``n = max(1, int(p * words))``:

* SR  synonym replacement: ``n`` distinct non-stop words (EDA's stop-word list), each
  replaced (every occurrence) by a random WordNet synonym;
* RI  random insertion: ``n`` times, a synonym of a random word inserted at a random position
  in ``0 .. len - 1``; each insertion looks at up to 10 random words and is skipped when the
  10th is reached (EDA's counter), the others still run;
* RS  random swap: ``n`` swaps; each draws a position, then the other up to 4 times while it
  equals the first, and skips the swap when the 4th draw is reached (EDA's ``swap_word``);
* RD  random deletion: each word kept when a uniform draw is ``> p`` (one random word kept
  when none is; a one-word caption is left alone).

As in EDA, SR/RI/RS/RD first clean the caption with EDA's ``get_only_chars`` (apostrophes
dropped, hyphens/tabs/newlines to spaces, lowercase, every character outside a-z and space to a
space, runs of spaces collapsed) and clean the result the same way; synonyms are WordNet lemma
names with ``_``/``-`` to spaces, lowercased, characters outside a-z and space dropped.
IP (AEDA, Karimi et al., 2021) keeps the caption as is, splits it on single spaces and inserts
``randint(1, int(p * words + 1))`` marks from ``. , ! ? ; :`` before distinct random words.

Deviations from the reference scripts (documented, all for determinism): each call takes its
own ``random.Random(seed)`` (the scripts seed the global ``random`` once and run through the
file in order), every candidate list is sorted before sampling (the scripts iterate Python
sets, whose order changes with PYTHONHASHSEED), and RI picks a random synonym where EDA takes
the first of that set order. Captions with no word left after cleaning are returned unchanged
(EDA's ``get_only_chars`` fails on them).

WordNet (for SR/RI) is read offline from ``$QSHIFT_NLTK_DATA`` (default
``~/.cache/qshift/nltk_data``, installed by ``scripts/wordnet.sh``, which
``scripts/setup.sh`` runs) or from anywhere on nltk's own search path (``NLTK_DATA``).
"""

from __future__ import annotations

import os
import random
import re
import warnings
from functools import lru_cache
from pathlib import Path

from ..errors import InputError

PUNCTUATION = (".", ",", "!", "?", ";", ":")

# EDA's stop-word list (the words SR never replaces), as its eda.py has it.
STOP_WORDS = frozenset("""
i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her hers herself
it its itself they them their theirs themselves what which who whom this that these those am is are was were be
been being have has had having do does did doing a an the and but if or because as until while of at by for
with about against between into through during before after above below to from up down in out on off over under
again further then once here there when where why how all any both each few more most other some such no nor not
only own same so than too very s t can will just don should now
""".split()) | {""}


class WordNetMissing(InputError):
    """WordNet is not installed where the code looks for it."""


def nltk_data_dir() -> Path:
    """The project's NLTK_DATA directory (``$QSHIFT_NLTK_DATA`` or ``~/.cache/qshift/nltk_data``)."""
    return Path(os.environ.get("QSHIFT_NLTK_DATA") or Path.home() / ".cache" / "qshift" / "nltk_data").expanduser()


@lru_cache(maxsize=4)
def _wordnet(root: str):
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    # nltk only opens corpora under its search path: add the project's directory to it
    if root not in nltk.data.path:
        nltk.data.path.append(root)
    try:
        where = nltk.data.find("corpora/wordnet")
    except LookupError:
        raise WordNetMissing(
            f"WordNet not found (looked in {root}/corpora/wordnet and nltk's path {nltk.data.path[:-1]}); "
            "the SR/RI text corruptions need it offline: run `bash scripts/setup.sh` "
            "(or `bash scripts/wordnet.sh`; QSHIFT_NLTK_DATA picks the directory)") from None
    with warnings.catch_warnings():  # "multilingual functions are not available": we need English only
        warnings.simplefilter("ignore")
        try:
            return WordNetCorpusReader(where, None)
        except (OSError, ValueError, AssertionError) as e:
            raise WordNetMissing(f"WordNet at {where} is incomplete or unreadable ({e}); reinstall it: "
                                 f"remove that folder and run `bash scripts/wordnet.sh`") from None


def wordnet():
    """The WordNet reader (loaded once per process)."""
    return _wordnet(str(nltk_data_dir()))


def wordnet_available() -> bool:
    try:
        wordnet()
        return True
    except WordNetMissing:
        return False


_LETTERS = frozenset("qwertyuiopasdfghjklzxcvbnm ")


def clean(line: str) -> str:
    """EDA's ``get_only_chars``: apostrophes dropped, hyphens/tabs/newlines to spaces, lowercase,
    any character outside a-z and space to a space, runs of spaces collapsed, one leading space
    dropped."""
    line = line.replace("\u2019", "").replace("'", "").replace("-", " ").replace("\t", " ").replace("\n", " ")
    line = re.sub(" +", " ", "".join(c if c in _LETTERS else " " for c in line.lower()))
    return line[1:] if line.startswith(" ") else line


def normalize(text: str) -> list[str]:
    """The caption's words after :func:`clean` (EDA: ``split(' ')``, empty strings dropped)."""
    return [w for w in clean(text).split(" ") if w != ""]


@lru_cache(maxsize=65536)
def synonyms(word: str) -> tuple[str, ...]:
    """WordNet synonyms of ``word`` (all senses) as EDA's ``get_synonyms`` makes them, sorted."""
    out = set()
    for synset in wordnet().synsets(word):
        for lemma in synset.lemmas():
            syn = lemma.name().replace("_", " ").replace("-", " ").lower()
            out.add("".join(c for c in syn if c in _LETTERS))
    out.discard(word)
    return tuple(sorted(out))


def n_ops(p: float, n_words: int) -> int:
    return max(1, int(p * n_words))


def synonym_replace(text: str, p: float, seed: int) -> str:
    words = normalize(text)
    if not words:
        return text
    rng = random.Random(seed)
    n = n_ops(p, len(words))
    candidates = sorted({w for w in words if w not in STOP_WORDS})
    rng.shuffle(candidates)
    replaced = 0
    for word in candidates:
        syns = synonyms(word)
        if syns:
            choice = rng.choice(syns)
            words = [choice if w == word else w for w in words]
            replaced += 1
        if replaced >= n:
            break
    return clean(" ".join(words))


def random_insert(text: str, p: float, seed: int) -> str:
    words = normalize(text)
    if not words:
        return text
    rng = random.Random(seed)
    for _ in range(n_ops(p, len(words))):
        syns: tuple[str, ...] = ()
        for tries in range(1, 11):  # EDA's counter: the 10th look ends this insertion
            syns = synonyms(words[rng.randint(0, len(words) - 1)])
            if syns or tries >= 10:
                break
        if syns and tries < 10:
            words.insert(rng.randint(0, len(words) - 1), rng.choice(syns))
    return clean(" ".join(words))


def random_swap(text: str, p: float, seed: int) -> str:
    words = normalize(text)
    if not words:
        return text
    rng = random.Random(seed)
    for _ in range(n_ops(p, len(words))):
        i = j = rng.randint(0, len(words) - 1)
        draws = 0
        while j == i and draws <= 3:  # EDA's swap_word: the 4th draw ends this swap, whatever it is
            j = rng.randint(0, len(words) - 1)
            draws += 1
        if draws <= 3:
            words[i], words[j] = words[j], words[i]
    return clean(" ".join(words))


def random_delete(text: str, p: float, seed: int) -> str:
    words = normalize(text)
    if not words:
        return text
    if len(words) == 1:
        return clean(words[0])
    rng = random.Random(seed)
    kept = [w for w in words if rng.random() > p]
    return clean(" ".join(kept) if kept else words[rng.randint(0, len(words) - 1)])


def insert_punct(text: str, p: float, seed: int) -> str:
    words = text.split(" ")
    if not text.strip():
        return text
    rng = random.Random(seed)
    k = rng.randint(1, int(p * len(words) + 1))
    where = set(rng.sample(range(len(words)), k))
    out = []
    for i, w in enumerate(words):
        if i in where:
            out.append(PUNCTUATION[rng.randint(0, len(PUNCTUATION) - 1)])
        out.append(w)
    return " ".join(out)
