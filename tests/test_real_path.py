"""End-to-end: the real-benchmark path through the one switch (``benchmark:``), offline.

A local HTTP server on 127.0.0.1 plays the upstream hosts: it serves a tiny COCO-like
fixture — BLIP's ``coco_karpathy_test.json`` layout for 24 images x 5 captions and a
``val2014.zip`` of small JPEGs (plus an image outside the test split). The throw-away repo's
params keep the real default URLs; ``download.mirror`` maps their prefixes to the server, so
the mirror override is what makes the run offline. The preset's model is a tiny random
transformers CLIP saved to disk (``hf-clip:<folder>``), loaded by the pretrain stage (fetched,
not trained) with HF_HUB_OFFLINE=1. Then ``snakemake --config benchmark=qgs-coco`` runs the
real stage CLIs: download -> prepare -> pretrain (fetch) -> encode_gallery -> adapt -> report.
A second run switches the same repo to ``coco-c`` (one image and one text corruption, a tiny
BLIP): the zip comes from the download cache, not the server.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import yaml

from pipeline_utils import make_repo, run
from test_download import Server, jpeg, zip_bytes
from test_models import make_tiny_blip, make_tiny_hf_clip
from qshift.io import MARKER

pytestmark = pytest.mark.pipeline

N_IMAGES = 24
BLIP_PREFIX = "https://storage.googleapis.com/sfr-vision-language-research/datasets/"
COCO_PREFIX = "http://images.cocodataset.org/"
ANN_PATH, ZIP_PATH = "/blip/coco_karpathy_test.json", "/coco/zips/val2014.zip"
NAMES = [f"COCO_val2014_{100 + 7 * i:012d}.jpg" for i in range(N_IMAGES)]
WORDS = ["dog", "cat", "red", "blue", "grass", "two", "on", "the", "a", "man", "wave", "surfboard"]


def raw_captions(i: int) -> list[str]:
    """Five captions with the mess real annotations have (case, punctuation, spacing); the
    first image has a sixth, which ``captions_per_image: 5`` drops."""
    rng = random.Random(i)
    caps = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) for _ in range(5)]
    caps[0] = f"A  {caps[0].upper()}!"
    caps[1] = f'The "{caps[1]}"; (#{i})\n'
    return caps + (["a sixth caption"] if i == 0 else [])


def annotations() -> list[dict]:
    return [{"image": f"val2014/{n}", "caption": raw_captions(i)} for i, n in enumerate(NAMES)]


def val2014_zip() -> bytes:
    members = {f"val2014/{n}": jpeg(i) for i, n in enumerate(NAMES)}
    members["val2014/COCO_val2014_000000999999.jpg"] = jpeg(99)  # not a test image: not extracted
    return zip_bytes(members)


def results(repo: Path, bench: str) -> list[Path]:
    from qshift.config import load_params, runs

    cfg = load_params(repo / "params.yaml", [f"benchmark={bench}"])
    return [repo / r.result_path for r in runs(cfg)]


def check_benchmark(repo: Path, server: Server, bench: str, model: str, source: str) -> None:
    """What one benchmark's run must leave behind."""
    from qshift.data.manifest import load_split, normalize_caption

    rec = json.loads((repo / f"data/raw/{bench}/download.json").read_text())
    assert rec["dataset"] == "coco" and rec["n_images"] == N_IMAGES and rec["n_captions"] == 5 * N_IMAGES
    ann_rec, img_rec = rec["files"]
    assert ann_rec["url"] == BLIP_PREFIX + "coco_karpathy_test.json"  # params keep the real URLs ...
    assert img_rec["url"] == COCO_PREFIX + "zips/val2014.zip"
    assert ann_rec["fetched_from"] == server.url(ANN_PATH)  # ... the mirror served them
    assert img_rec["fetched_from"] == server.url(ZIP_PATH)
    assert img_rec["size"] == len(server.files[ZIP_PATH])
    assert sorted(p.name for p in (repo / f"data/raw/{bench}/images").iterdir() if p.name != MARKER) == sorted(NAMES)

    split = load_split(repo / f"data/{bench}/manifest.json")
    assert split.n_images == N_IMAGES and split.n_captions == 5 * N_IMAGES
    assert [p.name for p in split.image_paths] == NAMES
    expected = [normalize_caption(c) for i in range(N_IMAGES) for c in raw_captions(i)[:5]]
    assert split.captions == expected
    assert split.captions[0] == split.captions[0].lower() and "!" not in split.captions[0]

    info = json.loads((repo / f"models/{model}/model.json").read_text())
    assert info["trained"] is False and info["source"] == source and info["parameters"] > 0
    assert not (repo / f"models/{model}/open_clip_config.json").exists()  # nothing was trained

    paths = results(repo, bench)
    assert paths
    for path in paths:
        doc = json.loads(path.read_text())
        assert doc["key"]["dataset"] == bench and doc["key"]["model"] == model
        for k in ("R@1", "R@5", "R@10"):
            assert 0.0 <= doc["metrics"][k] <= 100.0, (path, doc["metrics"])
        assert doc["metrics"]["R@1"] <= doc["metrics"]["R@5"] <= doc["metrics"]["R@10"]
        assert doc["n_queries"] == (N_IMAGES if doc["key"]["direction"] == "i2t" else 5 * N_IMAGES)
    report = (repo / "reports/report.md").read_text()
    assert f"{bench} / {model}" in report and "| tcr |" in report and "| source |" in report
    assert "Every run of the grid finished." in report


def assert_fetched_once(server: Server) -> None:
    """The mirror reached the server, one full GET per file (over the whole module)."""
    assert [e["status"] for e in server.requests(ANN_PATH)] == [200]
    assert [e["status"] for e in server.requests(ZIP_PATH)] == [200]


def assert_nothing_to_do(repo: Path, bench: str) -> None:
    proc = run(["snakemake", "--cores", "2", "--config", f"benchmark={bench}"], repo)
    assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def server():
    s = Server()
    s.files[ANN_PATH] = json.dumps(annotations()).encode()
    s.files[ZIP_PATH] = val2014_zip()
    yield s
    s.close()


@pytest.fixture(scope="module")
def real_repo(tmp_path_factory, server):
    """A repo copy whose params reach the server through the mirror and whose presets use tiny models."""
    root = tmp_path_factory.mktemp("real")
    clip, blip = make_tiny_hf_clip(root / "tiny-clip"), make_tiny_blip(root / "tiny-blip")
    repo = make_repo(root / "repo")
    p = yaml.safe_load((repo / "params.yaml").read_text())
    assert p["datasets"]["coco"]["annotations"]["url"] == BLIP_PREFIX + "coco_karpathy_test.json"
    assert p["datasets"]["coco"]["images"]["url"] == COCO_PREFIX + "zips/val2014.zip"
    p["download"].update(cache_dir="data/cache", retries=2, backoff=0.01, timeout=10,
                         mirror={BLIP_PREFIX: server.url("/blip/"), COCO_PREFIX: server.url("/coco/")})
    p["datasets"]["coco"]["n_images"] = N_IMAGES
    qgs = p["benchmarks"]["qgs-coco"]
    qgs["model"] = {"name": "tiny-hf-clip", "source": f"hf-clip:{clip}", "batch_size": 16}
    qgs["adapt"] = {"clean_methods": ["source", "tcr"]}
    cc = p["benchmarks"]["coco-c"]
    cc["model"] = {"name": "tiny-hf-blip", "source": f"hf-blip:{blip}", "batch_size": 16}
    cc["corrupt"] = {"image": {"names": ["gaussian_noise"], "severities": [5]},
                     "text": {"names": ["char_swap"], "levels": [7]}}
    cc["adapt"] = {"clean_methods": ["source"]}  # fewer jobs: tcr on the corrupted cells only
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    return repo


@pytest.mark.slow
def test_qgs_coco_runs_offline_through_the_mirror(real_repo, server, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = real_repo
    run(["snakemake", "--cores", "2", "--config", "benchmark=qgs-coco"], repo)
    assert_fetched_once(server)
    assert (repo / "data/cache/coco/val2014.zip").read_bytes() == server.files[ZIP_PATH]
    check_benchmark(repo, server, "qgs-coco", "tiny-hf-clip", f"hf-clip:{repo.parent / 'tiny-clip'}")
    # query-gallery shift: every listed method on clean queries only
    keys = {(d["key"]["direction"], d["key"]["method"], d["key"]["corruption"])
            for d in (json.loads(p.read_text()) for p in results(repo, "qgs-coco"))}
    assert keys == {(d, m, "clean") for d in ("i2t", "t2i") for m in ("source", "tcr")}
    assert_nothing_to_do(repo, "qgs-coco")


@pytest.mark.slow
def test_coco_c_switch_reuses_the_download_cache(real_repo, server, monkeypatch):
    """The same repo switched to coco-c: corrupted cells, a tiny BLIP, the zip from the cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = real_repo
    cached = (repo / "data/cache/coco/val2014.zip").is_file()  # True after the qgs-coco test
    run(["snakemake", "--cores", "2", "--config", "benchmark=coco-c"], repo)
    # each file went over the wire once for both benchmarks: the second came from download.cache_dir
    assert_fetched_once(server)
    assert [f["cached"] for f in json.loads((repo / "data/raw/coco-c/download.json").read_text())["files"]] \
        == [cached, cached]
    check_benchmark(repo, server, "coco-c", "tiny-hf-blip", f"hf-blip:{repo.parent / 'tiny-blip'}")
    keys = {(d["key"]["direction"], d["key"]["method"], d["key"]["corruption"], d["key"]["severity"])
            for d in (json.loads(p.read_text()) for p in results(repo, "coco-c"))}
    assert keys == {("i2t", "source", "clean", 0), ("t2i", "source", "clean", 0)} | {
        (d, m, c, s) for m in ("source", "tcr") for d, c, s in (("i2t", "gaussian_noise", 5), ("t2i", "char_swap", 7))}
    assert_nothing_to_do(repo, "coco-c")
    if cached:  # qgs-coco ran first in this repo: switching back recomputes nothing of its grid
        proc = run(["snakemake", "--dry-run", "--config", "benchmark=qgs-coco"], repo)
        plan = proc.stdout + proc.stderr
        for job in ("pretrain", "download", "prepare", "encode_gallery", "adapt"):
            assert not re.search(rf"^{job}\s+\d+", plan, re.M), plan  # only the shared report/examples
