"""The 15 text corruptions: offline char/word types, WordNet offline, model-based types
through a tiny randomly initialised seq2seq model saved to disk, and bad inputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qshift.corrupt import eda, seq2seq
from qshift.corrupt.build import build_text_queries
from qshift.corrupt.text import (MODEL_BASED, TEXT_CORRUPTIONS, TEXT_LABELS, available_text_corruptions,
                                 corrupt_text, corrupt_texts, not_run_reason, validate_text_params)
from qshift.errors import ConfigError, InputError, UnknownNameError

REPO = Path(__file__).resolve().parents[1]
CAPTIONS = [
    "A man riding a red bicycle down a busy city street.",
    "Two small dogs are playing with a ball on the green grass in the park.",
    "A woman in a blue dress holds an umbrella while waiting for the bus.",
    "Several boats are docked at the pier near the old lighthouse at sunset.",
]
ODD = ["", "   ", "Ein Hund läuft über die Straße 🐕", "一只狗在街上跑", "🐕🐕", "dog", "!!!"]
OFFLINE = [n for n in TEXT_CORRUPTIONS.names() if n not in MODEL_BASED]
CHAR = ["ocr", "char_insert", "char_replace", "char_swap", "char_delete"]
WORDNET_TYPES = {"synonym_replace", "random_insert"}


@pytest.fixture(scope="module")
def wordnet():
    """WordNet must be installed where the set-up puts it; only a system without apt (not
    the project's platform) may skip."""
    if not eda.wordnet_available():
        if shutil.which("apt-get") is None:
            pytest.skip("WordNet not installed and no apt-get to install it (scripts/wordnet.sh needs Debian)")
        pytest.fail("WordNet missing: scripts/setup.sh should have installed it (run scripts/wordnet.sh)")
    return eda.wordnet()


def _needs(name: str, request) -> None:
    if name in WORDNET_TYPES:
        request.getfixturevalue("wordnet")


def levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def test_fifteen_types_with_the_benchmark_labels():
    assert list(TEXT_LABELS.values()) == ["OCR", "CI", "CR", "CS", "CD", "SR", "RI", "RS", "RD", "IP", "Formal",
                                          "Casual", "Passive", "Active", "Backtrans"]
    assert sorted(TEXT_LABELS) == TEXT_CORRUPTIONS.names() and len(OFFLINE) == 10
    assert MODEL_BASED == ("formal", "casual", "passive", "active", "backtrans")


@pytest.mark.parametrize("name", OFFLINE)
def test_offline_types_are_strings_deterministic_and_change_captions(name, request):
    _needs(name, request)
    for level in range(1, 8):
        outs = [corrupt_text(name, c, level, seed=1000 + i) for i, c in enumerate(CAPTIONS)]
        assert all(isinstance(o, str) and o.strip() for o in outs)
        assert outs == [corrupt_text(name, c, level, seed=1000 + i) for i, c in enumerate(CAPTIONS)]
        assert corrupt_texts(name, CAPTIONS, level, [1000 + i for i in range(len(CAPTIONS))]) == outs
    # at the top level every caption differs from the original (and from its EDA normal form)
    for i, c in enumerate(CAPTIONS):
        out = corrupt_text(name, c, 7, seed=i)
        assert out != c and out != " ".join(eda.normalize(c)), (name, c, out)
    # another seed gives another corruption somewhere
    assert ([corrupt_text(name, c, 7, seed=1) for c in CAPTIONS] != [corrupt_text(name, c, 7, seed=2) for c in CAPTIONS])


@pytest.mark.parametrize("name", CHAR)
def test_char_edit_distance_grows_with_level(name):
    def mean_distance(level: int) -> float:
        d = [levenshtein(c, corrupt_text(name, c, level, seed)) for c in CAPTIONS for seed in range(3)]
        return sum(d) / len(d)

    low, high = mean_distance(1), mean_distance(7)
    assert 0 < low < high and high >= 2 * low, (name, low, high)


def test_random_delete_removes_words_in_order():
    for c in CAPTIONS:
        words = eda.normalize(c)
        lengths = []
        for level in (1, 7):
            out = corrupt_text("random_delete", c, level, seed=5).split()
            it = iter(words)
            assert all(w in it for w in out)  # an ordered subsequence of the caption's words
            assert 1 <= len(out) <= len(words)
            lengths.append(sum(len(corrupt_text("random_delete", c, level, s).split()) for s in range(10)))
        assert lengths[1] < lengths[0] < 10 * len(words)


def test_random_swap_keeps_the_words():
    for c in CAPTIONS:
        for level in (1, 4, 7):
            out = corrupt_text("random_swap", c, level, seed=3)
            assert sorted(out.split()) == sorted(eda.normalize(c))


def test_insert_punct_adds_marks_only():
    for c in CAPTIONS:
        n = len(c.split())
        for level in range(1, 8):
            out = corrupt_text("insert_punct", c, level, seed=level).split()
            marks = [w for w in out if w in eda.PUNCTUATION]
            assert [w for w in out if w not in eda.PUNCTUATION] == c.split()
            assert 1 <= len(marks) <= int(0.05 * level * n + 1)
    counts = [sum(corrupt_text("insert_punct", c, lv, s).count(" ") for c in CAPTIONS for s in range(5))
              for lv in (1, 7)]
    assert counts[1] > counts[0]


def test_eda_lowercases_and_keeps_only_a_to_z_as_the_reference_eda():
    assert eda.normalize("A dog's ball, on the mat-top!") == ["a", "dogs", "ball", "on", "the", "mat", "top"]
    # EDA's get_only_chars: every character outside a-z (digits, accents, emoji) becomes a space
    assert eda.normalize("Ein Hund läuft über die Straße 2 🐕") == ["ein", "hund", "l", "uft", "ber", "die", "stra", "e"]
    assert eda.random_swap("日本 東京", 0.35, 0) == "日本 東京"  # nothing left after cleaning: unchanged


def _synonym_words(words: list[str], depth: int) -> set[str]:
    """Words reachable from ``words`` through up to ``depth`` WordNet synonym hops."""
    terms, frontier = set(words), set(words)
    for _ in range(depth):
        frontier = {s for t in frontier for s in eda.synonyms(t)} - terms
        terms |= frontier
    return {x for t in terms for x in t.split()}


def test_synonym_types_use_wordnet(wordnet):
    assert "domestic dog" in eda.synonyms("dog") and eda.synonyms("dog") == tuple(sorted(eda.synonyms("dog")))
    for c in CAPTIONS:
        words = eda.normalize(c)
        for level in (1, 7):
            n = max(1, int(0.05 * level * len(words)))
            sr = corrupt_text("synonym_replace", c, level, seed=11).split()
            assert sr != words and set(sr) - set(words) <= _synonym_words(words, 1)
            ri = corrupt_text("random_insert", c, level, seed=11).split()
            it = iter(ri)
            assert all(w in it for w in words)  # the caption survives, words only inserted
            # as in EDA, a later insertion may pick a synonym of an earlier inserted one
            assert set(ri) - set(words) <= _synonym_words(words, n)
            # n = max(1, int(p * words)) insertions, each of a (possibly multi-word) synonym
            assert len(ri) >= len(words) + max(1, int(0.05 * level * len(words)))
        assert (len(corrupt_text("random_insert", c, 7, seed=1).split())
                > len(corrupt_text("random_insert", c, 1, seed=1).split()))


def test_stable_under_pythonhashseed(wordnet):
    script = ("import json, sys\n"
              "from qshift.corrupt.text import corrupt_text, MODEL_BASED, TEXT_CORRUPTIONS\n"
              f"caps = {CAPTIONS + ODD[2:]!r}\n"
              "out = {n: [corrupt_text(n, c, lv, 7 + lv) for c in caps for lv in (1, 4, 7)]\n"
              "       for n in TEXT_CORRUPTIONS.names() if n not in MODEL_BASED}\n"
              "print(json.dumps(out))\n")
    # the child hashes with another seed than this process (randomised unless PYTHONHASHSEED is set)
    env = {**os.environ, "PYTHONHASHSEED": "1" if os.environ.get("PYTHONHASHSEED") == "0" else "0"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    here = {n: [corrupt_text(n, c, lv, 7 + lv) for c in CAPTIONS + ODD[2:] for lv in (1, 4, 7)] for n in OFFLINE}
    assert child == here


@pytest.mark.parametrize("name", OFFLINE)
def test_odd_captions(name, request):
    _needs(name, request)
    for level in (1, 7):
        outs = [corrupt_text(name, c, level, seed=9) for c in ODD]
        assert all(isinstance(o, str) for o in outs)
        assert outs[:2] == ODD[:2]  # empty and whitespace-only: unchanged
        assert outs == [corrupt_text(name, c, level, seed=9) for c in ODD]


def test_bad_arguments():
    with pytest.raises(InputError, match="1..7"):
        corrupt_text("ocr", "a dog", 0, 1)
    with pytest.raises(InputError, match="1..7"):
        corrupt_text("ocr", "a dog", 8, 1)
    with pytest.raises(InputError, match="string"):
        corrupt_text("random_swap", None, 2, 1)
    with pytest.raises(InputError, match="2 captions but 1 seeds"):
        corrupt_texts("random_swap", ["a", "b"], 2, [1])
    with pytest.raises(UnknownNameError, match="valid choices: .*synonym_replace"):
        corrupt_text("synonym_replacement", "a dog", 2, 1)


def test_missing_wordnet_says_how_to_install(monkeypatch, tmp_path):
    import nltk

    monkeypatch.setenv("QSHIFT_NLTK_DATA", str(tmp_path / "nowhere"))
    monkeypatch.delenv("NLTK_DATA", raising=False)
    monkeypatch.setattr(nltk.data, "path", [])
    eda._wordnet.cache_clear()
    eda.synonyms.cache_clear()
    try:
        assert not eda.wordnet_available()
        with pytest.raises(eda.WordNetMissing, match=r"scripts/setup\.sh.*scripts/wordnet\.sh") as e:
            corrupt_text("synonym_replace", "a dog runs", 3, 1)
        assert isinstance(e.value, InputError) and str(tmp_path / "nowhere") in str(e.value)
        assert corrupt_text("random_swap", "a dog runs", 3, 1)  # the other types do not need it
    finally:
        eda._wordnet.cache_clear()
        eda.synonyms.cache_clear()


def test_wordnet_script_is_idempotent_and_lexnames_complete(wordnet):
    root = eda.nltk_data_dir() / "corpora" / "wordnet"
    lex = (root / "lexnames").read_text().splitlines()
    assert len(lex) == 45 and lex[0] == "00\tadj.all\t3" and lex[3] == "03\tnoun.Tops\t1" and lex[44] == "44\tadj.ppl\t3"
    proc = subprocess.run(["bash", str(REPO / "scripts" / "wordnet.sh")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == "", proc.stderr  # already complete: nothing to do


# -- model-based types ------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models on one torch thread: on a busy 2-core machine spin-waiting threads cost 10x."""
    from _tiny import one_torch_thread

    yield from one_torch_thread()


@pytest.fixture(scope="module")
def tiny_seq2seq(tmp_path_factory) -> Path:
    """A randomly initialised T5 (16-d, one layer) with a word-level tokenizer trained on a few
    sentences, saved with save_pretrained: the real loading and generation path, offline."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    path = tmp_path_factory.mktemp("tiny-seq2seq")
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CAPTIONS + list(seq2seq.DEFAULT_PREFIXES.values()),
                            trainers.WordLevelTrainer(special_tokens=["<pad>", "</s>", "<unk>"]))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(T5Config(vocab_size=len(fast), d_model=16, d_ff=32, d_kv=8, num_layers=1,
                                                num_decoder_layers=1, num_heads=2, pad_token_id=0, eos_token_id=1,
                                                decoder_start_token_id=0))
    torch.random.set_rng_state(state)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


def _cfg(model: Path | None = None, **generation) -> dict:
    cfg = yaml.safe_load((REPO / "params.yaml").read_text())
    text = cfg["corrupt"]["text"]
    text["generation"].update({"max_new_tokens": 6, "batch_size": 3, **generation})
    if model is not None:
        text["models"].update({n: str(model) for n in MODEL_BASED if n != "backtrans"})
        text["models"]["backtrans"] = [str(model), str(model)]
    return cfg


@pytest.mark.parametrize("name", MODEL_BASED)
def test_model_based_types_run_through_a_local_model(tiny_seq2seq, name):
    cfg = _cfg(tiny_seq2seq)
    texts = CAPTIONS + ODD
    seeds = list(range(len(texts)))
    out = corrupt_texts(name, texts, 3, seeds, cfg)
    assert len(out) == len(texts) and all(isinstance(o, str) for o in out)
    assert out[len(CAPTIONS):len(CAPTIONS) + 2] == ["", "   "]  # empty captions unchanged
    assert out == corrupt_texts(name, texts, 3, seeds, cfg)
    assert out[0] == corrupt_text(name, texts[0], 3, 0, cfg)  # batch of one = same rewrite
    assert corrupt_texts(name, texts, 7, seeds, cfg) == out  # beam search: the level changes nothing


def test_sampling_is_seeded_per_caption(tiny_seq2seq):
    cfg = _cfg(tiny_seq2seq, do_sample=True)
    seeds = [101, 202, 303, 404]
    out = corrupt_texts("formal", CAPTIONS, 4, seeds, cfg)
    assert out == corrupt_texts("formal", CAPTIONS, 4, seeds, cfg)
    # other batch partners and another batch size give each caption the same rewrite
    assert corrupt_texts("formal", CAPTIONS[::-1], 4, seeds[::-1], _cfg(tiny_seq2seq, do_sample=True,
                                                                      batch_size=1)) == out[::-1]
    assert corrupt_texts("formal", CAPTIONS, 4, [1, 2, 3, 4], cfg) != out  # the seed matters
    assert corrupt_texts("formal", CAPTIONS, 1, seeds, cfg) != corrupt_texts("formal", CAPTIONS, 7, seeds, cfg)


def test_model_not_configured_is_a_clear_skip():
    cfg = _cfg()
    cfg["corrupt"]["text"]["names"] = ["ocr", "formal", "random_swap", "backtrans"]
    with pytest.raises(seq2seq.ModelNotConfigured, match=r"corrupt\.text\.models\.formal") as e:
        corrupt_text("formal", "a dog", 2, 1, cfg)
    assert isinstance(e.value, InputError)
    with pytest.raises(seq2seq.ModelNotConfigured):
        corrupt_text("backtrans", "a dog", 2, 1)  # no params at all
    assert not_run_reason(cfg, "formal") == "not run (no model configured: corrupt.text.models.formal)"
    assert not_run_reason(cfg, "ocr") is None
    assert available_text_corruptions(cfg) == ["ocr", "random_swap"]
    cfg["corrupt"]["text"]["models"]["backtrans"] = ["a/b", "c/d"]
    assert available_text_corruptions(cfg) == ["ocr", "random_swap", "backtrans"]


@pytest.mark.parametrize("edit, match", [
    (lambda t: t["models"].update(backtrans="facebook/wmt19-en-de"), r"models\.backtrans must be a pair"),
    (lambda t: t["models"].update(formal=3), r"models\.formal must be a hub id"),
    (lambda t: t["models"].update(formality="x"), r"unknown key corrupt\.text\.models\.formality"),
    (lambda t: t["generation"].update(beams=2), r"generation\.beams; valid: batch_size"),
    (lambda t: t["generation"].update(batch_size=0), r"generation\.batch_size must be an integer >= 1"),
    (lambda t: t["generation"].update(do_sample="yes"), r"do_sample must be true or false"),
    (lambda t: t["prefixes"].update(formal=1), r"prefixes\.formal must be a string"),
    (lambda t: t.update(levels=[8]), r"text level 8 not in 1\.\.7"),
])
def test_bad_text_params(edit, match):
    cfg = _cfg()
    edit(cfg["corrupt"]["text"])
    with pytest.raises(ConfigError, match=match):
        validate_text_params(cfg)


def test_missing_local_model_folder(tmp_path):
    cfg = _cfg()
    cfg["corrupt"]["text"]["models"]["passive"] = str(tmp_path / "no-such-model")
    with pytest.raises(InputError, match=r"corrupt\.text\.models\.passive: model folder .*no-such-model"):
        corrupt_text("passive", "a dog runs", 2, 1, cfg)


# -- query sets and the stage ----------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_manifest(tmp_path_factory) -> Path:
    from _tiny import make_tiny_dataset

    return make_tiny_dataset(tmp_path_factory.mktemp("data") / "builtin", n_test=4)


def test_build_text_queries_batches_model_types(tiny_manifest, tiny_seq2seq, tmp_path):
    cfg = _cfg(tiny_seq2seq)
    out = tmp_path / "backtrans-s2.json"
    n = build_text_queries(tiny_manifest, out, "backtrans", 2, seed=42, progress=False, cfg=cfg)
    doc = json.loads(out.read_text())
    sents = [s for im in doc["images"] for s in im["sentences"]]
    assert n == len(sents) == 20 and all(isinstance(s["raw"], str) and s["clean"] for s in sents)
    assert doc["meta"]["seq2seq"]["models"] == [str(tiny_seq2seq)] * 2
    out2 = tmp_path / "again.json"
    build_text_queries(tiny_manifest, out2, "backtrans", 2, seed=42, progress=False, cfg=cfg)
    assert json.loads(out2.read_text())["images"] == doc["images"]
    with pytest.raises(seq2seq.ModelNotConfigured):
        build_text_queries(tiny_manifest, tmp_path / "x.json", "casual", 2, seed=42, progress=False, cfg=_cfg())
    assert not (tmp_path / "x.json").exists()


def _stage(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "QSHIFT_PROGRESS": "0", "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, str(REPO / "stages" / "corrupt_text.py"), "--params",
                           str(REPO / "params.yaml"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_stage_writes_offline_queries_and_refuses_unconfigured_models(tiny_manifest, tmp_path):
    bench = yaml.safe_load((REPO / "params.yaml").read_text())["benchmark"]
    shutil.copytree(tiny_manifest.parent, tmp_path / "data" / bench)
    proc = _stage(tmp_path, "--corruption", "insert_punct", "--level", "3")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "data" / "queries" / bench / "text" / "insert_punct-s3.json").read_text())
    sents = [s for im in doc["images"] for s in im["sentences"]]
    assert len(sents) == 20 and all(s["raw"] != s["clean"] for s in sents)
    proc = _stage(tmp_path, "--corruption", "formal", "--level", "2")
    assert proc.returncode == 2
    assert "corrupt.text.models.formal" in proc.stderr and "Traceback" not in proc.stderr
