"""The composed image retrieval task's torch-free half: what Snakemake needs to plan a CIR
pipeline — the combiner names, the parameter checks, a cell's corruptions and fingerprint extra — so that
a dry run or a no-op rerun (and each SLURM job's own Snakemake) does not import torch
(:mod:`qshift.cir` holds the queries, the composed encoder and the scoring; it re-exports these).
"""

from __future__ import annotations

from .errors import ConfigError

COMBINERS = ("sum", "trained")
# pretrain.combiner: the defaults (the builtin-cir preset overrides only what it changes)
COMBINER_DEFAULTS = {"hidden": 256, "steps": 1500, "batch_size": 256, "lr": 1.0e-3, "weight_decay": 1.0e-4,
                     "tau": 0.05, "hard_negatives": True}


def is_checkpoint(kind: str) -> bool:
    """``model.combiner`` names a CLIP4Cir checkpoint file (not ``sum`` / ``trained``)."""
    return isinstance(kind, str) and kind not in COMBINERS and (kind.endswith((".pt", ".pth", ".ckpt")) or "/" in kind)


def combiner_kind(cfg: dict) -> str:
    return str(cfg["model"].get("combiner", "trained"))


def validate_cir(cfg: dict) -> None:
    kind = combiner_kind(cfg)
    if kind not in COMBINERS and not is_checkpoint(kind):
        raise ConfigError(f"params: model.combiner {kind!r}; valid: {', '.join(COMBINERS)} or the path of a "
                          f"CLIP4Cir combiner checkpoint (.pt)")
    from .config import trains_model

    if kind == "trained" and "source" in (cfg.get("model") or {}) and not trains_model(cfg):
        raise ConfigError(f"params: model.combiner: trained is the combiner the built-in CIR benchmark's pretrain "
                          f"stage fits beside its CLIP; model.source {cfg['model']['source']!r} is a pretrained "
                          f"model: use model.combiner: sum or the path of a CLIP4Cir combiner checkpoint (.pt)")
    hp = (cfg.get("pretrain") or {}).get("combiner") or {}
    if not isinstance(hp, dict):
        raise ConfigError(f"params: pretrain.combiner must be a mapping, got {hp!r}")
    unknown = sorted(set(hp) - set(COMBINER_DEFAULTS))
    if unknown:
        raise ConfigError(f"params: pretrain.combiner has unknown key(s) {', '.join(unknown)}; valid: "
                          f"{', '.join(COMBINER_DEFAULTS)}")
    _validate_tune(cfg)
    # streams.cir (multi-modal query streams): validated by the task's hook, qshift.cir_streams.validate


def _validate_tune(cfg: dict) -> None:
    """tune.image / tune.text may not name what a composed stream (streams.cir) reports either (the
    grid's own cells: qshift.tune.validate_tune)."""
    t = cfg.get("tune") or {}
    if not isinstance(t, dict) or not t.get("enabled"):
        return
    from .cir_streams import domain_parts

    img, txt = t.get("image") or {}, t.get("text") or {}
    for name, spec in ((cfg.get("streams") or {}).get("cir") or {}).items():
        try:
            parts = domain_parts(spec)
        except (AttributeError, TypeError, ValueError):
            continue  # a malformed stream: its own validator (qshift.cir_streams.validate) names the key
        images = {im[0] for _, im, _ in parts if im is not None}
        texts = {tx for _, _, tx in parts if tx is not None}
        for c in img.get("corruptions") or []:
            if c in images:
                raise ConfigError(f"params: tune.image.corruptions has {c!r}, which the composed stream "
                                  f"streams.cir.{name} reports; use validation-only types, e.g. gaussian_blur, spatter")
        for c in txt.get("corruptions") or []:
            if (c, int(txt.get("level") or 0)) in texts:
                raise ConfigError(f"params: tune.text has {c!r} at level {txt.get('level')}, a cell the composed "
                                  f"stream streams.cir.{name} reports; pick a type or level it does not report")


def query_corruptions(direction: str) -> tuple[str, tuple]:
    """A cell's corruption (qshift.cells.check_cell): an image corruption (of the reference) or a
    text corruption (of the modification)."""
    from .corrupt import IMAGE_CORRUPTIONS, TEXT_CORRUPTIONS

    return "image or text corruption", (IMAGE_CORRUPTIONS, TEXT_CORRUPTIONS)


def code_extra(cfg: dict) -> str:
    """What a cell's fingerprint covers beyond the task's code files: a CLIP4Cir combiner
    checkpoint's bytes (not only its path)."""
    from .cells import file_hash

    kind = combiner_kind(cfg)
    return "+" + (file_hash(kind) or "-") if is_checkpoint(kind) else ""
