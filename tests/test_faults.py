"""Fault injection: bad values and killed jobs lose nothing and leave nothing half-written.

Each test reproduces a failure mode that main had (see the "nothing lost" issue): a name that
made the model folder the project folder, outputs only their owner could read, pool workers
and temp folders that outlived a ``kill -9``, gallery files whose bytes changed between
identical encodes, manifest paths that reached outside the dataset. Jobs are killed through
``QSHIFT_FAULT`` (qshift.faults), which makes a stage SIGKILL itself at a named point.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from _tiny import make_tiny_clip_dir, make_tiny_dataset
from qshift import config
from qshift.config import load_params
from qshift.errors import ConfigError, InputError
from qshift.io import MARKER, atomic_dir, atomic_path, register_output_root, write_json

pytestmark = pytest.mark.faults

REPO = Path(__file__).resolve().parents[1]
STAGES = REPO / "stages"
PYTHON = sys.executable
ENV = {**os.environ, "QSHIFT_PROGRESS": "0", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
ENV.pop("QSHIFT_FAULT", None)


def _project(tmp_path: Path) -> Path:
    """A project folder with things that must survive: code, a weight cache, a git folder."""
    proj = tmp_path / "proj"
    proj.mkdir()
    shutil.copy(REPO / "params.yaml", proj / "params.yaml")
    (proj / "KEEP.txt").write_text("code")
    (proj / ".git").mkdir()
    (proj / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (proj / "models" / "cache").mkdir(parents=True)
    (proj / "models" / "cache" / "weights.bin").write_bytes(b"w" * 100)
    return proj


def _stage(proj: Path, stage: str, *args: str, env: dict | None = None, timeout: int = 300):
    return subprocess.run([PYTHON, str(STAGES / f"{stage}.py"), "--params", str(proj / "params.yaml"),
                           "--no-progress", *args], cwd=proj, env=env or ENV, capture_output=True, text=True,
                          timeout=timeout)


def _intact(proj: Path) -> None:
    assert (proj / "KEEP.txt").read_text() == "code"
    assert (proj / ".git" / "HEAD").is_file()
    assert (proj / "models" / "cache" / "weights.bin").stat().st_size == 100
    assert (proj / "params.yaml").is_file()


# -- item 1: a config value that names the project ----------------------------------------------
@pytest.mark.parametrize("value", ["..", "''", "a/b", "../models", "Model"])
def test_bad_model_name_is_refused_before_any_work(tmp_path, value):
    proj = _project(tmp_path)
    res = _stage(proj, "pretrain", "--set", f"model.name={value}")
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert "model.name" in res.stderr and "not a valid name" in res.stderr
    _intact(proj)


@pytest.mark.parametrize("key", ["benchmark", "report.dir", "mlflow.experiment"])
def test_other_path_names_are_checked(tmp_path, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_params(REPO / "params.yaml", [f"{key}=../x"])


def test_atomic_dir_never_replaces_what_it_did_not_write(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "foreign").mkdir(parents=True)
    (tmp_path / "data" / "foreign" / "precious.txt").write_text("x")
    for target in (tmp_path / "data" / "foreign", tmp_path, tmp_path.parent, Path("models/..")):
        with pytest.raises(ConfigError, match="refusing to replace"):
            with atomic_dir(target) as tmp:
                (tmp / "new.txt").write_text("new")
    assert (tmp_path / "data" / "foreign" / "precious.txt").read_text() == "x"
    assert not list(tmp_path.rglob("new.txt"))
    # a folder it wrote is replaced; the result carries the marker
    with atomic_dir("data/mine") as tmp:
        (tmp / "a.txt").write_text("1")
    with atomic_dir("data/mine") as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in (tmp_path / "data" / "mine").iterdir()) == [MARKER, "b.txt"]
    # outside the output roots: refused even with a marker, until the folder is registered
    other = tmp_path / "elsewhere" / "cache" / "x"
    other.mkdir(parents=True)
    (other / MARKER).write_text("")
    with pytest.raises(ConfigError, match="not inside an output folder"):
        with atomic_dir(other):
            pass
    register_output_root(tmp_path / "elsewhere" / "cache")
    with atomic_dir(other) as tmp:
        (tmp / "c.txt").write_text("3")
    assert (other / "c.txt").is_file()


# -- item 6: outputs readable per the user's umask ----------------------------------------------
@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                         (0o002, 0o664, 0o775)])
def test_outputs_follow_the_umask(tmp_path, monkeypatch, umask, file_mode, dir_mode):
    import tempfile

    monkeypatch.chdir(tmp_path)
    old = os.umask(umask)
    try:
        write_json("results/x.json", {"a": 1})
        with atomic_path("reports/r.md") as tmp:
            tmp.write_text("r")
        with atomic_dir("data/d") as tmp:
            (tmp / "plain.txt").write_text("p")
            fd, inner = tempfile.mkstemp(dir=tmp, suffix=".bin")  # made 0600 by mkstemp
            os.close(fd)
            (tmp / "sub").mkdir()
    finally:
        os.umask(old)
    assert (tmp_path / "results/x.json").stat().st_mode & 0o777 == file_mode
    assert (tmp_path / "reports/r.md").stat().st_mode & 0o777 == file_mode
    assert (tmp_path / "data/d").stat().st_mode & 0o777 == dir_mode
    assert (tmp_path / "data/d/sub").stat().st_mode & 0o777 == dir_mode
    for f in (tmp_path / "data/d").iterdir():
        if f.is_file():
            assert f.stat().st_mode & 0o777 == file_mode, f


# -- item 7: a killed job leaves no workers and no temp folders behind ---------------------------
def _tiny_project(tmp_path: Path, n_test: int = 16) -> Path:
    proj = _project(tmp_path)
    make_tiny_dataset(proj / config.DATASET_DIR.format(dataset="builtin"), n_test=n_test)
    return proj


def _tagged_processes(tag: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            if f"QSHIFT_TEST_TAG={tag}".encode() in (d / "environ").read_bytes().split(b"\0"):
                state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":  # a zombie holds no memory; its parent reaps it
                    pids.append(int(d.name))
        except OSError:
            continue
    return pids


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_killed_corrupt_images_job_leaves_no_worker_and_rerun_sweeps_its_temp(tmp_path):
    proj = _tiny_project(tmp_path)
    tag = uuid.uuid4().hex
    out = proj / config.IMAGE_QUERIES.format(dataset="builtin", corruption="zoom_blur", severity=3)
    args = ("--corruption", "zoom_blur", "--severity", "3", "--set", "corrupt.image.workers=2")
    res = _stage(proj, "corrupt_images", *args,
                 env={**ENV, "QSHIFT_FAULT": "corrupt_images.pool_running", "QSHIFT_TEST_TAG": tag})
    assert res.returncode == -9, res.stderr  # killed as kill -9 would
    assert not out.exists()
    temps = [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]
    assert len(temps) == 1, temps  # the half-built folder of the killed job
    deadline = time.time() + 20
    while _tagged_processes(tag) and time.time() < deadline:
        time.sleep(0.2)
    assert _tagged_processes(tag) == [], "pool workers / resource tracker outlived the killed job"
    # the next run of the stage sweeps the dead job's temp folder and builds the output
    res = _stage(proj, "corrupt_images", *args)
    assert res.returncode == 0, res.stderr
    assert [p for p in out.parent.iterdir() if p.name.endswith(".tmp")] == []
    assert len(json.loads((out / "manifest.json").read_text())["images"]) == 16


def test_kill_before_publishing_then_rerun(tmp_path):
    """A job killed with its output complete but not yet renamed: no final name, then a rerun
    that sweeps the leftover and publishes the same bytes as an uninterrupted run."""
    proj = _project(tmp_path)
    args = ("--set", "datasets.builtin.n_train=4", "--set", "datasets.builtin.n_val=2",
            "--set", "datasets.builtin.n_test=6", "--set", "datasets.builtin.image_size=32")
    res = _stage(proj, "prepare", *args, env={**ENV, "QSHIFT_FAULT": "atomic_dir.before_publish"})
    assert res.returncode == -9, res.stderr
    data = proj / "data"
    assert not (data / "builtin").exists()
    assert [p.name for p in data.iterdir() if p.name.endswith(".tmp")]
    res = _stage(proj, "prepare", *args)
    assert res.returncode == 0, res.stderr
    assert [p.name for p in data.iterdir() if p.name.endswith(".tmp")] == []
    assert (data / "builtin" / "manifest.json").is_file() and (data / "builtin" / MARKER).is_file()
    _intact(proj)


# -- item 9: byte-reproducible gallery files ----------------------------------------------------
def test_identical_encodes_write_identical_gallery_bytes(tmp_path, monkeypatch):
    from qshift.gallery import encode_gallery
    from qshift.models import load_model

    monkeypatch.chdir(tmp_path)
    manifest = make_tiny_dataset(tmp_path / "data" / "tiny", n_test=6)
    model = load_model(f"local-dir:{make_tiny_clip_dir(tmp_path / 'models' / 'tiny')}", "cpu")
    digests = []
    for name in ("a", "b"):
        out = tmp_path / "data" / "embeddings" / name / "gallery.pt"
        encode_gallery(model, manifest, out, batch_size=4)
        digests.append(hashlib.sha256(out.read_bytes()).hexdigest())
    assert digests[0] == digests[1]


# -- item 9: manifest paths, captions, duplicates -----------------------------------------------
def _manifest(tmp_path: Path, edit) -> Path:
    path = make_tiny_dataset(tmp_path / "ds", n_test=3)
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    return path


def _test_images(doc: dict) -> list[dict]:
    return [im for im in doc["images"] if im["split"] == "test"]


@pytest.mark.parametrize("filepath, filename", [("", "../../../etc/hostname"), ("..", "x.png"),
                                                ("", "/etc/hostname"), ("/abs", "x.png")])
def test_manifest_image_paths_must_stay_inside_the_image_root(tmp_path, filepath, filename):
    from qshift.data.manifest import load_split

    def edit(doc):
        _test_images(doc)[0].update(filepath=filepath, filename=filename)

    path = _manifest(tmp_path, edit)
    with pytest.raises(InputError, match="must stay inside the image root") as e:
        load_split(path, "test")
    assert str(path) in str(e.value)


def test_manifest_symlink_out_of_the_image_root_is_refused(tmp_path):
    from qshift.data.manifest import load_split

    outside = tmp_path / "outside.png"
    path = make_tiny_dataset(tmp_path / "ds", n_test=3)
    doc = json.loads(path.read_text())
    im = _test_images(doc)[0]
    target = path.parent / "images" / im.get("filepath", "") / im["filename"]
    shutil.copy(target, outside)
    target.unlink()
    target.symlink_to(outside)
    with pytest.raises(InputError, match="resolves outside its image root"):
        load_split(path, "test")


def test_manifest_duplicate_image_file_names_both_ids(tmp_path):
    from qshift.data.manifest import load_split

    def edit(doc):
        a, b = _test_images(doc)[:2]
        b.update(filepath=a.get("filepath", ""), filename=a["filename"])

    path = _manifest(tmp_path, edit)
    with pytest.raises(InputError, match="same image file") as e:
        load_split(path, "test")
    a, b = _test_images(json.loads(path.read_text()))[:2]
    assert repr(a["imgid"]) in str(e.value) and repr(b["imgid"]) in str(e.value)


def test_caption_that_normalises_to_empty_names_its_id(tmp_path):
    from qshift.data.manifest import load_split

    def edit(doc):
        _test_images(doc)[1]["sentences"][2]["raw"] = " ... !!! "

    path = _manifest(tmp_path, edit)
    sentid = _test_images(json.loads(path.read_text()))[1]["sentences"][2]["sentid"]
    with pytest.raises(InputError, match=f"caption {sentid!r} .* is empty after normalisation"):
        load_split(path, "test")


# -- item 9: bad values are one line with exit 2, and blame the value ---------------------------
@pytest.mark.parametrize("override, key", [("adapt.batch_size=0", "adapt.batch_size"),
                                           ("adapt.batch_size=1.5", "adapt.batch_size"),
                                           ("adapt.batch_size=abc", "adapt.batch_size"),
                                           ("adapt.steps=0", "adapt.steps"),
                                           ("seed=abc", "seed"),
                                           ("amp=maybe", "amp"),
                                           ("methods.tcr.lr=-1", "methods.tcr.lr"),
                                           ("methods.eata.weight_decay=-0.1", "methods.eata.weight_decay"),
                                           ("methods.tent.lr=abc", "methods.tent.lr")])
def test_bad_run_values_fail_at_load(override, key):
    with pytest.raises(ConfigError, match=rf"params: {key.replace('.', chr(92) + '.')}( \(i2t\))?:? .*must be"):
        load_params(REPO / "params.yaml", [override])


def test_out_of_range_severity_blames_the_value_not_an_image(tmp_path):
    proj = _tiny_project(tmp_path, n_test=3)
    res = _stage(proj, "corrupt_images", "--corruption", "gaussian_noise", "--severity", "9")
    assert res.returncode == 2, res.stderr
    err = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert len(err) == 1 and "severity" in err[0] and "9" in err[0]
    assert ".png" not in err[0] and "/" not in err[0]  # no file is blamed
    res = _stage(proj, "corrupt_text", "--corruption", "ocr", "--level", "12")
    assert res.returncode == 2, res.stderr
    err = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert len(err) == 1 and "level" in err[0] and "manifest" not in err[0]


def test_truncated_training_image_is_one_line_naming_the_file(tmp_path):
    proj = _tiny_project(tmp_path, n_test=3)
    doc = json.loads((proj / "data/builtin/manifest.json").read_text())
    train = next(im for im in doc["images"] if im["split"] == "train")
    victim = proj / "data/builtin/images" / train.get("filepath", "") / train["filename"]
    victim.write_bytes(victim.read_bytes()[:40])  # a truncated PNG
    res = _stage(proj, "pretrain", "--set", "pretrain.steps=1", "--set", "pretrain.batch_size=2",
                 "--set", "pretrain.warmup=0")
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    err = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert len(err) == 1 and str(victim.relative_to(proj)) in err[0]
    assert not (proj / "models" / "qshift-tiny-clip").exists()
    _intact(proj)
