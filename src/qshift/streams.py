"""Multi-domain query streams: mixed (REST's multi-distribution shift) and sequential.

A *stream* is one query set whose queries come from several domains (a domain is one
(corruption, severity) cell, labelled ``"<corruption>-s<severity>"`` like the results files):

- ``mixed``: every query draws its domain, uniformly and seeded, from the stream's set, so
  each batch mixes shifts (REST's multi-distribution shift);
- ``sequential``: the queries are split into equal blocks, one per domain in the listed
  order (corruptions x severities), and arrive block by block, so forgetting of an earlier
  domain can be measured against the method adapted to that domain alone.

Each query is corrupted with the same seed as in the per-corruption query set
(``derive_seed(dataset, id, corruption, severity)``), so a stream's query is bit-identical
to the same query in that domain's own set: the stream differs only in what surrounds it.

On disk a stream is a query set in the dataset's manifest format (image streams: a folder
of images + ``manifest.json``; text streams: a manifest) whose entries (image streams) or
sentences (text streams) carry their ``domain``; ``meta.stream`` holds the definition and,
for sequential streams, the arrival ``order`` (indices into the split's queries).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from .progress import tqdm

from .data.manifest import Split, image_root, read_manifest, write_manifest
from .errors import ConfigError, InputError
from .io import atomic_dir, derive_seed, query_seed, read_json

KINDS = ("mixed", "sequential")
NAME = re.compile(r"^[a-z0-9_]+$")
# the per-direction params key holding the streams, and the key of a stream's levels
SIDES = {"i2t": ("image", "severities"), "t2i": ("text", "levels")}


def domain_label(corruption: str, severity: int) -> str:
    return f"{corruption}-s{int(severity)}"


def stream_domains(spec: dict, direction: str) -> list[tuple[str, int]]:
    """The stream's (corruption, severity) domains in order: corruptions x severities."""
    from .tasks import hook

    task_domains = hook(direction, "stream_domains")  # video-audio: qshift.va.reported_domains
    if task_domains is not None:
        return task_domains(spec, direction)
    levels = spec[SIDES[direction][1]]
    return [(c, int(s)) for c in spec["corruptions"] for s in levels]


def validate_stream(name: str, spec, direction: str, reserved: set[str]) -> None:
    """One stream definition of ``streams.<side>``; errors name the key and the valid choices."""
    from .corrupt import IMAGE_CORRUPTIONS, TEXT_CORRUPTIONS

    side, lkey = SIDES[direction]
    where = f"params: streams.{side}.{name}"
    if not isinstance(name, str) or not NAME.match(name):
        raise ConfigError(f"params: streams.{side} has stream name {name!r}; names use a-z, 0-9 and _ only")
    if name in reserved:
        raise ConfigError(f"{where}: the name collides with a corruption name (or 'clean'); "
                          f"stream and corruption results share one path pattern, pick another name")
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} must be a mapping with keys kind, corruptions, {lkey}")
    unknown = set(spec) - {"kind", "corruptions", lkey}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                          f"valid: kind, corruptions, {lkey}")
    if spec.get("kind") not in KINDS:
        raise ConfigError(f"{where}.kind is {spec.get('kind')!r}; valid: {', '.join(KINDS)}")
    registry = IMAGE_CORRUPTIONS if side == "image" else TEXT_CORRUPTIONS
    corruptions, levels = spec.get("corruptions"), spec.get(lkey)
    if not isinstance(corruptions, list) or not corruptions:
        raise ConfigError(f"{where}.corruptions must be a non-empty list")
    for c in corruptions:
        registry.check(c)
    if len(set(corruptions)) != len(corruptions):
        raise ConfigError(f"{where}.corruptions lists a corruption twice: {corruptions}")
    top = 5 if side == "image" else 7
    if not isinstance(levels, list) or not levels:
        raise ConfigError(f"{where}.{lkey} must be a non-empty list")
    for s in levels:
        if s not in range(1, top + 1):
            raise ConfigError(f"{where}.{lkey} has {s!r}; valid: 1..{top}")
    if len(set(levels)) != len(levels):
        raise ConfigError(f"{where}.{lkey} lists a value twice: {levels}")
    if len(corruptions) * len(levels) < 2:
        raise ConfigError(f"{where} has a single domain; a stream needs at least two "
                          f"(corruptions x {lkey})")


# -- building a stream ----------------------------------------------------------------------------

def assign_domains(n: int, n_domains: int, kind: str, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(domain index per query, arrival order or None).

    mixed: i.i.d. uniform draws, order left to the run's seeded permutation (None).
    sequential: a seeded permutation cut into ``n_domains`` near-equal blocks in order;
    block k's queries get domain k, and the permutation is the arrival order.
    """
    if kind not in KINDS:
        raise ConfigError(f"stream kind {kind!r}; valid: {', '.join(KINDS)}")
    if n < n_domains:
        raise InputError(f"a stream over {n_domains} domains needs at least as many queries, got {n}")
    rng = np.random.default_rng(seed)
    if kind == "mixed":
        return rng.integers(0, n_domains, size=n), None
    order = rng.permutation(n)
    dom = np.empty(n, dtype=np.int64)
    for k, block in enumerate(np.array_split(order, n_domains)):
        dom[block] = k
    return dom, order


def _stream_meta(name: str, spec: dict, direction: str, seed: int, order: np.ndarray | None,
                 manifest: Path, rel_to: Path) -> dict:
    domains = [domain_label(c, s) for c, s in stream_domains(spec, direction)]
    stream = {"name": name, "kind": spec["kind"], "domains": domains, "seed": seed}
    if order is not None:
        stream["order"] = [int(i) for i in order]
    return {"source_manifest": os.path.relpath(manifest, rel_to), "modality": SIDES[direction][0],
            "stream": stream}


def build_image_stream(manifest: str | Path, out_dir: str | Path, name: str, spec: dict, seed: int,
                       quality: int = 95, progress: bool = True, draw: int | None = None) -> dict[str, int]:
    """An image query stream (i2t): each test image corrupted by its domain; returns counts per domain.
    ``draw``: the corruptions drawn for another run seed (seed_corruptions), as in that seed's sets."""
    from .corrupt import corrupt_image

    manifest = Path(manifest)
    doc = read_manifest(manifest)
    root = image_root(doc, manifest)
    dataset = doc.get("dataset", manifest.parent.name)
    images = [im for im in doc["images"] if im["split"] == "test"]
    if not images:
        raise InputError(f"manifest {manifest} has no test split to corrupt")
    domains = stream_domains(spec, "i2t")
    dom, order = assign_domains(len(images), len(domains), spec["kind"], derive_seed("stream", dataset, name, seed))
    entries = []
    with atomic_dir(out_dir) as tmp:
        for im, d in tqdm(zip(images, dom), total=len(images), desc=f"stream {name}", unit="img",
                          disable=not progress, leave=False):
            corruption, severity = domains[d]
            src = root / im.get("filepath", "") / im["filename"]
            try:
                with Image.open(src) as pil:
                    arr = np.asarray(pil.convert("RGB"))
            except (OSError, UnidentifiedImageError) as e:
                raise InputError(f"cannot read image {src}: {e}") from None
            # the per-corruption set's seed: the same query is bit-identical in both
            out = corrupt_image(corruption, arr, severity, query_seed(dataset, im["imgid"], corruption, severity, draw))
            fname = f"{Path(im['filename']).stem}.jpg"
            Image.fromarray(out).save(tmp / fname, quality=quality)
            entries.append({**im, "filepath": "", "filename": fname, "domain": domain_label(corruption, severity)})
        meta = _stream_meta(name, spec, "i2t", seed, order, manifest, Path(out_dir))
        if draw is not None:
            meta["draw_seed"] = int(draw)
        write_manifest(tmp / "manifest.json", dataset, entries, image_root=".", meta={**meta, "jpeg_quality": quality})
    return dict(Counter(e["domain"] for e in entries))


def build_text_stream(manifest: str | Path, out: str | Path, name: str, spec: dict, seed: int,
                      progress: bool = True, draw: int | None = None) -> dict[str, int]:
    """A caption query stream (t2i): each test caption corrupted by its domain (images stay clean)."""
    from .corrupt import corrupt_text

    manifest, out = Path(manifest), Path(out)
    doc = read_manifest(manifest)
    dataset = doc.get("dataset", manifest.parent.name)
    images = [im for im in doc["images"] if im["split"] == "test"]
    if not images:
        raise InputError(f"manifest {manifest} has no test split to corrupt")
    domains = stream_domains(spec, "t2i")
    n = sum(len(im["sentences"]) for im in images)
    dom, order = assign_domains(n, len(domains), spec["kind"], derive_seed("stream", dataset, name, seed))
    entries, counts, q = [], Counter(), 0
    for im in tqdm(images, desc=f"stream {name}", unit="img", disable=not progress, leave=False):
        sents = []
        for s in im["sentences"]:
            corruption, level = domains[dom[q]]
            q += 1
            raw = corrupt_text(corruption, s["raw"], level, query_seed(dataset, s["sentid"], corruption, level, draw))
            label = domain_label(corruption, level)
            counts[label] += 1
            sents.append({**s, "raw": raw, "tokens": raw.split(), "clean": s["raw"], "domain": label})
        entries.append({**im, "sentences": sents})
    root = os.path.relpath(image_root(doc, manifest), out.parent)
    meta = _stream_meta(name, spec, "t2i", seed, order, manifest, out.parent)
    if draw is not None:
        meta["draw_seed"] = int(draw)
    write_manifest(out, dataset, entries, image_root=root, meta=meta)
    return dict(counts)


# -- reading a stream ------------------------------------------------------------------------------

def stream_info(split: Split, direction: str) -> dict | None:
    """For a stream's query split: {name, kind, domains, order (array or None), query_domain
    (label per query, in the split's query order)}; None for an ordinary one-domain query set.

    The per-query domains are read from the manifest's entries (image streams) or sentences
    (text streams), the one place they are written.
    """
    from .tasks import hook

    task_info = hook(direction, "stream_info")  # video-audio: clip-set streams (qshift.va)
    if task_info is not None:
        return task_info(split, direction)
    stream = split.meta.get("stream")
    if not stream:
        return None
    modality = split.meta.get("modality")
    if modality != SIDES[direction][0]:
        raise InputError(f"query stream {split.manifest} corrupts {modality} queries; direction {direction} "
                         f"needs a {SIDES[direction][0]} stream")
    doc = read_json(split.manifest, "manifest")
    images = [im for im in doc["images"] if im["split"] == "test"]
    if direction == "i2t":
        labels = [im.get("domain") for im in images]
    else:
        labels = [s.get("domain") for im in images for s in im["sentences"]]
    return checked_info(split, stream, labels, split.n_images if direction == "i2t" else split.n_captions)


def checked_info(split, stream: dict, labels: list, n: int, unit: str = "query", units: str = "queries") -> dict:
    """A stream's :func:`stream_info` from its per-query domain ``labels`` (one per each of the
    ``n`` queries) and ``meta.stream``; errors name the manifest (used by the tasks' streams too)."""
    if len(labels) != n or any(lab is None for lab in labels):
        raise InputError(f"query stream {split.manifest}: every {unit} needs a 'domain' "
                         f"({sum(lab is None for lab in labels)} of {len(labels)} lack one)")
    order = stream.get("order")
    if order is not None:
        order = np.asarray(order, dtype=np.int64)
        if sorted(order.tolist()) != list(range(n)):
            raise InputError(f"query stream {split.manifest}: meta.stream.order is not a permutation of "
                             f"its {n} {units}")
    return {"name": stream.get("name"), "kind": stream.get("kind"), "domains": list(stream.get("domains", [])),
            "order": order, "query_domain": labels}


def majority(labels: list[str], ranking: list[str]) -> str:
    """The most frequent label; ties go to the label listed first in ``ranking`` (stream order)."""
    counts = Counter(labels)
    top = max(counts.values())
    tied = [lab for lab in counts if counts[lab] == top]
    return min(tied, key=lambda lab: ranking.index(lab) if lab in ranking else len(ranking))
