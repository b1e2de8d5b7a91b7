"""The query-gallery-shift, ReID and remote-sensing benchmarks through the real download and
prepare code, offline.

Each test builds a tiny fixture in the benchmark's own annotation format — NoCaps'
``nocaps_val_4500_captions.json`` (images fetched one by one from their ``coco_url`` through a
local HTTP server that plays s3, via ``download.mirror``), Fashion-Gen's h5 release, CUHK-PEDES'
``reid_raw.json`` / ICFG-PEDES' ``ICFG-PEDES.json`` with an image archive or folder, RSICD's
Karpathy-style ``dataset_rsicd.json`` — and checks the manifest, the errors for a missing or
partial dataset (counts and first names, never a smaller benchmark), the identity-level metrics
on a hand-made case, and one preset (``reid-cuhk``) end to end with a tiny IRRA checkpoint
through the stage CLIs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from test_download import Server, jpeg, tar_bytes, zip_bytes
from qshift.data.karpathy import download_dataset, prepare_real, validate_dataset
from qshift.data.manifest import load_split, normalize_caption
from qshift.errors import ConfigError, InputError
from qshift.evaluation import average_precision, hits_and_ranks, recall_at_k, retrieval_metrics
from qshift.io import MARKER

REPO = Path(__file__).resolve().parents[1]
DL = {"mirror": {}, "retries": 1, "backoff": 0.001, "timeout": 10}
S3 = "https://s3.amazonaws.com/nocaps/"


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def dl_cfg(tmp: Path, **kw) -> dict:
    return {**DL, "cache_dir": str(tmp / "cache"), **kw}


def source(**kw) -> dict:
    return {"url": None, "sha256": None, "path": None, "member": None, **kw}


def files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != MARKER}


# -- NoCaps -------------------------------------------------------------------------------------
NOCAPS = [("0013ea2087020901", "in-domain"), ("00223d6fb8bbd7d2", "near-domain"), ("0052bd0e4b6ab3f8", "out-domain"),
          ("006ac2bd5e5a9fd2", "in-domain"), ("0078fd1ba1ae2f4e", "near-domain"), ("009ac4b7dfa2e4a3", "near-domain")]


def nocaps_doc() -> dict:
    images, anns = [], []
    for i, (oid, dom) in enumerate(NOCAPS):
        images.append({"id": i, "open_images_id": oid, "height": 8, "width": 8, "domain": dom,
                       "coco_url": f"{S3}val/{oid}.jpg", "file_name": f"{oid}.jpg", "license": 0})
        anns += [{"image_id": i, "id": 10 * i + j, "caption": f"A Photo ({j}) of thing {i}."} for j in range(10)]
    return {"licenses": [], "info": {"description": "nocaps validation dataset"}, "images": images,
            "annotations": anns}


def nocaps_cfg(domain: str | None, **images) -> dict:
    return {"kind": "nocaps", "annotations": source(url=f"{S3}nocaps_val_4500_captions.json"),
            "images": source(**images), "domain": domain, "n_images": len(NOCAPS), "captions_per_image": 10,
            "workers": 3}


def serve_nocaps(server: Server) -> None:
    server.files["/nocaps/nocaps_val_4500_captions.json"] = json.dumps(nocaps_doc()).encode()
    for i, (oid, _) in enumerate(NOCAPS):
        server.files[f"/nocaps/val/{oid}.jpg"] = jpeg(i)


def test_nocaps_domain_fetched_image_by_image_through_the_mirror(server: Server, tmp_path: Path) -> None:
    serve_nocaps(server)
    dl = dl_cfg(tmp_path, mirror={S3: server.url("/nocaps/")})
    raw = tmp_path / "raw"
    cfg = nocaps_cfg("near-domain")
    info = download_dataset("nocaps", cfg, dl, raw, progress=False)
    near = [oid for oid, dom in NOCAPS if dom == "near-domain"]
    assert info["n_images"] == 3 and info["n_captions"] == 30 and info["domain"] == "near-domain"
    assert files(raw / "images") == {f"{oid}.jpg" for oid in near}
    # one GET per image of the domain, none for the others
    assert sorted(e["path"] for e in server.log if "/val/" in e["path"]) == sorted(f"/nocaps/val/{o}.jpg" for o in near)
    stats = prepare_real("nocaps", cfg, raw, tmp_path / "data", progress=False)
    assert stats == {"dataset": "nocaps", "n_images": 3, "n_captions": 30}
    doc = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert [im["domain"] for im in doc["images"]] == ["near-domain"] * 3
    assert doc["meta"]["domain"] == "near-domain" and "owner" not in doc["meta"]
    split = load_split(tmp_path / "data" / "manifest.json")
    assert split.owner_kind == "image" and split.image_owner is split.image_ids
    assert split.captions[0] == normalize_caption("A Photo (0) of thing 1.") == "a photo 0 of thing 1"
    # a second domain reuses the cached images of the first: only the new ones are fetched
    n = len(server.log)
    download_dataset("nocaps", nocaps_cfg(None), dl, tmp_path / "raw-all", progress=False)
    assert sorted(e["path"] for e in server.log[n:] if "/val/" in e["path"]) == sorted(
        f"/nocaps/val/{o}.jpg" for o, d in NOCAPS if d != "near-domain")


def test_nocaps_missing_images_are_an_error_with_count_and_names(server: Server, tmp_path: Path) -> None:
    serve_nocaps(server)
    gone = NOCAPS[1][0]
    del server.files[f"/nocaps/val/{gone}.jpg"]  # 404: not retried
    flaky = NOCAPS[4][0]
    server.modes[f"/nocaps/val/{flaky}.jpg"] = {"fail": 1}  # one 503, then served: the retry gets it
    dl = dl_cfg(tmp_path, mirror={S3: server.url("/nocaps/")})
    with pytest.raises(InputError, match=rf"1 of 3 test images .* could not be fetched \(e\.g\. {gone}\.jpg\).*404"):
        download_dataset("nocaps", nocaps_cfg("near-domain"), dl, tmp_path / "raw", progress=False)
    assert not (tmp_path / "raw").exists()  # nothing half-written
    cache = tmp_path / "cache" / "nocaps" / "images"
    assert f"{flaky}.jpg" in files(cache)  # what came stays cached for the rerun
    server.files[f"/nocaps/val/{gone}.jpg"] = jpeg(1)
    n = len(server.log)
    download_dataset("nocaps", nocaps_cfg("near-domain"), dl, tmp_path / "raw", progress=False)
    assert [e["path"] for e in server.log[n:] if "/val/" in e["path"]] == [f"/nocaps/val/{gone}.jpg"]


def test_nocaps_images_from_a_local_folder_and_bad_domain(server: Server, tmp_path: Path) -> None:
    serve_nocaps(server)
    folder = tmp_path / "nocaps-images" / "validation"
    folder.mkdir(parents=True)
    for i, (oid, _) in enumerate(NOCAPS):
        (folder / f"{oid}.jpg").write_bytes(jpeg(i))
    dl = dl_cfg(tmp_path, mirror={S3: server.url("/nocaps/")})
    info = download_dataset("nocaps", nocaps_cfg("in-domain", path=str(tmp_path / "nocaps-images")), dl,
                            tmp_path / "raw", progress=False)
    assert info["n_images"] == 2 and not [e for e in server.log if "/val/" in e["path"]]
    with pytest.raises(ConfigError, match=r"datasets\.nocaps\.domain is 'indomain'; valid: in-domain, near-domain"):
        validate_dataset("nocaps", nocaps_cfg("indomain"))
    with pytest.raises(InputError, match=r"the file lists 6 images, expected 4500"):
        download_dataset("nocaps", {**nocaps_cfg("in-domain"), "n_images": 4500}, dl, tmp_path / "raw2",
                         progress=False)


# -- Fashion-Gen --------------------------------------------------------------------------------
def fashion_h5(path: Path, products: list[str], extra_key: bool = True) -> list[np.ndarray]:
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in products]
    with h5py.File(path, "w") as f:
        f["input_image"] = np.stack(imgs)
        f["input_description"] = np.array([[f"Long sleeve shirt {p}. Button closure; tonal stitching.".encode()]
                                           for p in products])
        f["input_productID"] = np.array([[int(p)] for p in products])
        if extra_key:
            f["input_name"] = np.array([[b"SHIRT"]] * len(products))
    return imgs


def test_fashion_gen_h5_one_image_per_product(tmp_path: Path) -> None:
    products = ["101", "101", "102", "103", "103"]
    imgs = fashion_h5(tmp_path / "fashiongen_256_256_validation.h5", products)
    cfg = {"kind": "fashion-gen", "annotations": source(path=str(tmp_path / "fashiongen_256_256_validation.h5")),
           "images_per_product": 1, "n_images": 3, "captions_per_image": 1}
    info = download_dataset("fashion-gen", cfg, dl_cfg(tmp_path), tmp_path / "raw", progress=False)
    assert info["n_images"] == 3 and files(tmp_path / "raw" / "images") == {"101_0.png", "102_2.png", "103_3.png"}
    prepare_real("fashion-gen", cfg, tmp_path / "raw", tmp_path / "data", progress=False)
    split = load_split(tmp_path / "data" / "manifest.json")
    assert split.captions[0] == "long sleeve shirt 101 button closure tonal stitching"
    with Image.open(split.image_paths[1]) as im:  # lossless: the h5's pixels
        assert np.array_equal(np.asarray(im), imgs[2])
    every = {**cfg, "images_per_product": None, "n_images": 5}
    assert download_dataset("fashion-gen", every, dl_cfg(tmp_path), tmp_path / "raw5", progress=False)["n_images"] == 5


def test_fashion_gen_errors_name_the_file(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f["input_image"] = np.zeros((1, 4, 4, 3), np.uint8)
    cfg = {"kind": "fashion-gen", "annotations": source(path=str(tmp_path / "bad.h5")), "n_images": None}
    with pytest.raises(InputError, match=r"bad\.h5: missing dataset\(s\) input_description, input_productID"):
        download_dataset("fashion-gen", cfg, dl_cfg(tmp_path), tmp_path / "raw", progress=False)
    with pytest.raises(ConfigError, match=r"Fashion-Gen is distributed after a request form.*annotations\.path"):
        download_dataset("fashion-gen", {**cfg, "annotations": source()}, dl_cfg(tmp_path), tmp_path / "raw",
                         progress=False)
    with pytest.raises(ConfigError, match=r"images_per_product must be a positive integer or null"):
        validate_dataset("fashion-gen", {**cfg, "images_per_product": 0})


# -- CUHK-PEDES / ICFG-PEDES --------------------------------------------------------------------
# (file_path, identity, n captions); two test images share the basename 0001.png in two folders
PEDES_TEST = [("CUHK01/0001.png", 11, 2), ("CUHK03/0001.png", 11, 2), ("Market/0042_c1.jpg", 12, 2),
              ("test_query/p5_s1.jpg", 13, 2), ("test_query/p5_s2.jpg", 13, 1)]


def pedes_doc() -> list[dict]:
    doc = [{"split": "train", "id": 1, "file_path": "train_query/a.jpg", "captions": ["A train caption."],
            "processed_tokens": [["a"]]}]
    for k, (fp, pid, n) in enumerate(PEDES_TEST):
        doc.append({"split": "test", "id": pid, "file_path": fp, "processed_tokens": [],
                    "captions": [f"The woman ({k}) wears a RED coat; black pants, and #{j} white shoes." for j in
                                 range(n)]})
    doc.append({"split": "val", "id": 99, "file_path": "val/x.jpg", "captions": ["val"]})
    return doc


def pedes_images() -> dict[str, bytes]:  # an archive with an extra top folder, and a train image
    members = {f"CUHK-PEDES/imgs/{fp}": jpeg(k) for k, (fp, _, _) in enumerate(PEDES_TEST)}
    members["CUHK-PEDES/imgs/train_query/a.jpg"] = jpeg(9)
    return members


def pedes_cfg(tmp: Path, images: str, **kw) -> dict:
    return {"kind": "pedes", "annotations": source(path=str(tmp / "reid_raw.json")), "images": source(path=images),
            "owner": "identity", "captions": {"normalize": "whitespace", "max_words": None},
            "n_images": len(PEDES_TEST), "n_identities": 3, "captions_per_image": None, **kw}


def test_cuhk_pedes_archive_to_identity_manifest(tmp_path: Path) -> None:
    (tmp_path / "reid_raw.json").write_text(json.dumps(pedes_doc()))
    (tmp_path / "imgs.tar.gz").write_bytes(tar_bytes(pedes_images()))
    cfg = pedes_cfg(tmp_path, str(tmp_path / "imgs.tar.gz"))
    info = download_dataset("cuhk-pedes", cfg, dl_cfg(tmp_path), tmp_path / "raw", progress=False)
    assert info["n_images"] == 5 and info["n_captions"] == 9 and info["n_identities"] == 3
    assert files(tmp_path / "raw" / "images") == {fp for fp, _, _ in PEDES_TEST}  # relative paths kept
    stats = prepare_real("cuhk-pedes", cfg, tmp_path / "raw", tmp_path / "data", progress=False)
    assert stats == {"dataset": "cuhk-pedes", "n_images": 5, "n_captions": 9, "n_identities": 3}
    split = load_split(tmp_path / "data" / "manifest.json")
    assert split.owner_kind == "identity"
    assert split.image_owner.tolist() == [11, 11, 12, 13, 13] and split.image_ids.tolist() == [0, 1, 2, 3, 4]
    # the benchmark's own normalisation: whitespace only, no word cap (CLIP's tokenizer does the rest)
    assert split.captions[0] == "The woman (0) wears a RED coat; black pants, and #0 white shoes."
    from qshift.gallery import query_owner

    assert query_owner(split, "t2i").tolist() == [11, 11, 11, 11, 12, 12, 13, 13, 13]
    # the same entries from a folder (ICFG-PEDES layout: one caption per image)
    folder = tmp_path / "ICFG-PEDES" / "imgs"
    for name, data in pedes_images().items():
        (folder / name.removeprefix("CUHK-PEDES/imgs/")).parent.mkdir(parents=True, exist_ok=True)
        (folder / name.removeprefix("CUHK-PEDES/imgs/")).write_bytes(data)
    icfg = pedes_cfg(tmp_path, str(tmp_path / "ICFG-PEDES"), captions_per_image=1)
    assert download_dataset("icfg-pedes", icfg, dl_cfg(tmp_path), tmp_path / "raw-icfg",
                            progress=False)["n_captions"] == 5


def test_pedes_partial_images_and_wrong_counts(tmp_path: Path) -> None:
    (tmp_path / "reid_raw.json").write_text(json.dumps(pedes_doc()))
    members = pedes_images()
    del members["CUHK-PEDES/imgs/CUHK03/0001.png"], members["CUHK-PEDES/imgs/Market/0042_c1.jpg"]
    (tmp_path / "imgs.zip").write_bytes(zip_bytes(members))
    cfg = pedes_cfg(tmp_path, str(tmp_path / "imgs.zip"))
    with pytest.raises(InputError, match=r"2 of 5 test images named in .*reid_raw\.json are not in .*imgs\.zip "
                                         r"\(e\.g\. CUHK03/0001\.png, Market/0042_c1\.jpg\)"):
        download_dataset("cuhk-pedes", cfg, dl_cfg(tmp_path), tmp_path / "raw", progress=False)
    assert not (tmp_path / "raw").exists()
    (tmp_path / "imgs.zip").write_bytes(zip_bytes(pedes_images()))
    with pytest.raises(InputError, match=r"has 3 identities, expected 1000 \(datasets\.cuhk-pedes\.n_identities\)"):
        download_dataset("cuhk-pedes", {**cfg, "n_identities": 1000}, dl_cfg(tmp_path), tmp_path / "raw",
                         progress=False)
    with pytest.raises(ConfigError, match=r"CUHK-PEDES is distributed by its authors on request"):
        download_dataset("cuhk-pedes", {**cfg, "images": source()}, dl_cfg(tmp_path), tmp_path / "raw",
                         progress=False)
    with pytest.raises(ConfigError, match=r"datasets\.coco\.owner is 'identity', but only kind 'pedes'"):
        validate_dataset("coco", {"kind": "karpathy", "annotations": source(url="x"), "images": source(url="y"),
                                  "owner": "identity"})
    with pytest.raises(ConfigError, match=r"captions\.normalize is 'lower'; valid: tcr, whitespace"):
        validate_dataset("cuhk-pedes", {**cfg, "captions": {"normalize": "lower"}})


# -- remote sensing (Karpathy-style) -------------------------------------------------------------
def rs_doc(names: list[str], splits: list[str]) -> dict:
    return {"dataset": "rsicd", "images": [
        {"imgid": i, "filename": n, "split": s, "sentids": list(range(5 * i, 5 * i + 5)),
         "sentences": [{"raw": f"Many planes are parked near {j} buildings .", "tokens": [], "imgid": i,
                        "sentid": 5 * i + j} for j in range(5)]} for i, (n, s) in enumerate(zip(names, splits))]}


def test_rsicd_and_ucm_test_splits(tmp_path: Path) -> None:
    names = ["airport_1.jpg", "airport_2.jpg", "beach_1.jpg", "beach_2.jpg", "bridge_7.jpg"]
    (tmp_path / "dataset_rsicd.json").write_text(json.dumps(rs_doc(names, ["train", "test", "val", "test", "test"])))
    img = tmp_path / "RSICD_images"
    img.mkdir()
    for k, n in enumerate(names[:4]):
        (img / n).write_bytes(jpeg(k))
    cfg = {"kind": "karpathy", "annotations": source(path=str(tmp_path / "dataset_rsicd.json")),
           "images": source(path=str(img)), "n_images": 3, "captions_per_image": 5}
    with pytest.raises(InputError, match=r"1 of 3 test images .* are not in .*RSICD_images \(e\.g\. bridge_7\.jpg\)"):
        download_dataset("rsicd", cfg, dl_cfg(tmp_path), tmp_path / "raw", progress=False)
    (img / "bridge_7.jpg").write_bytes(jpeg(7))
    download_dataset("rsicd", cfg, dl_cfg(tmp_path), tmp_path / "raw", progress=False)
    prepare_real("rsicd", cfg, tmp_path / "raw", tmp_path / "data", progress=False)
    split = load_split(tmp_path / "data" / "manifest.json")
    assert [p.name for p in split.image_paths] == ["airport_2.jpg", "beach_2.jpg", "bridge_7.jpg"]
    assert split.captions[0] == "many planes are parked near 0 buildings"
    doc = json.loads((tmp_path / "data" / "manifest.json").read_text())
    # a Karpathy-kind dataset's manifest carries exactly the keys it always had (no owner / captions meta)
    assert set(doc["meta"]) == {"generator", "annotation_format", "annotations", "captions_per_image", "files"}
    assert set(doc["images"][0]) == {"imgid", "filepath", "filename", "split", "sentids", "sentences", "source_image"}
    # UCM-captions: .tif images
    ucm = tmp_path / "ucm"
    (ucm / "imgs").mkdir(parents=True)
    (ucm / "dataset.json").write_text(json.dumps(rs_doc(["1.tif", "2.tif"], ["test", "test"])))
    for k in (1, 2):
        Image.new("RGB", (8, 8), (k * 50, 0, 0)).save(ucm / "imgs" / f"{k}.tif")
    ucfg = {"kind": "karpathy", "annotations": source(path=str(ucm / "dataset.json")),
            "images": source(path=str(ucm / "imgs")), "n_images": 2, "captions_per_image": 5}
    download_dataset("ucm", ucfg, dl_cfg(tmp_path), tmp_path / "raw-ucm", progress=False)
    prepare_real("ucm", ucfg, tmp_path / "raw-ucm", tmp_path / "data-ucm", progress=False)
    assert load_split(tmp_path / "data-ucm" / "manifest.json").n_images == 2


# -- identity-level metrics --------------------------------------------------------------------
def test_identity_level_recall_and_map_by_hand() -> None:
    """Gallery: images a, b of person 7 and c of person 8; two caption queries (persons 7, 8)."""
    scores = torch.tensor([[0.1, 0.9, 0.5],    # person 7: b first (hit @1), then c, then a
                           [0.8, 0.7, 0.6]])   # person 8: c last (hit @5 only)
    identity = torch.tensor([7, 7, 8])
    q_identity = torch.tensor([7, 8])
    hits, rank = hits_and_ranks(scores, q_identity, identity, ks=(1, 5))
    assert hits[1].tolist() == [True, False] and hits[5].tolist() == [True, True] and rank.tolist() == [0, 2]
    ap = average_precision(scores, q_identity, identity)
    assert ap.tolist() == pytest.approx([(1 / 1 + 2 / 3) / 2, 1 / 3])
    m = retrieval_metrics(scores, q_identity, identity, ks=(1, 5), with_map=True)
    assert m == pytest.approx({"R@1": 50.0, "R@5": 100.0, "mAP": 100 * ((1 + 2 / 3) / 2 + 1 / 3) / 2})
    # image-level owners (the default): query 0 belongs to image a only -> a miss at 1
    image_level = recall_at_k(scores, torch.tensor([0, 2]), torch.tensor([0, 1, 2]), ks=(1, 5))
    assert image_level == {"R@1": 0.0, "R@5": 100.0}
    assert retrieval_metrics(scores, torch.tensor([0, 2]), torch.tensor([0, 1, 2]), ks=(1, 5)) == image_level
    # one relevant item: AP = 1 / its rank, so mAP is the mean reciprocal rank
    assert average_precision(scores, torch.tensor([0, 2]), torch.tensor([0, 1, 2])).tolist() == \
        pytest.approx([1 / 3, 1 / 3])


def test_run_stream_adds_map_only_for_identity_galleries(tmp_path: Path) -> None:
    """The adapt loop on a hand-made gallery: identity owners give identity-level R@K and mAP;
    the same scores with image owners give the image-level numbers and no mAP; a query set and a
    gallery that disagree on the owner are refused."""
    from qshift.adapt import run_stream
    from qshift.data.manifest import make_image_entry, write_manifest

    class Fixed:  # the query encoder: caption i -> a fixed unit vector (no learnable parameters)
        name, preprocess, device = "fixed", "native", "cpu"

        def __init__(self):
            import torch.nn as nn

            self.module = nn.Identity()

        def tokenize(self, texts):
            return torch.tensor([int(t.split()[-1]) for t in texts])

        def encode(self, modality, batch):
            return torch.nn.functional.one_hot(batch, 3).float()

        def norm_layers(self, modality):
            return []

    (tmp_path / "images").mkdir()
    images = []
    for k, (identity, cap) in enumerate([(7, "x 1"), (7, "x 0"), (8, "x 1")]):
        Image.new("RGB", (4, 4)).save(tmp_path / "images" / f"{k}.png")
        images.append(make_image_entry(k, f"{k}.png", "test", [cap], k, identity=identity))
    write_manifest(tmp_path / "manifest.json", "toy", images, meta={"owner": "identity"})
    split = load_split(tmp_path / "manifest.json")
    gallery_emb = torch.eye(3)  # caption "x j" scores image j highest
    ident = {"image": gallery_emb, "text": gallery_emb, "image_owner": torch.as_tensor(split.image_owner),
             "text_owner": torch.as_tensor(split.image_owner), "owner": "identity"}
    out = run_stream(Fixed(), "source", {}, "t2i", split, ident, batch_size=2, steps=1, progress=False)
    # caption 0 (person 7) ranks image 1 (person 7) first: a hit at the identity level
    assert out["metrics"]["R@1"] == pytest.approx(100 * 2 / 3)
    # AP: person 7's captions find both of its images at ranks 1-2 (AP 1); person 8's image is 3rd (1/3)
    assert out["metrics"]["mAP"] == pytest.approx(100 * (1 + 1 + 1 / 3) / 3)
    with pytest.raises(ConfigError, match=r"scored per identity, but the gallery per image"):
        run_stream(Fixed(), "source", {}, "t2i", split, {k: v for k, v in ident.items() if k != "owner"},
                   batch_size=2, steps=1, progress=False)
    # the same manifest without meta.owner: image-level, as every other dataset (no mAP)
    write_manifest(tmp_path / "image.json", "toy", images, meta={})
    img_split = load_split(tmp_path / "image.json")
    by_image = {"image": gallery_emb, "text": gallery_emb, "image_owner": torch.as_tensor(img_split.image_ids),
                "text_owner": torch.as_tensor(img_split.image_ids)}
    out = run_stream(Fixed(), "source", {}, "t2i", img_split, by_image, batch_size=2, steps=1, progress=False)
    assert out["metrics"] == {"R@1": 0.0, "R@5": 100.0, "R@10": 100.0}


# -- params ------------------------------------------------------------------------------------
PRESETS = {"qgs-nocaps-id": ("nocaps", 0.01), "qgs-nocaps-nd": ("nocaps", 0.01), "qgs-nocaps-od": ("nocaps", 0.01),
           "qgs-fashion": ("fashion-gen", 0.001), "reid-cuhk": ("cuhk-pedes", 1e-4), "reid-icfg": ("icfg-pedes", 1e-4),
           "rs-rsicd": ("rsicd", 0.01), "rs-rsitmd": ("rsitmd", 0.01), "rs-ucm": ("ucm", 0.01)}


def test_presets_resolve_with_the_papers_temperatures() -> None:
    from qshift import paper
    from qshift.config import dataset_params, load_params, method_hparams
    from qshift.presets import QUERY_GALLERY_SHIFT, dataset_name, setting

    for bench, (ds, tau) in PRESETS.items():
        cfg = load_params(REPO / "params.yaml", [f"benchmark={bench}"])
        assert dataset_name(cfg) == ds and setting(cfg) == QUERY_GALLERY_SHIFT
        for m in ("tent", "eata", "sar", "read", "deyo"):
            assert method_hparams(cfg, m)["tau"] == tau, (bench, m)
        assert method_hparams(cfg, "tcr")["tau"] == 0.02  # TCR keeps its own
        d = dataset_params(cfg)
        if ds == "nocaps":
            assert d["domain"] == {"id": "in-domain", "nd": "near-domain", "od": "out-domain"}[bench[-2:]]
        if bench.startswith("reid"):
            assert cfg["model"]["source"].startswith("irra:") and cfg["adapt"]["directions"] == ["t2i"]
            assert d["owner"] == "identity"
        else:
            assert cfg["model"]["source"] == "open_clip:ViT-B-16@openai"
    # the paper's QGS numbers reach the new presets (Base: the check of a zero-shot CLIP pipeline)
    assert paper.lookup("qgs-nocaps-od", "clip-vit-b16", "i2t", "source", "clean") == 73.8
    assert paper.lookup("qgs-nocaps-nd", "clip-vit-b16", "t2i", "source", "clean") == 49.2
    assert paper.lookup("qgs-nocaps-id", "clip-vit-b16", "t2i", "tcr", "clean") == 63.5
    assert paper.lookup("qgs-fashion", "clip-vit-b16", "i2t", "source", "clean") == 8.5
    assert paper.match("reid-cuhk", "irra-icfg-pedes") is None and paper.match("rs-rsicd", "clip-vit-b16") is None


# -- one preset end to end -----------------------------------------------------------------------
def tiny_irra(path: Path) -> Path:
    """An IRRA-layout checkpoint ({"model": {"base_model.<CLIP key>": fp16 tensor, other heads}}) of a
    tiny CLIP at a 48 x 16 input, patch 8."""
    import open_clip

    torch.manual_seed(0)
    clip = open_clip.CLIP(embed_dim=16, quick_gelu=True,
                          vision_cfg={"image_size": [48, 16], "patch_size": 8, "width": 32, "layers": 1,
                                      "head_width": 32},
                          text_cfg={"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 1})
    state = {f"base_model.{k}": v.half() for k, v in clip.state_dict().items()}
    state["mlm_head.dense.weight"] = torch.zeros(2, 2)  # a training-only head: not loaded
    torch.save({"model": state, "epoch": 60}, path)
    return path


@pytest.mark.slow
def test_reid_cuhk_preset_end_to_end(tmp_path: Path, store_template: Path) -> None:
    """download -> prepare -> pretrain (record) -> encode_gallery -> adapt (source, tcr) for
    ``benchmark: reid-cuhk``, the stage CLIs on a copy of the repository's params."""
    import shutil
    import subprocess

    from pipeline_utils import env

    repo = tmp_path / "repo"
    (repo / "stages").mkdir(parents=True)
    shutil.copy2(REPO / "params.yaml", repo / "params.yaml")
    (tmp_path / "reid_raw.json").write_text(json.dumps(pedes_doc()))
    (tmp_path / "CUHK-PEDES.zip").write_bytes(zip_bytes(pedes_images()))
    ckpt = tiny_irra(tmp_path / "irra_icfg_pedes.pth")
    p = yaml.safe_load((repo / "params.yaml").read_text())
    d = p["datasets"]["cuhk-pedes"]
    d["annotations"]["path"], d["images"]["path"] = str(tmp_path / "reid_raw.json"), str(tmp_path / "CUHK-PEDES.zip")
    d.update(n_images=len(PEDES_TEST), n_identities=3)
    p["benchmark"] = "reid-cuhk"
    p["benchmarks"]["reid-cuhk"]["model"]["source"] = f"irra:48x16@{ckpt}"
    p["benchmarks"]["reid-cuhk"]["model"]["batch_size"] = 4
    p["benchmarks"]["reid-cuhk"]["adapt"]["clean_methods"] = ["source", "tcr"]
    p["adapt"].update(methods=["source", "tcr"], batch_size=4)
    p.update(threads=1, device="cpu")
    shutil.copy(store_template, tmp_path / "mlflow.db")  # a migrated store (creating one takes ~5 s)
    p["mlflow"]["tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    e = {**env(), "HF_HUB_OFFLINE": "1"}
    for stage, *args in (("download",), ("prepare",), ("pretrain",), ("encode_gallery",),
                         ("adapt", "--method", "source", "--direction", "t2i"),
                         ("adapt", "--method", "tcr", "--direction", "t2i")):
        proc = subprocess.run([sys.executable, str(REPO / "stages" / f"{stage}.py"), *args, "--no-progress"],
                              cwd=repo, env=e, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, (stage, proc.stdout[-2000:], proc.stderr[-4000:])
    split = load_split(repo / "data/reid-cuhk/manifest.json")
    assert split.owner_kind == "identity" and split.n_images == 5 and split.n_captions == 9
    model = p["benchmarks"]["reid-cuhk"]["model"]["name"]
    results = sorted((repo / "results" / "reid-cuhk" / model / "t2i").rglob("clean-s0.json"))
    assert [r.relative_to(repo / "results" / "reid-cuhk" / model / "t2i").parts[0] for r in results] == ["source", "tcr"]
    for r in results:
        doc = json.loads(r.read_text())
        assert doc["status"] == "ok" and doc["n_queries"] == 9 and doc["n_gallery"] == 5
        m = doc["metrics"]
        assert 0 <= m["R@1"] <= m["R@5"] <= m["R@10"] == 100.0  # 5 images: every identity within 10
        assert 0 < m["mAP"] <= 100.0
    assert not (repo / "results" / "reid-cuhk" / model / "i2t").exists()  # ReID: text-to-image only


def test_irra_checkpoint_loads_as_clip_and_names_what_is_wrong(tmp_path: Path) -> None:
    from qshift.models import load_model

    ckpt = tiny_irra(tmp_path / "irra_tiny.pth")
    model = load_model(f"irra:48x16@{ckpt}")
    x = model.image_transform()(Image.new("RGB", (20, 64)))
    assert tuple(x.shape) == (3, 48, 16)  # IRRA's squash to H x W, no crop
    img, txt = model.encode("image", x[None]), model.encode("text", model.tokenize(["a woman in a red coat"]))
    assert img.shape == txt.shape == (1, 16) and float(img.norm()) == pytest.approx(1.0, abs=1e-5)
    names = [n for n, _ in model.norm_layers("text")]
    assert names and not any("ln_final" in n for n in names)  # TCR's rule: not the final LayerNorm
    with pytest.raises(ConfigError, match=r"has 12 patch positions, but an input of 384 x 128.*irra:HxW@"):
        load_model(f"irra:{ckpt}")
    torch.save({"model": {"cross_attn.weight": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(InputError, match=r"no CLIP weights under 'base_model\.'"):
        load_model(f"irra:{tmp_path / 'other.pth'}")
    with pytest.raises(InputError, match=r"model path .*missing\.pth not found .*IRRA checkpoint"):
        load_model(f"irra:{tmp_path / 'missing.pth'}")
