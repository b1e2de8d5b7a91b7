"""The built-in composed image retrieval (CIR) benchmark: scene triplets, offline.

Each triplet is a *reference* scene of the built-in generator (:mod:`qshift.data.builtin`), a
*modification* sentence and the *target* scene it describes:

- ``colour`` — "make the red square blue" (one object changes colour);
- ``shape`` — "turn the red square into a star";
- ``remove`` — "remove the small circle" (references with 2-3 objects);
- ``add`` — "add a green triangle in the top left" (references with 1-2 objects).

An object is named by the shortest description that is unique in its scene (colour + shape,
then size, then position). Target and reference are rendered from the same render seed, so
they share their background pixel for pixel and differ only in what the sentence says. Every
triplet also has a *hard distractor*: the same kind of modification with another outcome (the
square turned green instead of blue, the other object removed, ...), so a gallery cannot be
solved from the reference alone. Every triplet's streams are seeded by ``(seed, split, index)``.

Layout (``data/builtin-cir/``; both files are ordinary manifests, :mod:`qshift.data.manifest`):

- ``manifest.json`` — split ``train``: captioned scenes (5 captions each) on which the tiny
  CLIP is pre-trained, as for the built-in benchmark; splits ``restval`` (the combiner's
  training triplets), ``val`` and ``test``: one entry per triplet — the *reference image* with
  one sentence, the *modification text*, which carries ``target`` (the target's imgid in
  ``targets.json``) and ``modification`` (what changes). The corruption stages corrupt the
  test references (image corruptions) or the modification texts (text corruptions) exactly
  as they corrupt i2t / t2i queries, keeping those keys;
- ``targets.json`` — the gallery: per split, every triplet's target and distractor image
  (``role``: target | distractor, ``triplet``: the triplet's sentid).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..io import atomic_dir, derive_seed
from ..progress import tqdm
from .builtin import (COLOURS, POSITIONS, SHAPES, SIZES, Scene, SceneObject, _pick, _with_article, make_captions,
                      make_example, render_scene, sample_scene)
from .manifest import make_image_entry, write_manifest

VERSION = 1
TARGETS = "targets.json"
TRIPLET_SPLITS = ("restval", "val", "test")
KINDS = ("colour", "shape", "remove", "add")

TEMPLATES = {
    "colour": ("make the {obj} {to}", "change the {obj} to {to}", "the {obj} should be {to}", "paint the {obj} {to}"),
    "shape": ("turn the {obj} into a {to}", "replace the {obj} with a {colour} {to}", "change the {obj} into a {to}"),
    "remove": ("remove the {obj}", "take away the {obj}", "delete the {obj}", "without the {obj}"),
    "add": ("add {new} {pos}", "put {new} {pos}", "also show {new} {pos}"),
}


def refer(scene: Scene, i: int) -> str:
    """The shortest unique description of object ``i``: colour + shape, then size, then position."""
    o = scene.objects[i]
    others = [x for j, x in enumerate(scene.objects) if j != i]
    if not any((x.colour, x.shape) == (o.colour, o.shape) for x in others):
        return f"{o.colour} {o.shape}"
    if not any((x.size, x.colour, x.shape) == (o.size, o.colour, o.shape) for x in others):
        return f"{o.size} {o.colour} {o.shape}"
    return f"{o.colour} {o.shape} {POSITIONS[o.position][0]}"


def _canonical(objects) -> tuple[SceneObject, ...]:
    names = list(POSITIONS)
    return tuple(sorted(objects, key=lambda o: names.index(o.position)))


def apply_modification(scene: Scene, mod: dict) -> Scene:
    """The scene ``mod`` describes (objects kept in canonical position order)."""
    objs = list(scene.objects)
    kind = mod["kind"]
    if kind == "colour":
        o = objs[mod["index"]]
        objs[mod["index"]] = SceneObject(o.shape, mod["to"], o.size, o.position)
    elif kind == "shape":
        o = objs[mod["index"]]
        objs[mod["index"]] = SceneObject(mod["to"], o.colour, o.size, o.position)
    elif kind == "remove":
        del objs[mod["index"]]
    elif kind == "add":
        a = mod["object"]
        objs.append(SceneObject(a["shape"], a["colour"], a["size"], a["position"]))
    else:
        raise ValueError(f"unknown modification kind {kind!r}; valid: {', '.join(KINDS)}")
    return Scene(scene.background, _canonical(objs))


def _kinds(scene: Scene) -> list[str]:
    n = len(scene.objects)
    return [k for k in KINDS if not (k == "remove" and n < 2) and not (k == "add" and n >= len(POSITIONS) - 2)]


def sample_modification(scene: Scene, rng: np.random.Generator, kind: str | None = None,
                        avoid: dict | None = None) -> dict:
    """A modification of ``scene`` (of ``kind``, or drawn); ``avoid``: a modification whose
    outcome must differ (the hard distractor)."""
    kind = kind or _pick(rng, _kinds(scene))
    n = len(scene.objects)
    for _ in range(100):
        if kind in ("colour", "shape", "remove"):
            i = int(rng.integers(n))
            if avoid is not None and kind != "remove":
                i = avoid["index"]  # the same object, another outcome
            o = scene.objects[i]
            if kind == "colour":
                to = _pick(rng, [c for c in COLOURS if c != o.colour and c != (avoid or {}).get("to")])
                mod = {"kind": kind, "index": i, "to": to}
            elif kind == "shape":
                to = _pick(rng, [s for s in SHAPES if s != o.shape and s != (avoid or {}).get("to")])
                mod = {"kind": kind, "index": i, "to": to}
            else:
                if avoid is not None and i == avoid["index"]:
                    continue
                mod = {"kind": kind, "index": i}
        else:
            used = {o.position for o in scene.objects}
            free = [p for p in POSITIONS if p not in used]
            pos = (avoid or {}).get("object", {}).get("position") or _pick(rng, free)
            new = {"shape": _pick(rng, list(SHAPES)), "colour": _pick(rng, list(COLOURS)),
                   "size": _pick(rng, list(SIZES)), "position": pos}
            if avoid is not None and (new["shape"], new["colour"]) == (avoid["object"]["shape"],
                                                                      avoid["object"]["colour"]):
                continue
            mod = {"kind": kind, "object": new}
        if avoid is None or apply_modification(scene, mod).key() != apply_modification(scene, avoid).key():
            return mod
    raise RuntimeError(f"no {kind} modification of {scene} differs from {avoid}")  # pragma: no cover


def modification_text(scene: Scene, mod: dict, rng: np.random.Generator) -> str:
    """The sentence of ``mod`` (canonical attribute words, one of the kind's templates)."""
    template = _pick(rng, TEMPLATES[mod["kind"]])
    if mod["kind"] == "add":
        a = mod["object"]
        return template.format(new=_with_article(f"{a['size']} {a['colour']} {a['shape']}"),
                               pos=POSITIONS[a["position"]][0])
    o = scene.objects[mod["index"]]
    return template.format(obj=refer(scene, mod["index"]), to=mod.get("to", ""), colour=o.colour)


def make_triplet(seed: int, split: str, index: int) -> dict:
    """Reference, modification (dict and text), target and distractor scenes of one triplet, and
    its render seed (reference, target and distractor are drawn from the same one)."""
    children = np.random.SeedSequence(derive_seed(seed, f"cir-{split}", index)).spawn(3)
    scene_rng, text_rng = np.random.default_rng(children[0]), np.random.default_rng(children[2])
    render_seed = int(children[1].generate_state(1)[0])
    ref = sample_scene(scene_rng)
    mod = sample_modification(ref, scene_rng)
    neg = sample_modification(ref, scene_rng, kind=mod["kind"], avoid=mod)
    return {"reference": ref, "modification": mod, "text": modification_text(ref, mod, text_rng),
            "target": apply_modification(ref, mod), "distractor": apply_modification(ref, neg),
            "distractor_modification": neg, "render_seed": render_seed}


def _render(scene: Scene, size: int, render_seed: int):
    return render_scene(scene, size, np.random.default_rng(render_seed))


def generate_builtin_cir(out_dir: str | Path, n_train: int, n_restval: int, n_val: int, n_test: int,
                         image_size: int = 64, seed: int = 42, n_captions: int = 5, progress: bool = True) -> dict:
    """Write the built-in CIR benchmark to ``out_dir`` atomically; returns its statistics."""
    sizes = {"train": n_train, "restval": n_restval, "val": n_val, "test": n_test}
    for name, n in sizes.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ConfigError(f"params: datasets.builtin-cir.n_{name} must be a non-negative integer, got {n!r}")
    if n_test < 1:
        raise ConfigError(f"params: datasets.builtin-cir.n_test must be at least 1, got {n_test}")
    if image_size < 16:
        raise ConfigError(f"params: datasets.builtin-cir.image_size must be at least 16, got {image_size}")
    start = time.perf_counter()
    refs: list[dict] = []
    gallery: list[dict] = []
    kinds: dict[str, int] = {k: 0 for k in KINDS}
    next_id, next_sent = 0, 0
    with atomic_dir(out_dir) as tmp, tqdm(total=sum(sizes.values()), desc="builtin-cir", unit="item",
                                          disable=not progress) as bar:
        (tmp / "images" / "train").mkdir(parents=True)
        for index in range(n_train):  # the CLIP's captioned training scenes (as the built-in benchmark's)
            scene, image, captions = make_example(seed, "train", index, image_size, n_captions)
            name = f"{next_id:06d}.png"
            image.save(tmp / "images" / "train" / name, format="PNG")
            entry = make_image_entry(next_id, name, "train", captions, next_sent, filepath="train")
            entry["scene"] = scene.to_dict()
            refs.append(entry)
            next_id, next_sent = next_id + 1, next_sent + n_captions
            bar.update()
        for split in TRIPLET_SPLITS:
            for sub in ("references", "targets"):
                (tmp / "images" / sub / split).mkdir(parents=True)
            for index in range(sizes[split]):
                t = make_triplet(seed, split, index)
                kinds[t["modification"]["kind"]] += 1
                ref_id, tgt_id, neg_id, sentid = next_id, next_id + 1, next_id + 2, next_sent
                next_id, next_sent = next_id + 3, next_sent + 3
                name = f"{ref_id:06d}.png"
                _render(t["reference"], image_size, t["render_seed"]).save(
                    tmp / "images" / "references" / split / name, format="PNG")
                entry = make_image_entry(ref_id, name, split, [t["text"]], sentid, filepath=f"references/{split}")
                entry["sentences"][0].update(target=tgt_id, modification=t["modification"])
                entry["scene"] = t["reference"].to_dict()
                refs.append(entry)
                cap_rng = np.random.default_rng(derive_seed(seed, f"cir-{split}-captions", index))
                for gid, role, scene, sent in ((tgt_id, "target", t["target"], sentid + 1),
                                               (neg_id, "distractor", t["distractor"], sentid + 2)):
                    gname = f"{gid:06d}.png"
                    _render(scene, image_size, t["render_seed"]).save(tmp / "images" / "targets" / split / gname,
                                                                     format="PNG")
                    g = make_image_entry(gid, gname, split, make_captions(scene, 1, cap_rng), sent,
                                         filepath=f"targets/{split}")
                    g.update(scene=scene.to_dict(), role=role, triplet=sentid)
                    gallery.append(g)
                bar.update()
        meta = {"generator": "qshift.data.builtin_cir", "version": VERSION, "seed": seed, "task": "cir",
                "targets": TARGETS, **{f"n_{k}": v for k, v in sizes.items()}, "image_size": image_size,
                "n_captions": n_captions}
        write_manifest(tmp / "manifest.json", "builtin-cir", refs, image_root="images", meta=meta)
        write_manifest(tmp / TARGETS, "builtin-cir", gallery, image_root="images",
                       meta={**meta, "role": "gallery of the triplets in manifest.json"})
    return {"counts": sizes, "modifications": kinds, "gallery": len(gallery),
            "seconds": round(time.perf_counter() - start, 3)}
