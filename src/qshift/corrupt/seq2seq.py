"""Sentence-level text corruptions with transformers seq2seq models (Formal, Casual,
Passive, Active, Backtrans).

The benchmark rewrites captions with Styleformer's T5 style-transfer models (casual->formal,
formal->casual, active->passive, passive->active, each prompted with a task prefix) and
back-translates en->de->en (facebook/wmt19). None of these weights ship in a package, so a
type runs only when ``params.yaml`` names its model(s) under ``corrupt.text.models`` — a hub
id or a local ``save_pretrained`` folder, loaded with ``AutoTokenizer`` +
``AutoModelForSeq2SeqLM``; ``backtrans`` takes a pair ``[en->de, de->en]``. A type with no
model raises :class:`ModelNotConfigured`; the pipeline skips it and the report shows it as
"not run" — nothing else ever stands in under its name.

What the level means: the reference applies each sentence transform once (one rate), so by
default decoding is deterministic beam search and **the level does not change the output**.
With ``corrupt.text.generation.do_sample: true`` the level sets the sampling temperature,
``T = temperature_per_level * level`` (top-k filtered, one beam), so higher levels drift
further from the model's best rewrite. Sampling is seeded per caption (Gumbel-max noise from
a generator seeded by the caption's seed and the decoding step), so a caption's rewrite does
not depend on which other captions share its batch or on the job order.

Captions are generated in batches (``generation.batch_size``, sorted by length to limit
padding) on the pipeline's device; empty or whitespace-only captions are returned unchanged,
and so is a caption whose rewrite comes out empty (the reference keeps the original then).
"""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from ..progress import tqdm

from ..errors import ConfigError, InputError
from ..io import derive_seed

SENTENCE_TYPES = ("formal", "casual", "passive", "active", "backtrans")
# the task prefixes Styleformer's T5 models were trained with ("" = none, e.g. translation)
DEFAULT_PREFIXES = {"formal": "transfer Casual to Formal: ", "casual": "transfer Formal to Casual: ",
                    "passive": "transfer Active to Passive: ", "active": "transfer Passive to Active: ",
                    "backtrans": ""}
DEFAULT_GENERATION = {"batch_size": 32, "max_new_tokens": 64, "num_beams": 4, "do_sample": False, "top_k": 50,
                      "temperature_per_level": 0.25}


class ModelNotConfigured(InputError):
    """A model-based text corruption was asked for but ``corrupt.text.models.<name>`` is empty."""

    def __init__(self, name: str):
        self.name = name
        super().__init__(f"text corruption {name!r} needs a seq2seq model but none is configured: set "
                         f"corrupt.text.models.{name} in params.yaml to a hub id or a local model folder"
                         + (" pair [en->de, de->en]" if name == "backtrans" else "")
                         + f" (or drop {name!r} from corrupt.text.names)")


def _text_cfg(cfg: dict | None) -> dict:
    return ((cfg or {}).get("corrupt") or {}).get("text") or {}


def model_sources(cfg: dict | None, name: str) -> list[str] | None:
    """The model(s) configured for a sentence type: one source, or two for ``backtrans``;
    None when none is configured. Raises ConfigError for a malformed entry."""
    if name not in SENTENCE_TYPES:
        raise ConfigError(f"{name!r} is not a model-based text corruption; those are {', '.join(SENTENCE_TYPES)}")
    value = (_text_cfg(cfg).get("models") or {}).get(name)
    if value is None:
        return None
    key = f"corrupt.text.models.{name}"
    if name == "backtrans":
        if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, str) and v.strip()
                                                                              for v in value)):
            raise ConfigError(f"params: {key} must be a pair [en->de model, de->en model] "
                              f"(hub ids or local folders), got {value!r}")
        return [v.strip() for v in value]
    if not (isinstance(value, str) and value.strip()):
        raise ConfigError(f"params: {key} must be a hub id or a local model folder (or null), got {value!r}")
    return [value.strip()]


def generation_settings(cfg: dict | None) -> dict:
    """``corrupt.text.generation`` over the defaults, type-checked."""
    gen = dict(DEFAULT_GENERATION)
    given = _text_cfg(cfg).get("generation") or {}
    if not isinstance(given, dict):
        raise ConfigError(f"params: corrupt.text.generation must be a mapping, got {given!r}")
    for k, v in given.items():
        if k not in DEFAULT_GENERATION:
            raise ConfigError(f"params: unknown key corrupt.text.generation.{k}; valid: {', '.join(DEFAULT_GENERATION)}")
        gen[k] = v
    for k in ("batch_size", "max_new_tokens", "num_beams", "top_k"):
        if isinstance(gen[k], bool) or not isinstance(gen[k], int) or gen[k] < 1:
            raise ConfigError(f"params: corrupt.text.generation.{k} must be an integer >= 1, got {gen[k]!r}")
    if not isinstance(gen["do_sample"], bool):
        raise ConfigError(f"params: corrupt.text.generation.do_sample must be true or false, got {gen['do_sample']!r}")
    t = gen["temperature_per_level"]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or t <= 0:
        raise ConfigError(f"params: corrupt.text.generation.temperature_per_level must be > 0, got {t!r}")
    return gen


def prefix(cfg: dict | None, name: str) -> str:
    given = _text_cfg(cfg).get("prefixes") or {}
    value = given.get(name, DEFAULT_PREFIXES[name])
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConfigError(f"params: corrupt.text.prefixes.{name} must be a string, got {value!r}")
    return value


def validate(cfg: dict) -> None:
    """Check the model-based part of ``corrupt.text`` (called by config validation)."""
    text = _text_cfg(cfg)
    for section in ("models", "prefixes"):
        entries = text.get(section) or {}
        if not isinstance(entries, dict):
            raise ConfigError(f"params: corrupt.text.{section} must be a mapping, got {entries!r}")
        for k in entries:
            if k not in SENTENCE_TYPES:
                raise ConfigError(f"params: unknown key corrupt.text.{section}.{k}; valid: {', '.join(SENTENCE_TYPES)}")
    for name in SENTENCE_TYPES:
        model_sources(cfg, name)
        prefix(cfg, name)
    generation_settings(cfg)


# -- models -----------------------------------------------------------------------------------
class Seq2Seq:
    """One tokenizer + seq2seq model on a device."""

    def __init__(self, source: str, device: Any, key: str):
        import torch
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        looks_local = source.startswith((".", "/", "~")) or Path(source).expanduser().exists()
        if looks_local and not Path(source).expanduser().is_dir():
            raise InputError(f"{key}: model folder {source!r} does not exist")
        path = str(Path(source).expanduser()) if looks_local else source
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForSeq2SeqLM.from_pretrained(path).to(device).eval()
        except ImportError as e:  # Marian/T5 slow tokenizers need sentencepiece, FSMT (wmt19) sacremoses
            raise InputError(f"{key}: the tokenizer of {source!r} needs a package that is not installed ({e}); "
                             "install it, e.g. `pip install sentencepiece sacremoses`") from None
        except (OSError, ValueError, KeyError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InputError(f"{key}: cannot load seq2seq model {source!r} ({first}); give a local "
                             "save_pretrained folder or a hub id reachable from this machine") from None
        self.device, self.source = device, source
        self.torch = torch

    def generate(self, texts: list[str], seeds: list[int], gen: dict, temperature: float | None) -> list[str]:
        from transformers import LogitsProcessorList

        torch = self.torch
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True).to(self.device)
        kwargs: dict[str, Any] = {"max_new_tokens": gen["max_new_tokens"], "do_sample": False}
        if temperature is None:
            kwargs["num_beams"] = gen["num_beams"]
        else:  # greedy over Gumbel-perturbed logits = per-caption seeded sampling
            kwargs["num_beams"] = 1
            kwargs["logits_processor"] = LogitsProcessorList([_SeededGumbel(seeds, temperature, gen["top_k"])])
        with torch.inference_mode():
            out = self.model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], **kwargs)
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True,
                                                               clean_up_tokenization_spaces=True)]


class _SeededGumbel:
    """Temperature + top-k + Gumbel noise drawn from a per-row generator seeded by (caption
    seed, decoding step): greedy decoding then samples from softmax(top-k(logits) / T)
    independently per caption, whatever the batch."""

    def __init__(self, seeds: Sequence[int], temperature: float, top_k: int):
        self.seeds, self.temperature, self.top_k = list(seeds), float(temperature), int(top_k)

    def __call__(self, input_ids, scores):
        import torch

        scores = scores.float() / self.temperature
        if self.top_k < scores.shape[-1]:
            kth = torch.topk(scores, self.top_k, dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        step = input_ids.shape[1]
        noise = torch.empty(scores.shape, dtype=torch.float32)
        for row, seed in enumerate(self.seeds):
            g = torch.Generator().manual_seed(derive_seed(seed, step))
            u = torch.rand(scores.shape[-1], generator=g).clamp_(1e-10, 1 - 1e-7)
            noise[row] = -torch.log(-torch.log(u))
        return scores + noise.to(scores.device)


@lru_cache(maxsize=2)
def _load(source: str, device: str, key: str) -> Seq2Seq:
    return Seq2Seq(source, device, key)


def corrupt_sentences(name: str, texts: Sequence[str], level: int, seeds: Sequence[int], cfg: dict | None,
                      progress: bool = False) -> list[str]:
    """Rewrite ``texts`` with the model(s) configured for ``name``, in batches."""
    from ..runtime import pick_device

    sources = model_sources(cfg, name)
    if sources is None:
        raise ModelNotConfigured(name)
    gen = generation_settings(cfg)
    pre = prefix(cfg, name)
    temperature = gen["temperature_per_level"] * level if gen["do_sample"] else None
    device = str(pick_device(str((cfg or {}).get("device", "auto"))))
    key = f"corrupt.text.models.{name}"
    models = [_load(src, device, key) for src in sources]

    out = list(texts)
    todo = [i for i, t in enumerate(texts) if t.strip()]  # empty captions stay as they are
    todo.sort(key=lambda i: len(texts[i]))
    bs = gen["batch_size"]
    batches = [todo[i:i + bs] for i in range(0, len(todo), bs)]
    for idx in tqdm(batches, desc=f"{name} l{level}", unit="batch", disable=not progress, leave=False):
        cur = [pre + texts[i].strip() for i in idx]
        for hop, model in enumerate(models):  # backtrans: en->de, then de->en
            cur = model.generate(cur, [derive_seed(seeds[i], hop) for i in idx], gen, temperature)
        for i, t in zip(idx, cur):
            out[i] = t or texts[i]  # an empty rewrite keeps the caption (as the reference does)
    return out


def provenance(cfg: dict | None, name: str, level: int) -> dict:
    """What produced a model-based query set (written into its manifest)."""
    gen = generation_settings(cfg)
    return {"models": model_sources(cfg, name), "prefix": prefix(cfg, name), "generation": copy.deepcopy(gen),
            "temperature": gen["temperature_per_level"] * level if gen["do_sample"] else None,
            "level_changes_output": bool(gen["do_sample"])}
