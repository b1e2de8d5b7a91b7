"""Multi-modal query streams for composed image retrieval (REST's "multi-modal query shift").

RECONSTRUCTION: REST names a multi-modal query shift for composed queries but publishes no
protocol for it (docs/rest.md); this is QShift's reading of it, built like the image-text
streams (:mod:`qshift.streams`). A stream ``streams.cir.<name>``::

    {kind: mixed | sequential,
     image: {corruptions: [...], severities: [...]},   # reference-image domains (any part may be absent)
     text:  {corruptions: [...], levels: [...]},       # modification-text domains
     joint: {image: {corruptions, severities},         # both parts shifted at once: every
             text: {corruptions, levels}}}             #   (image cell, text cell) pair

has the domains image-side cells (corruptions x severities), then text-side cells (corruptions x
levels), labelled as the cells' own (``<corruption>-s<severity>``), then the joint pairs, labelled
``<image cell>+<text cell>`` (e.g. ``gaussian_noise-s3+ocr-s2``). Every test triplet gets one
domain (mixed: seeded i.i.d. draws; sequential: seeded blocks in order, the arrival order in
``meta.stream.order``; seed ``derive_seed("stream", dataset, name, seed)`` as the other streams).
An image-side domain corrupts the triplet's reference exactly as that cell's query set does (the
``corrupt_images`` code path: same seed, implementation and JPEG quality, so the file is
byte-identical to the cell's); its modification text stays clean. A text-side domain corrupts the
modification text exactly as that cell's query set does (``corrupt_texts_info``, the per-caption
seed); its reference stays clean (a copy of the dataset's file). A joint domain does both: the
reference is the image cell's file and the modification the text cell's text. A joint domain has
no cell of its own, so the report's "alone" column shows none for it.

On disk (``data/queries/<benchmark>/cir-stream/<name>/``): ``<domain>/<image>.jpg`` (one file
per (reference image, image domain) actually used), ``clean/<image>`` (the clean references the
text-side triplets use) and ``manifest.json``: the dataset's test entries in their order (so query
i of the stream is query i of every cell's set), each triplet (sentence) with its ``domain`` and
its ``reference`` file (relative to the stream folder; :func:`qshift.cir.load_triplets` reads it,
as several triplets of one image may carry different domains).
"""

from __future__ import annotations

import os
import shutil
from collections import Counter, defaultdict
from pathlib import Path

from .errors import ConfigError, InputError

# the keys of a side, its levels key, and its top level
SIDE_KEYS = {"image": ("severities", 5), "text": ("levels", 7)}


def _registry(side: str):
    from .corrupt import IMAGE_CORRUPTIONS, TEXT_CORRUPTIONS

    return IMAGE_CORRUPTIONS if side == "image" else TEXT_CORRUPTIONS


def _cells(part: dict | None, side: str) -> list[tuple[str, int]]:
    lkey = SIDE_KEYS[side][0]
    part = part or {}
    return [(c, int(s)) for c in part.get("corruptions") or [] for s in part.get(lkey) or []]


def domain_parts(spec: dict) -> list[tuple[str, tuple[str, int] | None, tuple[str, int] | None]]:
    """(label, image cell or None, text cell or None) of each domain, in the stream's order:
    image-side cells, text-side cells, then the joint (image cell, text cell) pairs."""
    from .streams import domain_label

    out = [(domain_label(*c), c, None) for c in _cells(spec.get("image"), "image")]
    out += [(domain_label(*t), None, t) for t in _cells(spec.get("text"), "text")]
    joint = spec.get("joint") or {}
    out += [(f"{domain_label(*c)}+{domain_label(*t)}", c, t)
            for c in _cells(joint.get("image"), "image") for t in _cells(joint.get("text"), "text")]
    return out


def stream_domains(spec: dict, direction: str | None = None) -> list[tuple[str, int]]:
    """The stream's domains as (corruption, severity/level) pairs whose ``domain_label`` is the
    domain's label (a joint domain: (``<image cell>+<text corruption>``, level), which names no cell)."""
    from .streams import domain_label

    return [txt if img is None else img if txt is None else (f"{domain_label(*img)}+{txt[0]}", txt[1])
            for _, img, txt in domain_parts(spec)]


def validate_cir_stream(name, spec, reserved: set[str]) -> None:
    """One ``streams.cir.<name>``; errors name the key and the valid choices."""
    from .streams import KINDS, NAME

    where = f"params: streams.cir.{name}"
    if not isinstance(name, str) or not NAME.match(name):
        raise ConfigError(f"params: streams.cir has stream name {name!r}; names use a-z, 0-9 and _ only")
    if name in reserved:
        raise ConfigError(f"{where}: the name collides with a corruption name (or 'clean'); stream and corruption "
                          f"results share one path pattern, pick another name")
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} must be a mapping with keys kind, image, text, joint")
    unknown = set(spec) - {"kind", "image", "text", "joint"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; valid: kind, image, "
                          f"text, joint")
    if spec.get("kind") not in KINDS:
        raise ConfigError(f"{where}.kind is {spec.get('kind')!r}; valid: {', '.join(KINDS)}")
    if not spec.get("image") and not spec.get("text") and not spec.get("joint"):
        raise ConfigError(f"{where} has no domains; give image: {{corruptions, severities}}, text: {{corruptions, "
                          f"levels}} and/or joint: {{image: ..., text: ...}}")
    parts = [(f"{where}.{side}", side, spec.get(side)) for side in SIDE_KEYS]
    joint = spec.get("joint")
    if joint is not None:
        if not isinstance(joint, dict) or set(joint) != {"image", "text"}:
            raise ConfigError(f"{where}.joint must be a mapping with both keys image: {{corruptions, severities}} "
                              f"and text: {{corruptions, levels}} (each domain corrupts both parts)")
        parts += [(f"{where}.joint.{side}", side, joint[side]) for side in SIDE_KEYS]
    for w, side, part in parts:
        lkey, top = SIDE_KEYS[side]
        if part is None:
            continue
        if not isinstance(part, dict):
            raise ConfigError(f"{w} must be a mapping with keys corruptions, {lkey}")
        bad = set(part) - {"corruptions", lkey}
        if bad:
            raise ConfigError(f"{w}: unknown key(s) {', '.join(sorted(map(str, bad)))}; valid: corruptions, {lkey}")
        cs, levels = part.get("corruptions"), part.get(lkey)
        if not isinstance(cs, list) or not cs:
            raise ConfigError(f"{w}.corruptions must be a non-empty list")
        for c in cs:
            if c not in _registry(side):
                raise ConfigError(f"{w}.corruptions has {c!r}; valid: {', '.join(_registry(side).names())}")
        if len(set(cs)) != len(cs):
            raise ConfigError(f"{w}.corruptions lists a corruption twice: {cs}")
        if not isinstance(levels, list) or not levels:
            raise ConfigError(f"{w}.{lkey} must be a non-empty list")
        for s in levels:
            if isinstance(s, bool) or s not in range(1, top + 1):
                raise ConfigError(f"{w}.{lkey} has {s!r}; valid: 1..{top}")
        if len(set(levels)) != len(levels):
            raise ConfigError(f"{w}.{lkey} lists a value twice: {levels}")
    if len(stream_domains(spec)) < 2:
        raise ConfigError(f"{where} has a single domain; a stream needs at least two (image corruptions x "
                          f"severities + text corruptions x levels + joint pairs)")


def validate(cfg: dict) -> None:
    """``streams.cir`` of a CIR grid (the task's ``validate`` hook), before any work."""
    from .corrupt import IMAGE_CORRUPTIONS, TEXT_CORRUPTIONS
    from .results import CLEAN

    defs = (cfg.get("streams") or {}).get("cir") or {}
    if not isinstance(defs, dict):
        raise ConfigError("params: streams.cir must be a mapping of stream name -> definition")
    reserved = {CLEAN, *IMAGE_CORRUPTIONS.names(), *TEXT_CORRUPTIONS.names()}
    for name, spec in defs.items():
        validate_cir_stream(name, spec, reserved)


def stream_path(cfg: dict, direction: str, stream: str, seed=None) -> str:
    """A composed stream's folder; under seed_corruptions a run seed other than the project's reads
    its own draw (cir-stream-seed<N>/: the same domains, every part corrupted with that draw)."""
    from .config import DRAWN, STREAM_CIR_QUERIES, draw_seed

    draw = draw_seed(cfg, seed)  # None for seed None
    if draw is not None:
        return DRAWN["cir-stream"].format(dataset=cfg["benchmark"], draw=draw, stream=stream)
    return STREAM_CIR_QUERIES.format(dataset=cfg["benchmark"], stream=stream)


# -- building -----------------------------------------------------------------------------------------

def build_cir_stream(manifest: str | Path, out_dir: str | Path, name: str, spec: dict, seed: int,
                     quality: int = 95, implementation: str = "imagecorruptions", mm_options: dict | None = None,
                     cfg: dict | None = None, progress: bool = True, draw: int | None = None) -> dict[str, int]:
    """Build the stream folder (see the module docstring); returns the triplets per domain. ``draw``
    (seed_corruptions): every part corrupted as that run seed's drawn cell sets are; the domain
    assignment stays the project ``seed``'s."""
    from .corrupt import mm_robustness
    from .corrupt.build import _corrupt_file, _ImageTask, _output_names
    from .corrupt.image import check_implementation
    from .corrupt.text import corrupt_texts_info
    from .data.manifest import image_root, read_manifest, write_manifest
    from .io import atomic_dir, derive_seed, query_seed
    from .progress import tqdm
    from .streams import assign_domains, domain_label

    check_implementation({"implementation": implementation, "mm_robustness": mm_options})
    manifest, out_dir = Path(manifest), Path(out_dir)
    doc = read_manifest(manifest)
    root = image_root(doc, manifest)
    dataset = doc.get("dataset", manifest.parent.name)
    images = [im for im in doc["images"] if im["split"] == "test"]
    if not images:
        raise InputError(f"CIR manifest {manifest} has no test split to build a stream from")
    names = dict(zip((im["imgid"] for im in images), _output_names(images)))  # the cell sets' file names
    trip = [(im, s) for im in images for s in im["sentences"]]  # load_triplets' query order
    parts = domain_parts(spec)
    labels = [lab for lab, _, _ in parts]
    dom, order = assign_domains(len(trip), len(parts), spec["kind"], derive_seed("stream", dataset, name, seed))
    options: tuple = ()
    if implementation != "imagecorruptions":
        options = tuple(sorted(mm_robustness.options({"mm_robustness": mm_options}, dataset).items()))
    # domains with a text part: every triplet of a domain corrupted in one call, as corrupt_text does its set
    texts: dict[int, str] = {}
    by_dom = defaultdict(list)
    for q, d in enumerate(dom):
        if parts[d][2] is not None:
            by_dom[int(d)].append(q)
    for d, qs in by_dom.items():
        c, level = parts[d][2]
        seeds = [query_seed(dataset, trip[q][1]["sentid"], c, level, draw) for q in qs]
        try:
            out, _ = corrupt_texts_info(c, [trip[q][1]["raw"] for q in qs], level, seeds, cfg, progress=False)
        except InputError as e:
            raise InputError(f"{manifest}: {e}") from None
        texts.update(zip(qs, out))
    entries, counts, written = [], Counter(), set()
    with atomic_dir(out_dir) as tmp:
        by_img: dict = defaultdict(list)
        for q, (im, s) in enumerate(trip):
            by_img[im["imgid"]].append(q)
        for im in tqdm(images, desc=f"cir stream {name}", unit="img", disable=not progress, leave=False):
            src = root / im.get("filepath", "") / im["filename"]
            sents = []
            for q in by_img[im["imgid"]]:
                s, d = trip[q][1], int(dom[q])
                lab, img, txt = parts[d]
                if img is not None:  # the reference as the image cell's file (a joint domain shares it)
                    c, sev = img
                    folder = domain_label(c, sev)
                    rel = f"{folder}/{names[im['imgid']]}"
                    if rel not in written:
                        (tmp / folder).mkdir(exist_ok=True)
                        _corrupt_file(_ImageTask(str(src), str(tmp / rel), c, int(sev),
                                                 query_seed(dataset, im["imgid"], c, sev, draw), quality, implementation,
                                                 options))
                else:
                    rel = f"clean/{Path(names[im['imgid']]).stem}{Path(im['filename']).suffix}"
                    if rel not in written:
                        if not src.is_file():
                            raise InputError(f"CIR triplet {s['sentid']!r}: reference image {src} not found")
                        (tmp / "clean").mkdir(exist_ok=True)
                        shutil.copyfile(src, tmp / rel)
                sent = dict(s)
                if txt is not None:  # the modification as the text cell's
                    raw = texts[q]
                    sent.update(raw=raw, tokens=raw.split(), clean=s["raw"])
                sent.update(domain=lab, reference=rel)
                written.add(rel)
                counts[lab] += 1
                sents.append(sent)
            first = Path(sents[0]["reference"])
            entries.append({**im, "filepath": str(first.parent), "filename": first.name, "sentences": sents})
        stream = {"name": name, "kind": spec["kind"], "domains": labels, "seed": seed}
        if draw is not None:
            stream["draw_seed"] = int(draw)
        if order is not None:
            stream["order"] = [int(i) for i in order]
        meta = {"source_manifest": os.path.relpath(manifest, out_dir), "modality": "composed", "stream": stream,
                "jpeg_quality": quality}
        if implementation != "imagecorruptions":
            meta["implementation"] = {"name": implementation, **dict(options)}
        if (doc.get("meta") or {}).get("captions") is not None:  # the dataset's caption rule, kept
            meta["captions"] = doc["meta"]["captions"]
        write_manifest(tmp / "manifest.json", dataset, entries, image_root=".", meta=meta)
    return {lab: counts[lab] for lab in labels if counts[lab]}


# -- reading ------------------------------------------------------------------------------------------

def stream_info(split, direction: str) -> dict | None:
    """The task's ``stream_info`` hook: for a CIR stream's triplets {name, kind, domains, order,
    query_domain (per triplet, in load_triplets' order)}; None for a one-domain query set."""
    from .io import read_json

    stream = (split.meta or {}).get("stream")
    if not stream:
        return None
    if split.meta.get("modality") != "composed":
        raise InputError(f"query stream {split.manifest} corrupts {split.meta.get('modality')} queries; direction "
                         f"{direction} needs a composed (streams.cir) stream")
    doc = read_json(split.manifest, "manifest")
    labels = [s.get("domain") for im in doc["images"] if im["split"] == "test" for s in im["sentences"]]
    from .streams import checked_info

    return checked_info(split, stream, labels, split.n_queries, unit="triplet", units="triplets")
