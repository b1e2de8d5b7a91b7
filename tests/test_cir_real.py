"""The real composed image retrieval path, offline: CIRR and FashionIQ adapters on tiny fixture
annotation files (the benchmarks' own layouts) with generated images, their scoring conventions
on hand-checkable galleries and against CLIP4Cir's own validation code, the CLIP4Cir combiner
loaded from a checkpoint, and one pipeline run (Snakemake: download -> prepare -> corrupt ->
encode_gallery -> adapt source + tcr -> report) on a fixture CIRR with a tiny saved open_clip
(qshift.data.cir_real, qshift.cir, qshift.models.composed)."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _tiny import one_torch_thread
from qshift.errors import ConfigError, InputError

DL = {"mirror": {}, "retries": 0, "backoff": 0.1, "timeout": 5}


@pytest.fixture(autouse=True)
def _one_thread():
    yield from one_torch_thread()


def _png(seed: int, fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


# -- fixtures in the benchmarks' own layouts ----------------------------------------------------------

def cirr_names(n: int = 12) -> list[str]:
    return [f"dev-{i}-{i % 3}-img{i % 2}" for i in range(n)]


def cirr_triplets(names: list[str], n: int = 10, clean: bool = False) -> list[dict]:
    """``clean``: captions the caption normalisation leaves as they are (the golden comparison)."""
    out = []
    for k in range(n):
        ref, tgt = names[k], names[(k + 3) % len(names)]
        members = [ref, tgt] + [names[(k + j) % len(names)] for j in (5, 6, 7, 8)]
        out.append({"pairid": 12000 + k, "reference": ref, "target_hard": tgt, "target_soft": {tgt: 1.0},
                    "caption": "" if k == 4 else (f"show {k + 2} dogs instead, on grass" if clean else
                                                  f"Show  {k + 2} dogs instead, on grass."),
                    "img_set": {"id": k, "members": members, "reference_rank": 0, "target_rank": 1}})
    return out


def write_cirr(root: Path, names: list[str] | None = None, triplets: list[dict] | None = None) -> tuple[Path, Path]:
    """(annotation folder as the cirr_dataset branch lays it out, NLVR2-style image folder with dev/)."""
    names = names or cirr_names()
    triplets = triplets if triplets is not None else cirr_triplets(names)
    ann = root / "CIRR-cirr_dataset"
    (ann / "captions").mkdir(parents=True)
    (ann / "image_splits").mkdir()
    (ann / "captions" / "cap.rc2.val.json").write_text(json.dumps(triplets))
    (ann / "image_splits" / "split.rc2.val.json").write_text(json.dumps({n: f"./dev/{n}.png" for n in names}))
    (ann / "captions" / "cap.rc2.train.json").write_text("[]")  # other splits are never read
    imgs = root / "nlvr2" / "dev"
    imgs.mkdir(parents=True)
    for i, n in enumerate(names):
        (imgs / f"{n}.png").write_bytes(_png(i))
    (root / "nlvr2" / "train").mkdir()
    (root / "nlvr2" / "train" / "train-1-0-img0.png").write_bytes(_png(99))  # not the val split's
    return ann, root / "nlvr2"


FIQ = {"dress": [f"B0D{i:05d}" for i in range(8)], "shirt": [f"B0S{i:05d}" for i in range(10)],
       "toptee": [f"B0T{i:05d}" for i in range(7)]}


def write_fiq(root: Path, fiq: dict | None = None) -> tuple[Path, Path]:
    ann = root / "fashion-iq-master"
    (ann / "captions").mkdir(parents=True)
    (ann / "image_splits").mkdir()
    imgs = root / "fiq-images"
    imgs.mkdir()
    seed = 0
    for cat, names in (fiq or FIQ).items():
        trip = [{"target": names[(k + 1) % len(names)], "candidate": names[k],
                 "captions": [f"is {cat} number {k}.", f"has longer sleeves?"]} for k in range(len(names) - 2)]
        (ann / "captions" / f"cap.{cat}.val.json").write_text(json.dumps(trip))
        (ann / "image_splits" / f"split.{cat}.val.json").write_text(json.dumps(names))
        for n in names:
            (imgs / f"{n}.jpg").write_bytes(_png(seed, "JPEG"))
            seed += 1
    return ann, imgs


def _zip(folder: Path, out: Path) -> Path:
    with zipfile.ZipFile(out, "w") as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, f"{folder.name}/{p.relative_to(folder).as_posix()}")
    return out


def cirr_entry(ann, imgs, **kw) -> dict:
    return {"kind": "cirr", "task": "cir", "split": "val", "annotations": {"path": str(ann)},
            "images": {"path": str(imgs)}, **kw}


def prepared(tmp: Path, kind: str = "cirr", d: dict | None = None, ann_zip: bool = False) -> tuple[Path, dict]:
    from qshift.data.karpathy import download_dataset, prepare_real

    if kind == "cirr":
        ann, imgs = write_cirr(tmp / "src")
        d = d or cirr_entry(_zip(ann, tmp / "cirr.zip") if ann_zip else ann, imgs)
    else:
        ann, imgs = write_fiq(tmp / "src")
        d = d or {"kind": "fashion-iq", "task": "cir", "split": "val", "categories": ["dress", "shirt", "toptee"],
                  "annotations": {"path": str(ann)}, "images": {"path": str(imgs)}}
    info = download_dataset(kind, d, {**DL, "cache_dir": str(tmp / "cache")}, tmp / "raw", progress=False)
    prepare_real(kind, d, tmp / "raw", tmp / "data", progress=False)
    return tmp / "data", info


# -- adapters -------------------------------------------------------------------------------------

@pytest.mark.parametrize("ann_zip", [False, True])
def test_cirr_becomes_the_cir_layout(tmp_path, ann_zip):
    from qshift.cir import check_targets, load_gallery_split, load_triplets

    data, info = prepared(tmp_path, "cirr", ann_zip=ann_zip)
    assert info["n_triplets"] == 10 and info["n_gallery"] == 12 and info["split"] == "val"
    assert [f["matches_upstream"] for f in info["annotation_files"]] == [False, False]  # a fixture, not upstream
    q = load_triplets(data / "manifest.json")
    gal = load_gallery_split(data)
    check_targets(q, gal.image_ids)
    names = cirr_names()
    trip = cirr_triplets(names)
    by_sentid = {int(s): i for i, s in enumerate(q.sentids)}
    assert sorted(by_sentid) == list(range(10))
    g_name = {int(i): p.stem for i, p in zip(gal.image_ids, gal.image_paths)}
    assert [p.name for p in gal.image_paths] == [f"{n}.png" for n in names]  # the split file's order, under dev/
    assert all(p.parent.name == "dev" for p in gal.image_paths)
    for k, t in enumerate(trip):
        i = by_sentid[k]
        assert g_name[int(q.image_ids[i])] == t["reference"]  # the reference shares its gallery imgid
        assert g_name[int(q.targets[i])] == t["target_hard"]
        assert q.image_paths[i].name == f"{t['reference']}.png"
    assert q.captions[by_sentid[4]] == ""  # an empty modification text is a valid query
    assert q.captions[by_sentid[0]] == "show 2 dogs instead, on grass"  # the project's caption normalisation
    assert gal.protocol == {"protocol": "cirr", "exclude_reference": True, "recall_subset": True}
    assert gal.groups is None
    doc = json.loads((data / "manifest.json").read_text())
    assert doc["meta"]["source_split"] == "val"
    s0 = next(s for im in doc["images"] for s in im["sentences"] if s["sentid"] == 0)
    assert s0["pairid"] == 12000 and len(s0["members"]) == 6


def test_fashioniq_joins_the_captions_and_keeps_each_category_gallery(tmp_path):
    from qshift.cir import load_gallery_split, load_triplets
    from qshift.data.cir_real import fiq_text

    assert fiq_text(["is shiny and silver.", "fit and flare?"]) == "Is shiny and silver and fit and flare"
    assert fiq_text(["  Is RED ", ""]) == "Is red and "  # CLIP4Cir: strip '.?, ', capitalize the first only
    data, info = prepared(tmp_path, "fashion-iq")
    assert info["categories"] == ["dress", "shirt", "toptee"]
    q, gal = load_triplets(data / "manifest.json"), load_gallery_split(data)
    assert info["n_triplets"] == q.n_queries == sum(len(v) - 2 for v in FIQ.values())
    assert len(gal.image_ids) == sum(len(v) for v in FIQ.values())
    assert gal.groups == [c for c, v in FIQ.items() for _ in v] and gal.protocol["per_group"]
    assert sorted(set(q.groups)) == ["dress", "shirt", "toptee"]
    g_of = dict(zip(gal.image_ids.tolist(), gal.groups))
    assert all(g_of[int(t)] == g == g_of[int(r)] for t, r, g in zip(q.targets, q.image_ids, q.groups))
    assert q.captions[0] == "is dress number 0 and has longer sleeves"


def test_images_from_an_archive_and_only_the_split_s_images(tmp_path):
    from qshift.cir import load_gallery_split
    from qshift.data.karpathy import download_dataset, prepare_real

    ann, imgs = write_fiq(tmp_path / "src")
    (imgs / "B0X99999.jpg").write_bytes(_png(7, "JPEG"))  # in the archive, in no image list
    d = {"kind": "fashion-iq", "task": "cir", "categories": ["toptee", "dress"], "annotations": {"path": str(ann)},
         "images": {"path": str(_zip(imgs, tmp_path / "images.zip"))}}
    info = download_dataset("fashion-iq", d, {**DL, "cache_dir": str(tmp_path / "c")}, tmp_path / "raw",
                            progress=False)
    got = sorted(p.name for p in (tmp_path / "raw" / "images").iterdir() if p.suffix == ".jpg")
    assert got == sorted(f"{n}.jpg" for n in FIQ["toptee"] + FIQ["dress"]) and info["n_images"] == len(got)
    prepare_real("fashion-iq", d, tmp_path / "raw", tmp_path / "data", progress=False)
    gal = load_gallery_split(tmp_path / "data")
    assert gal.groups == ["toptee"] * len(FIQ["toptee"]) + ["dress"] * len(FIQ["dress"])  # the params' order
    assert [p.parent.name for p in gal.image_paths] == gal.groups  # images/<category>/<asin>.jpg


def test_unknown_category_lists_the_valid_ones(tmp_path):
    from qshift.data.karpathy import validate_dataset

    d = {"kind": "fashion-iq", "task": "cir", "categories": ["dress", "skirt"], "annotations": {"path": "x"},
         "images": {"path": "y"}}
    with pytest.raises(ConfigError, match=r"unknown category 'skirt'; valid: dress, shirt, toptee"):
        validate_dataset("fashion-iq", d)
    with pytest.raises(ConfigError, match=r"split is 'test1'; valid: val"):
        validate_dataset("cirr", cirr_entry("x", "y", split="test1"))


def test_a_missing_reference_image_names_the_triplet_and_the_file(tmp_path):
    from qshift.data.karpathy import download_dataset

    ann, imgs = write_cirr(tmp_path / "src")
    (imgs / "dev" / "dev-2-2-img0.png").unlink()  # pairid 12002's reference
    with pytest.raises(InputError, match=r"triplet 12002 \(reference 'dev-2-2-img0'.*its reference image file "
                                         r"dev/dev-2-2-img0.png is not in .*nlvr2"):
        download_dataset("cirr", cirr_entry(ann, imgs), {**DL, "cache_dir": str(tmp_path / "c")}, tmp_path / "raw",
                         progress=False)
    assert not (tmp_path / "raw").exists()  # nothing half-written


def test_a_triplet_outside_the_split_and_a_broken_entry_are_named(tmp_path):
    from qshift.data.karpathy import download_dataset

    names = cirr_names()
    trip = cirr_triplets(names)
    trip[3]["target_hard"] = "dev-999-0-img0"
    ann, imgs = write_cirr(tmp_path / "a", names, trip)
    with pytest.raises(InputError, match=r"triplet 12003 .*its target image 'dev-999-0-img0' is not in "
                                         r"split.rc2.val.json"):
        download_dataset("cirr", cirr_entry(ann, imgs), {**DL, "cache_dir": str(tmp_path / "c")}, tmp_path / "r1",
                         progress=False)
    trip = cirr_triplets(names)
    del trip[5]["reference"]
    ann, imgs = write_cirr(tmp_path / "b", names, trip)
    with pytest.raises(InputError, match=r"cap.rc2.val.json: \[5\] \(pairid 12005\) needs key 'reference'"):
        download_dataset("cirr", cirr_entry(ann, imgs), {**DL, "cache_dir": str(tmp_path / "c")}, tmp_path / "r2",
                         progress=False)
    (ann / "captions" / "cap.rc2.val.json").unlink()
    with pytest.raises(InputError, match=r"hold no cap.rc2.val.json"):
        download_dataset("cirr", cirr_entry(ann, imgs), {**DL, "cache_dir": str(tmp_path / "c")}, tmp_path / "r3",
                         progress=False)


def test_prepare_refuses_an_image_lost_after_download(tmp_path):
    from qshift.data.karpathy import prepare_real

    ann, imgs = write_fiq(tmp_path / "src")
    d = {"kind": "fashion-iq", "task": "cir", "categories": ["shirt"], "annotations": {"path": str(ann)},
         "images": {"path": str(imgs)}}
    from qshift.data.karpathy import download_dataset

    info = download_dataset("fashion-iq", d, {**DL, "cache_dir": str(tmp_path / "c")}, tmp_path / "raw",
                            progress=False)
    assert info["n_gallery"] == len(FIQ["shirt"])  # one category: only its files
    (tmp_path / "raw" / "images" / f"{FIQ['shirt'][1]}.jpg").unlink()
    with pytest.raises(InputError, match=rf"triplet 'shirt/0' .*its target image file {FIQ['shirt'][1]}.jpg"):
        prepare_real("fashion-iq", d, tmp_path / "raw", tmp_path / "data", progress=False)
    with pytest.raises(InputError, match=r"categories \['shirt'\], but datasets.fashion-iq.categories is \['dress'\]"):
        prepare_real("fashion-iq", {**d, "categories": ["dress"]}, tmp_path / "raw", tmp_path / "data",
                     progress=False)


# -- the benchmarks' scoring rules on a hand-checkable gallery --------------------------------------

def _split(refs, targets, groups=None):
    from qshift.cir import CIRSplit

    n = len(refs)
    return CIRSplit("toy", Path("toy.json"), np.arange(n), np.asarray(refs), [Path("x")] * n, [""] * n,
                    np.asarray(targets), groups=groups)


def test_cirr_removes_the_reference_and_fashioniq_ranks_within_the_category():
    from qshift.cir import candidate_mask
    from qshift.evaluation import hits_and_ranks

    owner = torch.tensor([10, 11, 12, 13, 14])
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.7, 0.0],   # query 0: reference 10 (best), target 11
                           [0.2, 0.3, 0.9, 0.1, 0.8]])  # query 1: reference 12 (best), target 14
    q = _split([10, 12], [11, 14])
    assert candidate_mask(q, {"image_owner": owner}) is None  # builtin: every image is a candidate
    mask = candidate_mask(q, {"image_owner": owner, "protocol": {"exclude_reference": True}})
    m = mask(np.array([1, 0]))  # a batch in arrival order
    assert m.tolist() == [[False, False, True, False, False], [True, False, False, False, False]]
    h, rank = hits_and_ranks(scores.masked_fill(mask(np.array([0, 1])), float("-inf")), torch.tensor([11, 14]),
                             owner, (1, 5))
    assert h[1].tolist() == [True, True] and rank.tolist() == [0, 0]  # with the reference ranked: both rank 1
    h, rank = hits_and_ranks(scores, torch.tensor([11, 14]), owner, (1, 5))
    assert h[1].tolist() == [False, False] and rank.tolist() == [1, 1]
    # FashionIQ: images 10, 11 are dresses, 12-14 shirts; query 0 a dress, query 1 a shirt
    gal = {"image_owner": owner, "protocol": {"per_group": True},
           "image_group": ["dress", "dress", "shirt", "shirt", "shirt"]}
    q = _split([10, 12], [11, 13], ["dress", "shirt"])
    m = candidate_mask(q, gal)(np.array([0, 1]))
    assert m.tolist() == [[False, False, True, True, True], [True, True, False, False, False]]
    s = torch.tensor([[0.1, 0.5, 0.9, 0.8, 0.7],   # the shirts would outrank the dress target
                      [0.9, 0.9, 0.95, 0.6, 0.7]])  # the dresses and its own reference beat the target
    h, rank = hits_and_ranks(s.masked_fill(m, float("-inf")), torch.tensor([11, 13]), owner, (1, 2))
    assert rank.tolist() == [0, 2] and h[2].tolist() == [True, False]  # FashionIQ keeps the reference
    with pytest.raises(InputError, match="every triplet needs a 'group'"):
        candidate_mask(_split([10], [11]), gal)



def test_cirr_recall_subset_ranks_within_the_image_set_without_the_reference():
    from qshift.cir import subset_mask
    from qshift.evaluation import hits_and_ranks

    owner = torch.tensor([10, 11, 12, 13, 14])
    q = _split([10, 12], [11, 14])
    q.members = [[10, 11, 13], [12, 13, 14, 99]]  # the reference is a member; 99 is not in the gallery
    gal = {"image_owner": owner, "protocol": {"recall_subset": True}}
    m = subset_mask(q, gal)(np.array([0, 1]))
    assert m.tolist() == [[True, False, True, False, True], [True, True, True, False, False]]
    s = torch.tensor([[0.9, 0.5, 0.99, 0.6, 0.98],  # 12 and 14 (outside the set) and 13 beat the target 11
                      [0.1, 0.2, 0.9, 0.8, 0.7]])   # the reference 12 and the member 13 beat the target 14
    h, rank = hits_and_ranks(s.masked_fill(m, float("-inf")), torch.tensor([11, 14]), owner, (1, 2, 3))
    assert rank.tolist() == [1, 1] and h[1].tolist() == [False, False] and h[2].tolist() == [True, True]
    assert subset_mask(q, {"image_owner": owner}) is None
    q.members = None
    with pytest.raises(InputError, match="carry no 'members'"):
        subset_mask(q, gal)


# -- CLIP4Cir's combiner, loaded from its checkpoint format -----------------------------------------

GOLDEN = Path(__file__).parent / "data" / "clip4cir_combiner_golden.npz"


def clip4cir_checkpoint(path: Path, bare: bool = False) -> Path:
    """The golden Combiner's weights saved as CLIP4Cir's combiner_train.py saves them (utils.save_model)."""
    g = np.load(GOLDEN)
    state = {k[len("state."):]: torch.from_numpy(g[k]) for k in g.files if k.startswith("state.")}
    torch.save(state if bare else {"epoch": 3, "Combiner": state}, path)
    return path


@pytest.mark.parametrize("bare", [False, True])
def test_a_clip4cir_checkpoint_loads_and_combines_as_clip4cir_does(tmp_path, bare):
    from qshift.models.composed import CLIP4CirCombiner, load_combiner

    comb = load_combiner(str(clip4cir_checkpoint(tmp_path / "combiner.pt", bare)), tmp_path, 32)
    assert isinstance(comb, CLIP4CirCombiner) and (comb.dim, comb.projection, comb.hidden) == (32, 24, 40)
    g = np.load(GOLDEN)
    with torch.no_grad():  # CLIP4Cir's own Combiner.combine_features made these (tests/data/clip4cir_combiner_golden.md)
        out = comb.eval()(torch.from_numpy(g["image_features"]), torch.from_numpy(g["text_features"]))
    np.testing.assert_allclose(out.numpy(), g["combined"], rtol=1e-5, atol=1e-6)


def test_a_bad_combiner_checkpoint_is_one_clear_error(tmp_path):
    from qshift.models.composed import load_combiner

    with pytest.raises(InputError, match=r"checkpoint .*nope.pt not found"):
        load_combiner(str(tmp_path / "nope.pt"), tmp_path, 32)
    garbled = tmp_path / "garbled.pt"
    garbled.write_bytes(clip4cir_checkpoint(tmp_path / "ok.pt").read_bytes()[:200])
    with pytest.raises(InputError, match=r"garbled.pt is unreadable"):
        load_combiner(str(garbled), tmp_path, 32)
    torch.save({"epoch": 1, "CLIP": {"w": torch.zeros(2)}}, tmp_path / "clip.pt")
    with pytest.raises(InputError, match=r"clip.pt is not a CLIP4Cir Combiner checkpoint.*found \['CLIP', 'epoch'\]"):
        load_combiner(str(tmp_path / "clip.pt"), tmp_path, 32)
    g = torch.load(clip4cir_checkpoint(tmp_path / "c.pt"), weights_only=True)
    del g["Combiner"]["output_layer.bias"]
    torch.save(g, tmp_path / "partial.pt")
    with pytest.raises(InputError, match=r"partial.pt does not match the Combiner architecture.*output_layer.bias"):
        load_combiner(str(tmp_path / "partial.pt"), tmp_path, 32)
    with pytest.raises(InputError, match=r"combines 32-d features, the model's are 64-d"):
        load_combiner(str(tmp_path / "c.pt"), tmp_path, 64)


def test_the_composed_model_feeds_clip4cir_the_raw_features(tmp_path):
    from _tiny import make_tiny_clip_dir
    from qshift.cir import load_composed
    from qshift.cir_plan import validate_cir
    from qshift.models import load_model
    from qshift.models.composed import pack

    base = load_model(f"local-dir:{make_tiny_clip_dir(tmp_path / 'clip')}")
    ckpt = str(clip4cir_checkpoint(tmp_path / "combiner.pt"))
    cfg = {"model": {"name": "tiny", "combiner": ckpt}, "tune": {"enabled": False}, "streams": {"methods": []}}
    validate_cir(cfg)
    model = load_composed(cfg, base)
    imgs = torch.stack([base.image_transform()(Image.open(io.BytesIO(_png(i)))) for i in range(3)])
    toks = base.tokenize(["make it red", "", "add a dog"])
    with torch.no_grad():
        got = model.encode("composed", pack(imgs, toks))
        fi, ft = base.module.encode_image(imgs), base.module.encode_text(toks)  # open_clip's raw features
        want = torch.nn.functional.normalize(model.combiner(fi, ft), dim=-1)
        normed = torch.nn.functional.normalize(model.combiner(torch.nn.functional.normalize(fi, dim=-1),
                                                              torch.nn.functional.normalize(ft, dim=-1)), dim=-1)
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, normed, atol=1e-4)  # the raw features matter (CLIP4Cir's input)
    assert all(not p.requires_grad for p in model.combiner.parameters())  # frozen; TTA adapts the towers
    with pytest.raises(ConfigError, match=r"model.combiner 'avg'; valid: sum, trained or the path"):
        validate_cir({**cfg, "model": {"combiner": "avg"}})
    with pytest.raises(ConfigError, match=r"model.combiner: trained is the combiner the built-in CIR .*use "
                                          r"model.combiner: sum or the path"):
        validate_cir({**cfg, "model": {"name": "clip", "source": "open_clip:ViT-B-16@openai", "combiner": "trained"}})


def test_a_cells_fingerprint_covers_the_combiner_checkpoints_bytes(tmp_path):
    """Retraining the combiner in place (same path, new weights) reruns the CIR cells."""
    from qshift.cells import task_code

    ckpt = clip4cir_checkpoint(tmp_path / "combiner.pt")
    cfg = {"adapt": {"directions": ["cir"]}, "model": {"name": "tiny", "combiner": str(ckpt)}}
    before = task_code(cfg)
    assert before == task_code(cfg)  # deterministic
    state = torch.load(ckpt, weights_only=False)
    sd = state["Combiner"] if "Combiner" in state else state
    first = next(iter(sd))
    sd[first] = sd[first] + 1.0
    torch.save(state, ckpt)
    assert task_code(cfg) != before
    assert task_code({**cfg, "model": {"name": "tiny", "combiner": "sum"}}) != before
    assert task_code({"adapt": {"directions": ["i2t"]}, "model": {"name": "tiny"}}) == ""  # image-text: unchanged


def test_fashioniq_is_scored_per_category_in_the_stream(tmp_path):
    from _tiny import make_tiny_clip_dir
    from qshift.adapt import run_stream
    from qshift.cir import encode_cir_gallery, load_composed, load_triplets, query_loader
    from qshift.gallery import load_gallery
    from qshift.models import load_model

    data, _ = prepared(tmp_path, "fashion-iq")
    base = load_model(f"local-dir:{make_tiny_clip_dir(tmp_path / 'clip')}")
    model = load_composed({"model": {"name": "tiny", "combiner": "sum"}}, base)
    encode_cir_gallery(model, data, tmp_path / "gallery.pt", batch_size=8)
    gal = load_gallery(tmp_path / "gallery.pt")
    assert gal["image_group"] == [c for c, v in FIQ.items() for _ in v]
    q = load_triplets(data / "manifest.json")
    body = run_stream(model, "source", {}, "cir", q, gal, batch_size=4, seed=0, progress=False)
    by = body["metrics_by_group"]
    assert sorted(by) == ["dress", "shirt", "toptee"]
    assert {g: v["n_queries"] for g, v in by.items()} == {c: len(v) - 2 for c, v in FIQ.items()}
    with torch.no_grad():  # each category alone: its queries against its own gallery
        z = torch.cat([model.encode("composed", b) for b in query_loader(model, q, batch_size=4)])
    groups, owner = np.asarray(q.groups), gal["image_owner"]
    for c in FIQ:
        qi, gi = np.flatnonzero(groups == c), [i for i, g in enumerate(gal["image_group"]) if g == c]
        s = z[qi] @ gal["image"][gi].T
        tgt = torch.as_tensor([gi.index(int((owner == t).nonzero())) for t in q.targets[qi]])
        rank = (s > s.gather(1, tgt[:, None])).sum(1)
        for k in (1, 5):
            assert by[c][f"R@{k}"] == pytest.approx(100.0 * float((rank < k).float().mean())), (c, k)
    pooled = sum(by[c]["R@5"] * by[c]["n_queries"] for c in by) / q.n_queries
    assert body["metrics"]["R@5"] == pytest.approx(pooled)  # metrics: over all queries; the report adds the mean


def test_the_report_has_fashioniq_tables_per_category_and_their_mean():
    from pipeline_utils import REPO
    from qshift.config import Run, load_params
    from qshift.report.build import Direction, results_blocks
    from qshift.report.blocks import markdown
    from qshift.report.tables import group_tables

    cfg = load_params(REPO / "params.yaml", ["benchmark=fiq-c", "corrupt.image.names=[fog]",
                                             "corrupt.text.names=[ocr]", "adapt.methods=[source,tcr]"])
    cells = [("clean", 0), ("fog", 5), ("ocr", 7)]
    found = {}
    for m, base in (("source", 10.0), ("tcr", 20.0)):
        for j, (c, sev) in enumerate(cells):
            by = {g: {"R@1": 0.0, "R@5": 0.0, "R@10": base + j + i, "R@50": 2 * base + i, "n_queries": 5}
                  for i, g in enumerate(("dress", "shirt", "toptee"))}
            found[Run("fiq-c", "clip", "cir", m, c, sev, 42)] = {"metrics": {"R@10": -1.0}, "metrics_by_group": by}
    t = group_tables(cfg, "cir", found, ("R@10", "R@50"))
    assert list(t) == [f"R@{k} {g}" for k in (10, 50) for g in ("dress", "shirt", "toptee", "category mean")]
    assert t["R@10 shirt"]["rows"]["tcr"] == {"fog s5": 22.0, "OCR s7": 23.0, "Avg": 22.5, "Clean": 21.0}
    assert t["R@10 category mean"]["rows"]["source"]["fog s5"] == pytest.approx(12.0)  # (11 + 12 + 13) / 3
    assert t["R@50 category mean"]["rows"]["source"]["Clean"] == pytest.approx(21.0)
    assert group_tables(cfg, "cir", {r: {"metrics": d["metrics"]} for r, d in found.items()}, ("R@10",)) == {}
    from qshift import stats

    unc = stats.direction_intervals(cfg, "cir", found)
    blocks = results_blocks(Direction("cir", {"R@1": t["R@10 dress"], "R@5": t["R@10 dress"],
                                              "R@10": t["R@10 dress"], **t}, unc, {}))
    md = markdown(blocks)
    assert "FashionIQ convention" in md and "R@10 toptee (%):" in md and "R@50 category mean (%):" in md


def test_a_transformers_clip_composes_with_sum_and_a_clip4cir_combiner(tmp_path):
    from test_models import make_tiny_hf_clip
    from qshift.adapt import run_stream
    from qshift.cir import encode_cir_gallery, load_composed, load_triplets, query_loader
    from qshift.gallery import load_gallery
    from qshift.models import load_model
    from qshift.models.composed import CLIP4CirCombiner

    base = load_model(f"hf-clip:{make_tiny_hf_clip(tmp_path / 'hf')}")
    torch.manual_seed(1)
    c = CLIP4CirCombiner(16, 12, 20)
    torch.save({"epoch": 0, "Combiner": c.state_dict()}, tmp_path / "c16.pt")
    data, _ = prepared(tmp_path / "d", "cirr")
    q = load_triplets(data / "manifest.json")
    for combiner in ("sum", str(tmp_path / "c16.pt")):
        model = load_composed({"model": {"name": "hf", "combiner": combiner}}, base)
        batch = next(iter(query_loader(model, q, batch_size=4)))
        from qshift.models.composed import unpack

        imgs, toks = unpack(batch)
        with torch.no_grad():
            fi, ft = base.module.get_image_features(pixel_values=imgs), base.module.get_text_features(input_ids=toks)
            fi, ft = (x if isinstance(x, torch.Tensor) else x.pooler_output for x in (fi, ft))
            if combiner == "sum":
                want = torch.nn.functional.normalize(torch.nn.functional.normalize(fi, dim=-1)
                                                     + torch.nn.functional.normalize(ft, dim=-1), dim=-1)
            else:
                want = c.eval()(fi, ft)
            torch.testing.assert_close(model.encode("composed", batch), want)
        encode_cir_gallery(model, data, tmp_path / "g.pt", batch_size=8)
        body = run_stream(model, "source", {}, "cir", q, load_gallery(tmp_path / "g.pt"), batch_size=4, seed=0,
                          progress=False)
        assert body["n_gallery"] == 12 and 0.0 <= body["metrics"]["R@1"] <= body["metrics"]["R@10"] <= 100.0


def test_the_scores_match_clip4cirs_own_validation_code(tmp_path):
    """CLIP4Cir's validate.py (cirr_val_retrieval, fashioniq_val_retrieval) computed
    tests/data/cir_protocol_golden.json on these fixtures with the same tiny CLIP and combiner
    (how: its ``made_by``); QShift's source run must give the same R@K."""
    from _tiny import make_tiny_clip_dir
    from qshift.adapt import run_stream
    from qshift.cir import encode_cir_gallery, load_composed, load_triplets
    from qshift.data.karpathy import download_dataset, prepare_real
    from qshift.gallery import load_gallery
    from qshift.models import load_model

    golden = json.loads((Path(__file__).parent / "data" / "cir_protocol_golden.json").read_text())
    base = load_model(f"local-dir:{make_tiny_clip_dir(tmp_path / 'clip')}")
    model = load_composed({"model": {"name": "tiny", "combiner": str(clip4cir_checkpoint(tmp_path / "c.pt"))}}, base)
    names = cirr_names(40)
    ann, imgs = write_cirr(tmp_path / "cirr", names, cirr_triplets(names, 30, clean=True))
    fiq = {c: [f"B0{c[0].upper()}{i:05d}" for i in range(30)] for c in ("dress", "shirt", "toptee")}
    fann, fimgs = write_fiq(tmp_path / "fiq", fiq)
    dl = {**DL, "cache_dir": str(tmp_path / "cache")}
    for kind, d in (("cirr", cirr_entry(ann, imgs)),
                    ("fashion-iq", {"kind": "fashion-iq", "task": "cir", "annotations": {"path": str(fann)},
                                    "images": {"path": str(fimgs)}})):
        download_dataset(kind, d, dl, tmp_path / kind / "raw", progress=False)
        prepare_real(kind, d, tmp_path / kind / "raw", tmp_path / kind / "data", progress=False)
        encode_cir_gallery(model, tmp_path / kind / "data", tmp_path / kind / "g.pt", batch_size=16)
        body = run_stream(model, "source", {}, "cir", load_triplets(tmp_path / kind / "data" / "manifest.json"),
                          load_gallery(tmp_path / kind / "g.pt"), batch_size=8, seed=0, progress=False)
        if kind == "cirr":
            assert body["metrics"] == pytest.approx(golden["cirr"], abs=1e-4)
        else:
            got = {f"{c} {k}": v[k] for c, v in body["metrics_by_group"].items() for k in ("R@10", "R@50")}
            assert got == pytest.approx({f"{c} {k}": v for c, m in golden["fashion-iq"].items()
                                         for k, v in m.items()}, abs=1e-4)


# -- one CIRR-format benchmark through the pipeline (Snakemake runs the real stage CLIs) ---------------

@pytest.mark.slow
@pytest.mark.pipeline
def test_a_cirr_benchmark_runs_through_the_pipeline(tmp_path):
    import yaml

    from _tiny import make_tiny_clip_dir
    from pipeline_utils import REPO, make_repo, run
    from qshift.cir import load_composed, load_triplets, query_loader
    from qshift.models import load_model

    repo = make_repo(tmp_path / "repo")
    ann, imgs = write_cirr(tmp_path / "src")
    clip = make_tiny_clip_dir(tmp_path / "tiny-clip")
    ckpt = clip4cir_checkpoint(tmp_path / "combiner.pt")
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["benchmark"] = "cirr-c"
    p["datasets"]["cirr"]["annotations"]["path"] = str(_zip(ann, tmp_path / "cirr_dataset.zip"))
    p["datasets"]["cirr"]["images"]["path"] = str(imgs)
    preset = p["benchmarks"]["cirr-c"]
    preset["model"].update(name="tiny-clip", source=f"local-dir:{clip}", combiner=str(ckpt), batch_size=8)
    preset["corrupt"] = {"image": {"names": ["gaussian_noise"], "severities": [3]},
                         "text": {"names": ["ocr"], "levels": [2], "filter": None}}
    p["adapt"].update(methods=["source", "tcr"], batch_size=4)
    p["threads"] = 1
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    # the preset's DAG: download -> prepare -> corrupt -> pretrain (load) -> encode_gallery -> adapt_cir -> report
    run(["snakemake", "--cores", "2"], repo, timeout=900)
    rec = json.loads((repo / "data/raw/cirr-c/download.json").read_text())
    assert rec["kind"] == "cirr" and rec["split"] == "val" and rec["n_triplets"] == 10
    report = (repo / "reports/report.md").read_text()
    assert "Composed image retrieval" in report and "R@50 (%)" in report and "R_subset@3 (%)" in report
    again = run(["snakemake", "--cores", "1", "-n"], repo)
    assert "Nothing to be done" in again.stdout + again.stderr  # a rerun does nothing
    ex = json.loads((repo / "reports/corruptions/examples.json").read_text())  # the examples sheet's queries
    trip = {t["pairid"]: t for t in cirr_triplets(cirr_names())}
    assert ex["composed"] and all(Path(e["reference"]).stem == trip[e["triplet"]]["reference"] and
                                  Path(e["target"]).stem == trip[e["triplet"]]["target_hard"] for e in ex["composed"])
    assert [e["modification"] for e in ex["composed"]] == [c["clean"] for c in ex["text"]["captions"]]
    assert "## Composed queries" in (repo / "reports/corruptions/text_examples.md").read_text()
    res = repo / "results/cirr-c/tiny-clip/cir"
    files = sorted(p.relative_to(res).as_posix() for p in res.rglob("*.json"))
    assert {"source/seed42/clean-s0.json", "source/seed42/gaussian_noise-s3.json", "source/seed42/ocr-s2.json",
            "tcr/seed42/gaussian_noise-s3.json", "tcr/seed42/ocr-s2.json"} <= set(files), files
    docs = {f: json.loads((res / f).read_text()) for f in files}
    for f, doc in docs.items():
        assert doc["n_queries"] == 10 and doc["n_gallery"] == 12 and set(doc["metrics"]) == {
            "R@1", "R@5", "R@10", "R@50", "R_subset@1", "R_subset@2", "R_subset@3"}, f
        assert doc["metrics"]["R@50"] == 100.0  # 11 candidates: every target within 50
    # the clean source run, recomputed here: CLIP4Cir's combiner over the tiny CLIP, the reference removed
    base = load_model(f"local-dir:{clip}")
    model = load_composed({"model": {"name": "tiny-clip", "combiner": str(ckpt)}}, base)
    q = load_triplets(repo / "data/cirr-c/manifest.json")
    gal = torch.load(repo / "data/embeddings/tiny-clip/cirr-c/gallery.pt", weights_only=True)
    assert gal["protocol"] == {"protocol": "cirr", "exclude_reference": True, "recall_subset": True}
    with torch.no_grad():
        z = torch.cat([model.encode("composed", b) for b in query_loader(model, q, batch_size=4)])
    s = z @ gal["image"].T
    owner = gal["image_owner"]
    s[owner[None, :] == torch.as_tensor(q.image_ids)[:, None]] = float("-inf")
    rank = (s > s.gather(1, torch.as_tensor([int((owner == t).nonzero()) for t in q.targets])[:, None])).sum(1)
    for k in (1, 5, 10):
        assert docs["source/seed42/clean-s0.json"]["metrics"][f"R@{k}"] == pytest.approx(
            100.0 * float((rank < k).float().mean()))
    # Recall_subset: within img_set.members (6 per triplet here), the reference removed
    pos = {int(g): i for i, g in enumerate(owner.tolist())}
    out = torch.ones_like(s, dtype=torch.bool)
    for i, ms in enumerate(q.members):
        out[i, [pos[m] for m in ms]] = False
    s = s.masked_fill(out, float("-inf"))
    rank = (s > s.gather(1, torch.as_tensor([pos[int(t)] for t in q.targets])[:, None])).sum(1)
    assert (s > float("-inf")).sum(1).tolist() == [5] * 10
    for k in (1, 2, 3):
        assert docs["source/seed42/clean-s0.json"]["metrics"][f"R_subset@{k}"] == pytest.approx(
            100.0 * float((rank < k).float().mean()))
    assert docs["tcr/seed42/ocr-s2.json"]["counters"]  # tcr adapted on the corrupted modification texts
