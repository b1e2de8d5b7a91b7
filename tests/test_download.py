"""The download stage against a real HTTP server on 127.0.0.1 serving small fixture archives.

The server (``http.server.ThreadingHTTPServer`` in a thread) honours ``Range`` and can be
told, per path, to cut the body after N bytes once, to serve wrong bytes, to answer 503 a
number of times, or to ignore ``Range``. Every request is logged (Range header, status,
bytes sent) so the tests check what went over the wire, and every failure test checks the
file system for what was (not) left behind.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import runpy
import sys
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from PIL import Image

from qshift.data.download import DownloadError, apply_mirror, fetch, safe_extract
from qshift.data.karpathy import download_dataset, prepare_real, read_annotations
from qshift.data.manifest import load_split, normalize_caption
from qshift.errors import ConfigError, InputError
from qshift.io import MARKER, sha256_file

REPO = Path(__file__).resolve().parents[1]


# -- a local HTTP server ------------------------------------------------------------------------
class Server:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.modes: dict[str, dict] = {}
        self.log: list[dict] = []
        state = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                rng = self.headers.get("Range")
                entry = {"path": path, "range": rng, "status": None, "sent": 0}
                state.log.append(entry)
                mode = state.modes.setdefault(path, {})
                if path not in state.files:
                    entry["status"] = 404
                    self.send_error(404)
                    return
                if mode.get("fail", 0) > 0:
                    mode["fail"] -= 1
                    entry["status"] = 503
                    self.send_error(503)
                    return
                data = mode.get("wrong", state.files[path])
                start = 0
                if rng and not mode.get("no_range"):
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        entry["status"] = 416
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                    entry["status"] = 206
                else:
                    self.send_response(200)
                    entry["status"] = 200
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                cut = mode.pop("truncate_once", None)
                if cut is not None:
                    body = body[:cut]
                    self.close_connection = True
                self.wfile.write(body)
                self.wfile.flush()
                entry["sent"] = len(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path

    def requests(self, path: str) -> list[dict]:
        return [e for e in self.log if e["path"] == path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


# -- fixtures: tiny JPEGs, annotation files, archives --------------------------------------------
COCO_NAMES = [f"COCO_val2014_{i:012d}.jpg" for i in (42, 73, 74)]
RAW_CAPS = [
    ["A Man riding a WAVE on top of a surfboard.", "Surfer (young) rides: the wave!", "a", "b", "c",
     "a sixth caption that captions_per_image drops"],
    ['The "big" dog; runs*on #grass~', "dog", "dog running", "a dog", "brown dog"],
    ["Two  cats\n sleeping.", "cats", "two cats", "cats sleep", "sleeping cats"],
]


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (seed * 40 % 256, 90, 200)).save(buf, "JPEG")
    return buf.getvalue()


def blip_annotations(names: list[str], folder: str) -> bytes:
    return json.dumps([{"image": f"{folder}/{n}", "caption": caps} for n, caps in zip(names, RAW_CAPS)]).encode()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def tar_bytes(members: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def coco_zip() -> bytes:  # val2014.zip layout, plus an image that is not in the test split
    members = {f"val2014/{n}": jpeg(i) for i, n in enumerate(COCO_NAMES)}
    members["val2014/COCO_val2014_000000000999.jpg"] = jpeg(9)
    return zip_bytes(members)


DL = {"cache_dir": "cache", "mirror": {}, "retries": 2, "backoff": 0.001, "timeout": 10}


def coco_cfg(server: Server, **images) -> dict:
    return {"kind": "karpathy",
            "annotations": {"url": server.url("/ann/coco_karpathy_test.json"), "sha256": None, "path": None,
                            "member": None},
            "images": {"url": server.url("/zips/val2014.zip"), "sha256": None, "path": None, "member": None,
                       **images},
            "n_images": 3, "captions_per_image": 5}


def dl_cfg(tmp: Path, **kw) -> dict:
    return {**DL, "cache_dir": str(tmp / "cache"), **kw}


def all_files(root: Path) -> set[str]:
    """Every path below ``root`` but the atomic writer's marker (qshift.io.MARKER)."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.name != MARKER}


# -- end to end ---------------------------------------------------------------------------------
def test_clean_run_end_to_end(server: Server, tmp_path: Path) -> None:
    server.files["/ann/coco_karpathy_test.json"] = blip_annotations(COCO_NAMES, "val2014")
    server.files["/zips/val2014.zip"] = coco_zip()
    cfg = coco_cfg(server, sha256=hashlib.sha256(server.files["/zips/val2014.zip"]).hexdigest())
    info = download_dataset("coco", cfg, dl_cfg(tmp_path), tmp_path / "raw" / "coco", progress=False)
    raw = tmp_path / "raw" / "coco"
    assert sorted(p.name for p in (raw / "images").iterdir() if p.name != MARKER) == sorted(COCO_NAMES)  # only test images
    rec = json.loads((raw / "download.json").read_text())
    assert rec == json.loads(json.dumps(info))
    ann_rec, img_rec = rec["files"]
    assert img_rec["verified"] is True and ann_rec["verified"] is False
    assert img_rec["sha256"] == sha256_file(tmp_path / "cache" / "coco" / "val2014.zip")
    assert img_rec["url"] == server.url("/zips/val2014.zip") and img_rec["size"] == len(server.files["/zips/val2014.zip"])

    stats = prepare_real("coco", cfg, raw, tmp_path / "coco", progress=False)
    assert stats == {"dataset": "coco", "n_images": 3, "n_captions": 15}
    split = load_split(tmp_path / "coco" / "manifest.json")
    assert split.n_images == 3 and split.n_captions == 15
    assert [p.name for p in split.image_paths] == COCO_NAMES
    assert split.captions[0] == "a man riding a wave on top of a surfboard"
    assert split.captions[1] == "surfer young rides the wave"
    assert split.captions[5] == "the big dog runs on grass"
    assert split.captions[10] == "two cats sleeping"
    assert split.captions == [normalize_caption(c) for caps in RAW_CAPS for c in caps[:5]]
    assert split.txt2img.tolist() == [i for i in range(3) for _ in range(5)]
    for p in split.image_paths:
        with Image.open(p) as im:
            assert im.size == (8, 8)

    # a rerun reuses the cache: no new request
    n = len(server.log)
    download_dataset("coco", cfg, dl_cfg(tmp_path), tmp_path / "raw2", progress=False)
    assert len(server.log) == n


def test_builtin_writes_an_empty_download_record(tmp_path: Path) -> None:
    info = download_dataset("builtin", {"n_test": 10}, DL, tmp_path / "raw" / "builtin", progress=False)
    rec = json.loads((tmp_path / "raw" / "builtin" / "download.json").read_text())
    assert rec == info and rec["files"] == [] and rec["kind"] == "builtin"


# -- resume, retries, checksums, mirrors --------------------------------------------------------
def test_truncated_download_resumes_with_range(server: Server, tmp_path: Path) -> None:
    data = coco_zip() * 20
    server.files["/big.zip"] = data
    server.modes["/big.zip"] = {"truncate_once": len(data) // 3}
    sleeps: list[float] = []
    got = fetch(server.url("/big.zip"), tmp_path / "big.zip", progress=False, retries=2, backoff=0.5,
                chunk=4096, sleep=sleeps.append)
    reqs = server.requests("/big.zip")
    assert [r["status"] for r in reqs] == [200, 206]
    assert reqs[0]["range"] is None and reqs[1]["range"] == f"bytes={len(data) // 3}-"
    assert sum(r["sent"] for r in reqs) < 2 * len(data)
    assert (tmp_path / "big.zip").read_bytes() == data and got.size == len(data) and not got.cached
    assert not (tmp_path / "big.zip.part").exists()
    assert sleeps == [0.5]


def test_interrupted_download_resumes_on_rerun(server: Server, tmp_path: Path) -> None:
    data = coco_zip() * 10
    server.files["/f.zip"] = data
    server.modes["/f.zip"] = {"truncate_once": 1000}
    with pytest.raises(DownloadError, match="rerun to resume"):
        fetch(server.url("/f.zip"), tmp_path / "f.zip", progress=False, retries=0)
    assert (tmp_path / "f.zip.part").stat().st_size == 1000 and not (tmp_path / "f.zip").exists()
    fetch(server.url("/f.zip"), tmp_path / "f.zip", progress=False, retries=0)
    assert server.requests("/f.zip")[-1]["range"] == "bytes=1000-"
    assert (tmp_path / "f.zip").read_bytes() == data


def test_server_ignoring_range_restarts_from_zero(server: Server, tmp_path: Path) -> None:
    data = coco_zip()
    server.files["/f.zip"] = data
    server.modes["/f.zip"] = {"no_range": True}
    (tmp_path / "f.zip.part").write_bytes(b"garbage that must not be kept")
    (tmp_path / "f.zip.meta.json").write_text(json.dumps({"url": server.url("/f.zip"), "complete": False}))
    fetch(server.url("/f.zip"), tmp_path / "f.zip", progress=False)
    assert server.requests("/f.zip")[0]["range"] is not None  # it asked to resume ...
    assert (tmp_path / "f.zip").read_bytes() == data  # ... and restarted, no garbage kept


def test_complete_part_file_is_finished_without_body(server: Server, tmp_path: Path) -> None:
    data = b"x" * 500
    server.files["/f.bin"] = data
    (tmp_path / "f.bin.part").write_bytes(data)
    (tmp_path / "f.bin.meta.json").write_text(json.dumps({"url": server.url("/f.bin"), "complete": False}))
    fetch(server.url("/f.bin"), tmp_path / "f.bin", progress=False)
    assert [r["status"] for r in server.requests("/f.bin")] == [416]
    assert (tmp_path / "f.bin").read_bytes() == data


def test_retries_with_backoff_then_success(server: Server, tmp_path: Path) -> None:
    server.files["/f.bin"] = b"payload"
    server.modes["/f.bin"] = {"fail": 3}
    sleeps: list[float] = []
    fetch(server.url("/f.bin"), tmp_path / "f.bin", progress=False, retries=3, backoff=0.25, sleep=sleeps.append)
    assert sleeps == [0.25, 0.5, 1.0]
    assert [r["status"] for r in server.requests("/f.bin")] == [503, 503, 503, 200]
    assert (tmp_path / "f.bin").read_bytes() == b"payload"


def test_retries_exhausted_and_404_not_retried(server: Server, tmp_path: Path) -> None:
    server.files["/f.bin"] = b"payload"
    server.modes["/f.bin"] = {"fail": 10}
    sleeps: list[float] = []
    with pytest.raises(DownloadError, match=r"failed after 2 retries: HTTP 503"):
        fetch(server.url("/f.bin"), tmp_path / "f.bin", progress=False, retries=2, backoff=0.01, sleep=sleeps.append)
    assert len(server.requests("/f.bin")) == 3 and sleeps == [0.01, 0.02]
    with pytest.raises(DownloadError, match=r"/missing.bin failed: HTTP 404"):
        fetch(server.url("/missing.bin"), tmp_path / "m.bin", progress=False, retries=5, sleep=sleeps.append)
    assert len(server.requests("/missing.bin")) == 1 and len(sleeps) == 2
    # connection refused (nothing listens) is retried too
    dead = server.base.rsplit(":", 1)[0] + ":1/x"
    with pytest.raises(DownloadError, match="failed after 1 retries"):
        fetch(dead, tmp_path / "x", progress=False, retries=1, sleep=sleeps.append)


def test_checksum_mismatch_keeps_nothing(server: Server, tmp_path: Path) -> None:
    good = coco_zip()
    server.files["/ann/coco_karpathy_test.json"] = blip_annotations(COCO_NAMES, "val2014")
    server.files["/zips/val2014.zip"] = good
    server.modes["/zips/val2014.zip"] = {"wrong": zip_bytes({"val2014/x.jpg": b"evil"})}
    expected = hashlib.sha256(good).hexdigest()
    cfg = coco_cfg(server, sha256=expected)
    with pytest.raises(DownloadError) as e:
        download_dataset("coco", cfg, dl_cfg(tmp_path), tmp_path / "raw" / "coco", progress=False)
    msg = str(e.value)
    assert server.url("/zips/val2014.zip") in msg and expected in msg
    assert f"got {hashlib.sha256(server.modes['/zips/val2014.zip']['wrong']).hexdigest()}" in msg
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").iterdir())
    assert not list((tmp_path / "cache" / "coco").glob("val2014.zip*"))  # no file, no part, no sidecar


def test_mirror_override_routes_to_the_server(server: Server, tmp_path: Path) -> None:
    server.files["/mirror/zips/val2014.zip"] = b"zipdata"
    canonical = "http://images.cocodataset.invalid/zips/val2014.zip"
    mirror = {"http://images.cocodataset.invalid/": server.url("/mirror/"), "http://": "http://nowhere.invalid/"}
    assert apply_mirror(canonical, mirror) == server.url("/mirror/zips/val2014.zip")  # longest prefix wins
    got = fetch(canonical, tmp_path / "val2014.zip", mirror=mirror, progress=False)
    assert got.url == canonical and got.fetched_from == server.url("/mirror/zips/val2014.zip")
    assert (tmp_path / "val2014.zip").read_bytes() == b"zipdata"
    with pytest.raises(ConfigError, match="download.mirror"):
        apply_mirror(canonical, {"http://": 3})


def test_changed_url_is_fetched_again(server: Server, tmp_path: Path) -> None:
    server.files["/a.bin"], server.files["/b.bin"] = b"aaa", b"bbb"
    fetch(server.url("/a.bin"), tmp_path / "f.bin", progress=False)
    assert fetch(server.url("/a.bin"), tmp_path / "f.bin", progress=False).cached
    got = fetch(server.url("/b.bin"), tmp_path / "f.bin", progress=False)
    assert not got.cached and (tmp_path / "f.bin").read_bytes() == b"bbb"


# -- safe extraction ----------------------------------------------------------------------------
def _tar_with(info: tarfile.TarInfo, data: bytes = b"") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        ok = tarfile.TarInfo("ok/file.txt")
        ok.size = 2
        tf.addfile(ok, io.BytesIO(b"ok"))
        info.size = len(data) if info.isfile() else 0
        tf.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return buf.getvalue()


def _tinfo(name: str, type_: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = type_, linkname
    return info


def _zip_symlink(name: str, target: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ok/file.txt", b"ok")
        zi = zipfile.ZipInfo(name)
        zi.external_attr = (0o120777 << 16)
        zf.writestr(zi, target)
    return buf.getvalue()


MALICIOUS = {
    "zip_absolute": ("x.zip", lambda: zip_bytes({"ok/file.txt": b"ok", "/tmp/qshift_evil.txt": b"evil"}), "absolute"),
    "zip_dotdot": ("x.zip", lambda: zip_bytes({"ok/file.txt": b"ok", "a/../../outside.txt": b"evil"}), "'..'"),
    "zip_symlink": ("x.zip", lambda: _zip_symlink("ok/link", "../../outside.txt"), "symlink"),
    "tar_absolute": ("x.tar", lambda: _tar_with(_tinfo("/tmp/qshift_evil.txt"), b"evil"), "absolute"),
    "tar_dotdot": ("x.tar.gz", lambda: tar_bytes({"ok/file.txt": b"ok", "../outside.txt": b"evil"}), "'..'"),
    "tar_symlink": ("x.tar", lambda: _tar_with(_tinfo("ok/link", tarfile.SYMTYPE, "../../outside.txt")), "symlink"),
    "tar_symlink_abs": ("x.tar", lambda: _tar_with(_tinfo("link", tarfile.SYMTYPE, "/etc/passwd")), "symlink"),
    "tar_hardlink": ("x.tar", lambda: _tar_with(_tinfo("ok/hard", tarfile.LNKTYPE, "../outside.txt")), "hardlink"),
    "tar_device": ("x.tar", lambda: _tar_with(_tinfo("ok/dev", tarfile.CHRTYPE)), "device"),
    "tar_fifo": ("x.tar", lambda: _tar_with(_tinfo("ok/fifo", tarfile.FIFOTYPE)), "FIFO"),
}


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_malicious_archive_rejected_nothing_written(case: str, tmp_path: Path) -> None:
    fname, make, why = MALICIOUS[case]
    work = tmp_path / "work"
    work.mkdir()
    archive = work / fname
    archive.write_bytes(make())
    before = all_files(tmp_path)
    with pytest.raises(InputError, match=f"unsafe archive .*{why}") as e:
        safe_extract(archive, work / "dest" / "images", progress=False)
    assert "nothing was extracted" in str(e.value)
    assert all_files(tmp_path) == before  # no target, no temp folder, nothing beside
    assert not Path("/tmp/qshift_evil.txt").exists()


def test_malicious_image_archive_fails_the_stage_cleanly(server: Server, tmp_path: Path) -> None:
    server.files["/ann/coco_karpathy_test.json"] = blip_annotations(COCO_NAMES, "val2014")
    members = {f"val2014/{n}": jpeg(i) for i, n in enumerate(COCO_NAMES)}
    members["../../escape.jpg"] = b"evil"
    server.files["/zips/val2014.zip"] = tar_bytes(members)
    cfg = coco_cfg(server, url=server.url("/zips/val2014.tar.gz"))
    server.files["/zips/val2014.tar.gz"] = server.files.pop("/zips/val2014.zip")
    with pytest.raises(InputError, match="unsafe archive"):
        download_dataset("coco", cfg, dl_cfg(tmp_path), tmp_path / "out" / "raw" / "coco", progress=False)
    assert not (tmp_path / "out" / "raw" / "coco").exists()
    assert not (tmp_path / "escape.jpg").exists() and not (tmp_path / "out" / "escape.jpg").exists()
    assert list((tmp_path / "out" / "raw").iterdir()) == []


def test_safe_extract_benign_archives(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in {"top/a.txt": b"A", "top/sub/b.txt": b"B"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        tf.addfile(_tinfo("top/link", tarfile.SYMTYPE, "a.txt"))  # inside: skipped, not rejected
    (tmp_path / "t.tgz").write_bytes(buf.getvalue())
    written = safe_extract(tmp_path / "t.tgz", tmp_path / "out", progress=False)
    assert written == {"top/a.txt": "top/a.txt", "top/sub/b.txt": "top/sub/b.txt"}
    assert all_files(tmp_path / "out") == {"top", "top/a.txt", "top/sub", "top/sub/b.txt"}
    assert (tmp_path / "out" / "top" / "sub" / "b.txt").read_bytes() == b"B"
    # a select() mapping that tries to escape is refused too
    with pytest.raises(InputError, match="'..'"):
        safe_extract(tmp_path / "t.tgz", tmp_path / "out2", select=lambda m: "../" + m, progress=False)
    assert not (tmp_path / "out2").exists()
    (tmp_path / "bad.zip").write_bytes(b"not an archive")
    with pytest.raises(InputError, match="cannot read archive"):
        safe_extract(tmp_path / "bad.zip", tmp_path / "out3", progress=False)


# -- Flickr30k: images from a local archive or folder -------------------------------------------
FLICKR_NAMES = ["1007129816.jpg", "1009434119.jpg", "101362133.jpg"]


def flickr_cfg(server: Server, images_path: str | None) -> dict:
    server.files["/ann/flickr30k_test.json"] = blip_annotations(FLICKR_NAMES, "flickr30k-images")
    return {"kind": "karpathy",
            "annotations": {"url": server.url("/ann/flickr30k_test.json"), "sha256": None, "path": None,
                            "member": None},
            "images": {"url": None, "sha256": None, "path": images_path, "member": None},
            "n_images": 3, "captions_per_image": 5}


@pytest.mark.parametrize("layout", ["tar.gz", "zip", "folder"])
def test_flickr_local_images(layout: str, server: Server, tmp_path: Path) -> None:
    members = {f"flickr30k_images/flickr30k_images/{n}": jpeg(i) for i, n in enumerate(FLICKR_NAMES)}
    members["flickr30k_images/flickr30k_images/999.jpg"] = jpeg(7)
    if layout == "folder":
        src = tmp_path / "user"
        for name, data in members.items():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes(data)
    else:
        src = tmp_path / f"flickr30k-images.{layout}"
        src.write_bytes(tar_bytes(members) if layout == "tar.gz" else zip_bytes(members))
    cfg = flickr_cfg(server, str(src))
    info = download_dataset("flickr30k", cfg, dl_cfg(tmp_path), tmp_path / "raw", progress=False)
    assert info["files"][1]["path"] == str(src.resolve()) and info["files"][1]["url"] is None
    prepare_real("flickr30k", cfg, tmp_path / "raw", tmp_path / "flickr30k", progress=False)
    split = load_split(tmp_path / "flickr30k" / "manifest.json")
    assert [p.name for p in split.image_paths] == FLICKR_NAMES and split.n_captions == 15
    assert [p.read_bytes() for p in split.image_paths] == [jpeg(i) for i in range(3)]
    if layout == "folder":
        assert len(list(src.rglob("*.jpg"))) == 4  # the user's folder is left as it was


def test_flickr_without_images_path_says_where_to_get_them(server: Server, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"datasets\.flickr30k\.images.*request form.*images\.path"):
        download_dataset("flickr30k", flickr_cfg(server, None), dl_cfg(tmp_path), tmp_path / "raw", progress=False)
    with pytest.raises(InputError, match=r"datasets\.flickr30k\.images\.path: .*nope does not exist"):
        download_dataset("flickr30k", flickr_cfg(server, str(tmp_path / "nope")), dl_cfg(tmp_path), tmp_path / "raw",
                         progress=False)
    assert not (tmp_path / "raw").exists()


def test_missing_test_images_are_an_error(server: Server, tmp_path: Path) -> None:
    src = tmp_path / "imgs"
    src.mkdir()
    (src / FLICKR_NAMES[0]).write_bytes(jpeg(0))
    with pytest.raises(InputError, match=r"2 of 3 test images .* not in .*imgs \(e\.g\. 1009434119\.jpg, 101362133\.jpg\)"):
        download_dataset("flickr30k", flickr_cfg(server, str(src)), dl_cfg(tmp_path), tmp_path / "raw", progress=False)
    assert not (tmp_path / "raw").exists()


# -- annotation formats and errors --------------------------------------------------------------
def test_karpathy_format_from_an_archive_member(server: Server, tmp_path: Path) -> None:
    doc = {"dataset": "coco", "images": [
        {"filepath": "val2014", "filename": n, "split": split, "cocoid": i,
         "sentences": [{"raw": c, "sentid": 10 * i + j} for j, c in enumerate(RAW_CAPS[i % 3])]}
        for i, (n, split) in enumerate(zip(COCO_NAMES + ["COCO_train2014_000000000001.jpg"],
                                           ["test", "train", "test", "restval"]))]}
    server.files["/caption_datasets.zip"] = zip_bytes({"dataset_coco.json": json.dumps(doc).encode(),
                                                        "dataset_flickr8k.json": b"{}"})
    server.files["/zips/val2014.zip"] = coco_zip()
    cfg = coco_cfg(server)
    cfg["annotations"]["url"] = server.url("/caption_datasets.zip")
    cfg["n_images"] = 2
    with pytest.raises(ConfigError, match="annotations.member"):
        download_dataset("coco", cfg, dl_cfg(tmp_path), tmp_path / "raw", progress=False)
    cfg["annotations"]["member"] = "dataset_coco.json"
    info = download_dataset("coco", cfg, dl_cfg(tmp_path), tmp_path / "raw", progress=False)
    assert info["format"] == "karpathy" and info["n_images"] == 2 and info["n_captions"] == 10
    prepare_real("coco", cfg, tmp_path / "raw", tmp_path / "coco", progress=False)
    split = load_split(tmp_path / "coco" / "manifest.json")
    assert [p.name for p in split.image_paths] == [COCO_NAMES[0], COCO_NAMES[2]]


@pytest.mark.parametrize("doc, match", [
    ({"foo": 1}, "expected a list"),
    ([{"image": "a.jpg", "caption": ["x"]}, {"image": "b.jpg"}], r"\[1\] is missing key 'caption'"),
    ([{"image": "a.jpg", "caption": []}], r"\[0\]\.caption must be a non-empty list"),
    ([{"caption": ["x"]}], r"\[0\] needs a string key 'image'"),
    ([{"image": "x/a.jpg", "caption": ["x"]}, {"image": "y/a.jpg", "caption": ["y"]}], "share the file name 'a.jpg'"),
    ({"images": [{"filename": "a.jpg", "split": "test", "sentences": [{"sentid": 1}]}]}, r"images\[0\]\.sentences"),
    ({"images": [{"filename": "a.jpg", "split": "train", "sentences": [{"raw": "x"}]}]}, "no images in the 'test'"),
])
def test_malformed_annotations_name_file_and_key(doc, match: str, tmp_path: Path) -> None:
    p = tmp_path / "ann.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(InputError, match=f"malformed annotation file {p}.*{match}"):
        read_annotations(p)


def test_wrong_image_count_and_missing_download(server: Server, tmp_path: Path) -> None:
    server.files["/ann/coco_karpathy_test.json"] = blip_annotations(COCO_NAMES, "val2014")
    server.files["/zips/val2014.zip"] = coco_zip()
    cfg = {**coco_cfg(server), "n_images": 5000}
    with pytest.raises(InputError, match=r"has 3 images, expected 5000 \(datasets\.coco\.n_images\)"):
        download_dataset("coco", cfg, dl_cfg(tmp_path), tmp_path / "raw", progress=False)
    with pytest.raises(InputError, match="run the download stage for 'coco' first"):
        prepare_real("coco", cfg, tmp_path / "raw", tmp_path / "coco", progress=False)


# -- the stage CLI (in-process, like the stage error tests) -------------------------------------
def _run_stage(tmp_path: Path, params: dict, *args: str) -> tuple[int, str]:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    argv, cwd = sys.argv, os.getcwd()
    sys.argv = [str(REPO / "stages" / "download.py"), "--params", str(tmp_path / "params.yaml"), "--no-progress", *args]
    os.chdir(tmp_path)
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
        return 0, ""
    except SystemExit as e:
        return int(e.code or 0), ""
    finally:
        sys.argv = argv
        os.chdir(cwd)


def test_stage_cli(server: Server, tmp_path: Path, capsys) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    server.files["/ann/coco_karpathy_test.json"] = blip_annotations(COCO_NAMES, "val2014")
    server.files["/zips/val2014.zip"] = coco_zip()
    params["datasets"]["coco"].update(coco_cfg(server))
    params["download"].update(backoff=0.001)
    # the benchmark switch selects the dataset: coco-c runs on datasets.coco
    assert _run_stage(tmp_path, params, "--set", "benchmark=coco-c")[0] == 0
    rec = json.loads((tmp_path / "data" / "raw" / "coco-c" / "download.json").read_text())
    assert rec["n_images"] == 3 and (tmp_path / "data" / "cache" / "coco" / "val2014.zip").is_file()
    assert (tmp_path / "logs" / "download" / "coco-c.log").is_file()
    assert _run_stage(tmp_path, params)[0] == 0  # the benchmark (builtin): nothing to download
    assert json.loads((tmp_path / "data" / "raw" / "builtin" / "download.json").read_text())["files"] == []
    capsys.readouterr()
    assert _run_stage(tmp_path, params, "--set", "benchmark=flickr-c")[0] == 2
    err = capsys.readouterr().err
    assert err.startswith("error: params: datasets.flickr30k.images has neither a url nor a path")
    assert _run_stage(tmp_path, params, "--set", "benchmark=nope")[0] == 2
    err = capsys.readouterr().err
    assert "benchmark 'nope' has no entry under 'benchmarks'; valid: as-c, builtin, " in err and ", coco-c, " in err


def test_params_entries_validate() -> None:
    from qshift.data.karpathy import validate_dataset, validate_download

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, d in params["datasets"].items():
        validate_dataset(name, d)
    validate_download(params["download"])
    coco = params["datasets"]["coco"]
    with pytest.raises(ConfigError, match=r"datasets\.coco\.images\.sha256 must be null or a sha256"):
        validate_dataset("coco", {**coco, "images": {**coco["images"], "sha256": "abc"}})
    with pytest.raises(ConfigError, match=r"datasets\.coco\.images has unknown key\(s\) \['sha'\]"):
        validate_dataset("coco", {**coco, "images": {**coco["images"], "sha": "abc"}})
    with pytest.raises(ConfigError, match=r"datasets\.coco\.kind is 'kaggle'; valid: builtin, karpathy"):
        validate_dataset("coco", {**coco, "kind": "kaggle"})
    with pytest.raises(ConfigError, match=r"datasets\.coco\.n_images must be a positive integer or null"):
        validate_dataset("coco", {**coco, "n_images": 0})
    with pytest.raises(ConfigError, match="download.mirror must map URL prefixes"):
        validate_download({**params["download"], "mirror": "http://my-mirror/"})
    with pytest.raises(ConfigError, match="download.retries"):
        validate_download({**params["download"], "retries": -1})
