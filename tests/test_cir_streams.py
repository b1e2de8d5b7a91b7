"""Multi-modal query streams of composed queries (streams.cir; qshift.cir_streams, a RECONSTRUCTION
of REST's multi-modal query shift): each triplet's query is bit-identical to the same triplet in its
domain's own query set, sequential streams arrive in blocks, bad definitions are one-line errors
naming the key, and a run over a stream reports R@K per domain. (The builtin-cir Snakemake run with
the preset's stream: tests/test_cir.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from test_cir import SPLITS, _corrupted_queries, _gallery, world  # noqa: F401  (the tiny CIR world)
from qshift.errors import ConfigError

SPEC = {"kind": "mixed", "image": {"corruptions": ["gaussian_noise"], "severities": [3]},
        "text": {"corruptions": ["ocr"], "levels": [2]}}


def _stream(world, name: str, spec: dict):
    from qshift.cir import load_triplets
    from qshift.cir_streams import build_cir_stream

    out = world["root"] / f"stream-{name}"
    if not out.exists():
        counts = build_cir_stream(world["data"] / "manifest.json", out, name, spec, seed=0, quality=95,
                                  progress=False)
        assert sum(counts.values()) == SPLITS["n_test"]
    return out, load_triplets(out / "manifest.json")


def test_each_triplet_equals_the_same_triplet_in_its_domains_query_set(world):
    from qshift.cir import load_triplets
    from qshift.cir_streams import stream_info

    out, st = _stream(world, "mm", SPEC)
    clean = load_triplets(world["data"] / "manifest.json")
    img, txt = _corrupted_queries(world, "image"), _corrupted_queries(world, "text")  # the cells' own sets
    info = stream_info(st, "cir")
    labels = info["query_domain"]
    assert info["kind"] == "mixed" and info["order"] is None
    assert info["domains"] == ["gaussian_noise-s3", "ocr-s2"] and set(labels) == set(info["domains"])
    assert (st.sentids == clean.sentids).all() and (st.targets == clean.targets).all()
    assert (st.image_ids == clean.image_ids).all()  # the reference's identity is kept (CIRR's exclude_reference)
    for i, lab in enumerate(labels):
        ref = st.image_paths[i].read_bytes()
        if lab == "gaussian_noise-s3":  # the reference corrupted as the image cell's (same JPEG bytes), text clean
            assert ref == img.image_paths[i].read_bytes() and ref != clean.image_paths[i].read_bytes()
            assert st.captions[i] == clean.captions[i]
        else:  # the modification corrupted as the text cell's, reference clean
            assert st.captions[i] == txt.captions[i]
            assert ref == clean.image_paths[i].read_bytes()
    assert any(a != b for a, b in zip(st.captions, clean.captions))
    # one file per (reference image, image domain) actually used, shared by its triplets
    used = {int(st.image_ids[i]) for i, lab in enumerate(labels) if lab == "gaussian_noise-s3"}
    assert len(list((out / "gaussian_noise-s3").iterdir())) == len(used)
    assert json.loads((out / "manifest.json").read_text())["meta"]["stream"]["name"] == "mm"


def test_a_joint_domain_shifts_both_parts_of_the_query_as_their_cells_do(world):
    """joint: each triplet of the pair domain has the image cell's reference file (the same JPEG
    bytes, shared with the image-only domain's folder) and the text cell's modification text."""
    from qshift.cir import load_triplets
    from qshift.cir_streams import domain_parts, stream_domains, stream_info
    from qshift.streams import domain_label

    spec = {**SPEC, "joint": {"image": {"corruptions": ["gaussian_noise"], "severities": [3]},
                              "text": {"corruptions": ["ocr"], "levels": [2]}}}
    assert [domain_label(c, s) for c, s in stream_domains(spec)] == ["gaussian_noise-s3", "ocr-s2",
                                                                     "gaussian_noise-s3+ocr-s2"]
    assert [(lab, img is not None, txt is not None) for lab, img, txt in domain_parts(spec)] == [
        ("gaussian_noise-s3", True, False), ("ocr-s2", False, True), ("gaussian_noise-s3+ocr-s2", True, True)]
    out, st = _stream(world, "joint", spec)
    clean = load_triplets(world["data"] / "manifest.json")
    img, txt = _corrupted_queries(world, "image"), _corrupted_queries(world, "text")
    info = stream_info(st, "cir")
    labels = info["query_domain"]
    assert info["domains"] == ["gaussian_noise-s3", "ocr-s2", "gaussian_noise-s3+ocr-s2"]
    both = [i for i, lab in enumerate(labels) if lab == "gaussian_noise-s3+ocr-s2"]
    assert both and set(labels) == set(info["domains"])
    for i in both:
        assert st.image_paths[i].read_bytes() == img.image_paths[i].read_bytes() != clean.image_paths[i].read_bytes()
        assert st.captions[i] == txt.captions[i]
    assert any(st.captions[i] != clean.captions[i] for i in both)
    assert not (out / "gaussian_noise-s3+ocr-s2").exists()  # its references live in the image cell's folder
    used = {int(st.image_ids[i]) for i, lab in enumerate(labels) if lab in ("gaussian_noise-s3",
                                                                           "gaussian_noise-s3+ocr-s2")}
    assert len(list((out / "gaussian_noise-s3").iterdir())) == len(used)
    # one joint domain alone is not a stream; a joint part needs both sides
    from qshift.cir_streams import validate

    with pytest.raises(ConfigError, match="a single domain"):
        validate({"streams": {"cir": {"s": {"kind": "mixed", "joint": spec["joint"]}}}})
    with pytest.raises(ConfigError, match=r"streams\.cir\.s\.joint must be a mapping with both keys image"):
        validate({"streams": {"cir": {"s": {**SPEC, "joint": {"image": spec["joint"]["image"]}}}}})
    with pytest.raises(ConfigError, match=r"streams\.cir\.s\.joint\.text\.levels has 9; valid: 1\.\.7"):
        validate({"streams": {"cir": {"s": {**SPEC, "joint": {"image": spec["joint"]["image"],
                                                             "text": {"corruptions": ["ocr"], "levels": [9]}}}}}})


def test_a_sequential_stream_arrives_in_domain_blocks(world):
    from qshift.cir_streams import stream_info

    spec = {"kind": "sequential", "image": {"corruptions": ["gaussian_noise", "defocus_blur"], "severities": [3]},
            "text": {"corruptions": ["ocr"], "levels": [2]}}
    _, st = _stream(world, "seq", spec)
    info = stream_info(st, "cir")
    n = SPLITS["n_test"]
    assert sorted(info["order"].tolist()) == list(range(n))
    arrived = [info["query_domain"][i] for i in info["order"]]
    doms = info["domains"]
    assert doms == ["gaussian_noise-s3", "defocus_blur-s3", "ocr-s2"]
    blocks = [arrived[k] for k in range(n) if k == 0 or arrived[k] != arrived[k - 1]]
    assert blocks == doms  # each domain once, in the listed order
    sizes = [arrived.count(d) for d in doms]
    assert max(sizes) - min(sizes) <= 1


def test_bad_stream_definitions_are_one_line_errors_naming_the_key():
    from qshift.cir_streams import validate

    def check(spec, pattern):
        with pytest.raises(ConfigError, match=pattern) as e:
            validate({"streams": {"cir": {"s": spec}}})
        assert "\n" not in str(e.value)

    check({**SPEC, "image": {"corruptions": ["nope"], "severities": [3]}},
          r"streams\.cir\.s\.image\.corruptions has 'nope'; valid: brightness, .*gaussian_noise")
    check({**SPEC, "text": {"corruptions": ["nope"], "levels": [2]}},
          r"streams\.cir\.s\.text\.corruptions has 'nope'; valid: .*ocr")
    check({"kind": "mixed"}, r"streams\.cir\.s has no domains; give image: \{corruptions, severities\}")
    check({**SPEC, "audio": {}}, r"streams\.cir\.s: unknown key\(s\) audio; valid: kind, image, text, joint")
    check({**SPEC, "image": {"corruptions": ["gaussian_noise"], "levels": [3]}},
          r"streams\.cir\.s\.image: unknown key\(s\) levels; valid: corruptions, severities")
    check({**SPEC, "kind": "random"}, r"streams\.cir\.s\.kind is 'random'; valid: mixed, sequential")
    check({"kind": "mixed", "image": {"corruptions": ["gaussian_noise"], "severities": [3]}}, "a single domain")
    check({**SPEC, "text": {"corruptions": ["ocr"], "levels": [8]}}, r"streams\.cir\.s\.text\.levels has 8; valid: 1\.\.7")
    with pytest.raises(ConfigError, match=r"streams\.cir\.ocr: the name collides"):
        validate({"streams": {"cir": {"ocr": SPEC}}})


def test_the_params_reach_the_check_before_any_work(tmp_path):
    from qshift.config import load_params, query_cells, runs, streams

    root = Path(__file__).resolve().parents[1]
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["benchmark"] = "builtin-cir"
    cfg = load_params(root / "params.yaml", ["benchmark=builtin-cir"])
    assert list(streams(cfg, "cir")) == ["multimodal", "joint"] and streams(cfg, "i2t") == dict(cfg["streams"]["image"])
    cells = [(r.method, r.corruption, r.severity) for r in runs(cfg) if r.corruption in ("multimodal", "joint")]
    assert cells == [("source", "multimodal", 0), ("source", "joint", 0), ("tcr", "multimodal", 0), ("tcr", "joint", 0)]
    assert ("multimodal", 0) not in query_cells(cfg, "cir")
    params["benchmarks"]["builtin-cir"]["streams"]["cir"]["multimodal"]["image"]["corruptions"] = ["fog_x"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match=r"^params: streams\.cir\.multimodal\.image\.corruptions has 'fog_x'"):
        load_params(tmp_path / "params.yaml")


def test_a_run_over_the_stream_reports_each_domain(world):
    from qshift.adapt import run_stream
    from qshift.config import method_hparams

    _, st = _stream(world, "mm", SPEC)
    gallery = _gallery(world)
    out = run_stream(world["model"], "source", {}, "cir", st, gallery, batch_size=16, steps=1, seed=0, progress=False)
    by_dom = out["metrics_by_domain"]
    assert list(by_dom) == ["gaussian_noise-s3", "ocr-s2"] and out["stream"]["name"] == "mm"
    assert sum(d["n_queries"] for d in by_dom.values()) == SPLITS["n_test"]
    assert set(by_dom["ocr-s2"]) == {"R@1", "R@5", "R@10", "R@50", "n_queries"}
    # source does not adapt: each triplet ranks its target as in its domain's own query set
    rank = dict(zip(out["outcomes"]["query_id"].tolist(), out["outcomes"]["rank"].tolist()))
    labels = [str(x) for x in out["outcomes"]["domains"][out["outcomes"]["domain"]]]
    for kind, lab in (("image", "gaussian_noise-s3"), ("text", "ocr-s2")):
        cell = run_stream(world["model"], "source", {}, "cir", _corrupted_queries(world, kind), gallery,
                          batch_size=16, steps=1, seed=0, progress=False)["outcomes"]
        ids = [q for q, d in zip(out["outcomes"]["query_id"].tolist(), labels) if d == lab]
        alone = dict(zip(cell["query_id"].tolist(), cell["rank"].tolist()))
        assert [rank[q] for q in ids] == [alone[q] for q in ids]
        assert by_dom[lab]["R@1"] == pytest.approx(100.0 * np.mean([alone[q] < 1 for q in ids]))
    hp = method_hparams({"methods": {"tcr": {}}}, "tcr", "cir")
    out = run_stream(world["model"], "tcr", hp, "cir", st, gallery, batch_size=16, steps=1, seed=0, progress=False)
    assert out["status"] == "ok" and len(out["online"]["domain"]) == len(out["online"]["batch_size"])


def test_triplets_sharing_a_reference_point_at_one_file_per_domain(world, tmp_path):
    """Several triplets of one reference image: each names its own domain's file, written once."""
    from qshift.cir import load_triplets
    from qshift.cir_streams import build_cir_stream, stream_info
    from qshift.corrupt.build import build_image_queries

    doc = json.loads((world["data"] / "manifest.json").read_text())
    doc["image_root"] = str(world["data"] / "images")
    test = [im for im in doc["images"] if im["split"] == "test"]
    for a, b in zip(test[0:24:2], test[1:24:2]):  # pairs of test images -> one reference with both triplets
        a["sentences"] += b["sentences"]
        doc["images"].remove(b)
    (tmp_path / "m.json").write_text(json.dumps(doc))
    spec = {"kind": "mixed", "image": {"corruptions": ["gaussian_noise", "defocus_blur"], "severities": [3]},
            "text": {"corruptions": ["ocr"], "levels": [2]}}
    build_cir_stream(tmp_path / "m.json", tmp_path / "s", "shared", spec, seed=0, progress=False)
    st, clean = load_triplets(tmp_path / "s" / "manifest.json"), load_triplets(tmp_path / "m.json")
    labels = stream_info(st, "cir")["query_domain"]
    assert (st.sentids == clean.sentids).all() and (st.image_ids == clean.image_ids).all()
    cells = {}
    for c in ("gaussian_noise", "defocus_blur"):
        build_image_queries(tmp_path / "m.json", tmp_path / c, c, 3, seed=0, progress=False)
        cells[f"{c}-s3"] = load_triplets(tmp_path / c / "manifest.json")
    shared = 0
    for lab in ("gaussian_noise-s3", "defocus_blur-s3"):
        rows = [i for i, d in enumerate(labels) if d == lab]
        assert len(list((tmp_path / "s" / lab).iterdir())) == len({int(st.image_ids[i]) for i in rows})
        for i in rows:
            assert st.image_paths[i].read_bytes() == cells[lab].image_paths[i].read_bytes()
        shared += len(rows) - len({int(st.image_ids[i]) for i in rows})
    mixed_refs = [im for im in json.loads((tmp_path / "s" / "manifest.json").read_text())["images"]
                  if len({s["domain"] for s in im["sentences"]}) > 1]
    assert shared > 0  # some file serves two triplets of one reference (written once)
    assert mixed_refs  # and some reference carries two domains: two files, each triplet its own
    for im in mixed_refs:
        refs = {s["domain"]: s["reference"] for s in im["sentences"]}
        assert len(set(refs.values())) == len(refs)


def test_a_seed_drawn_stream_corrupts_each_part_as_that_seeds_cell_sets(world, tmp_path):
    """seed_corruptions: the stream for run seed 7 keeps the project seed's domain per triplet and
    corrupts each part exactly as seed 7's drawn cell sets do (image-seed7/, text-seed7/)."""
    from qshift.cir import load_triplets
    from qshift.cir_streams import build_cir_stream, stream_info, stream_path
    from qshift.config import load_params
    from qshift.corrupt.build import build_image_queries, build_text_queries

    manifest = world["data"] / "manifest.json"
    _, base = _stream(world, "mm", SPEC)
    out = tmp_path / "drawn"
    build_cir_stream(manifest, out, "mm", SPEC, seed=0, quality=95, progress=False, draw=7)
    st = load_triplets(out / "manifest.json")
    build_image_queries(manifest, tmp_path / "img7", "gaussian_noise", 3, seed=0, progress=False, draw=7)
    build_text_queries(manifest, tmp_path / "txt7.json", "ocr", 2, seed=0, progress=False, draw=7)
    img7, txt7 = load_triplets(tmp_path / "img7/manifest.json"), load_triplets(tmp_path / "txt7.json")
    labels = stream_info(st, "cir")["query_domain"]
    assert labels == stream_info(base, "cir")["query_domain"]  # the domains: the project seed's assignment
    for i, lab in enumerate(labels):
        if lab == "gaussian_noise-s3":
            assert st.image_paths[i].read_bytes() == img7.image_paths[i].read_bytes()
            assert st.image_paths[i].read_bytes() != base.image_paths[i].read_bytes()
        else:
            assert st.captions[i] == txt7.captions[i]
    assert any(a != b for a, b in zip(st.captions, base.captions))
    assert json.loads((out / "manifest.json").read_text())["meta"]["stream"]["draw_seed"] == 7
    root = Path(__file__).resolve().parents[1]
    cfg = load_params(root / "params.yaml", ["benchmark=builtin-cir", "seeds=[42, 7]", "seed_corruptions=true"])
    assert stream_path(cfg, "cir", "joint", 7) == "data/queries/builtin-cir/cir-stream-seed7/joint"
    assert stream_path(cfg, "cir", "joint", 42) == "data/queries/builtin-cir/cir-stream/joint"
