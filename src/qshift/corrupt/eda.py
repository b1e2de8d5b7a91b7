"""Word-level text corruptions: EDA's four operations and AEDA's punctuation insertion.

SR / RI / RS / RD follow EDA (Wei & Zou, 2019) as the benchmark uses it, with word
probability ``p = 0.05 * level`` and ``n = max(1, int(p * words))`` operations:

* SR  synonym replacement: ``n`` distinct non-stop words, each replaced (every occurrence)
  by a random WordNet synonym;
* RI  random insertion: ``n`` times, a random synonym of a random word inserted at a
  random position;
* RS  random swap: ``n`` swaps of two random positions;
* RD  random deletion: each word deleted with probability ``p`` (one word kept at least).

As in EDA, SR/RI/RS/RD first lowercase the caption and strip punctuation (apostrophes
vanish, other non-alphanumerics become spaces). Unlike EDA's a-z filter, Unicode letters
and digits are kept, so a non-English caption is not erased. IP (AEDA, Karimi et al.,
2021) keeps the caption as is and inserts ``randint(1, int(p * words + 1))`` marks from
``. , ! ? ; :`` before distinct random words.

Each call takes its own ``random.Random(seed)`` (no global state), and every candidate
list is sorted before sampling, so results do not depend on PYTHONHASHSEED. Captions
with no word left after normalisation are returned unchanged.

WordNet (for SR/RI) is read offline from ``$QSHIFT_NLTK_DATA`` (default
``~/.cache/qshift/nltk_data``, installed by ``scripts/wordnet.sh``, which
``scripts/setup.sh`` runs) or from anywhere on nltk's own search path (``NLTK_DATA``).
"""

from __future__ import annotations

import os
import random
import warnings
from functools import lru_cache
from pathlib import Path

from ..errors import InputError

PUNCTUATION = (".", ",", "!", "?", ";", ":")

# English function words that SR never replaces (EDA skips stop words the same way).
STOP_WORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between both
but by can could did do does doing down during each few for from further had has have having he her here hers
herself him himself his how i if in into is it its itself just me more most my myself no nor not now of off on
once only or other our ours ourselves out over own same she should so some such than that the their theirs them
themselves then there these they this those through to too under until up very was we were what when where which
while who whom why will with would you your yours yourself yourselves
""".split())


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


def normalize(text: str) -> list[str]:
    """EDA's clean-up: lowercase, drop apostrophes, every other non-alphanumeric -> space."""
    text = text.lower().replace("'", "").replace("\u2019", "")
    return "".join(c if c.isalnum() else " " for c in text).split()


@lru_cache(maxsize=65536)
def synonyms(word: str) -> tuple[str, ...]:
    """WordNet synonyms of ``word`` (all senses), normalised like the words, sorted."""
    out = set()
    for synset in wordnet().synsets(word):
        for lemma in synset.lemmas():
            syn = " ".join(normalize(lemma.name().replace("_", " ")))
            if syn and syn != word:
                out.add(syn)
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
    return " ".join(words)


def random_insert(text: str, p: float, seed: int) -> str:
    words = normalize(text)
    if not words:
        return text
    rng = random.Random(seed)
    for _ in range(n_ops(p, len(words))):
        for _try in range(10):  # EDA gives up after 10 words without a synonym
            syns = synonyms(words[rng.randrange(len(words))])
            if syns:
                words.insert(rng.randrange(len(words) + 1), rng.choice(syns))
                break
        else:
            break
    return " ".join(words)


def random_swap(text: str, p: float, seed: int) -> str:
    words = normalize(text)
    if len(words) < 2:
        return " ".join(words) or text
    rng = random.Random(seed)
    for _ in range(n_ops(p, len(words))):
        i, j = rng.sample(range(len(words)), 2)
        words[i], words[j] = words[j], words[i]
    return " ".join(words)


def random_delete(text: str, p: float, seed: int) -> str:
    words = normalize(text)
    if len(words) < 2:
        return " ".join(words) or text
    rng = random.Random(seed)
    kept = [w for w in words if rng.random() >= p]
    return " ".join(kept) if kept else words[rng.randrange(len(words))]


def insert_punct(text: str, p: float, seed: int) -> str:
    words = text.split()
    if not words:
        return text
    rng = random.Random(seed)
    k = rng.randint(1, int(p * len(words) + 1))
    where = set(rng.sample(range(len(words)), k))
    out = []
    for i, w in enumerate(words):
        if i in where:
            out.append(rng.choice(PUNCTUATION))
        out.append(w)
    return " ".join(out)
