"""Bad stage inputs give one clear ``error: ...`` line and exit status 2 (no traceback).

The stage CLIs run as real subprocesses with cwd = a temp folder (stages resolve data paths
relative to the cwd) and ``--params`` pointing at an absolute temp copy of params.yaml.
The subprocess cases are launched together (a thread pool) to keep the module fast; a few
extra cases run the same stage scripts in-process (runpy, same argv and cwd).
"""

from __future__ import annotations

import json
import logging
import os
import runpy
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import pytest
import yaml

from _tiny import make_tiny_dataset
from qshift import config
from qshift.config import load_params
from qshift.corrupt import IMAGE_CORRUPTIONS, TEXT_CORRUPTIONS
from qshift.errors import ConfigError
from qshift.tta import METHODS

REPO = Path(__file__).resolve().parents[1]
STAGES = REPO / "stages"
PYTHON = sys.executable  # the project venv's interpreter when run through its pytest
CFG = yaml.safe_load((REPO / "params.yaml").read_text())
BENCH, MODEL = CFG["benchmark"], CFG["model"]["name"]
MANIFEST = Path(config.MANIFEST.format(dataset=BENCH))  # relative to the stage's cwd
GALLERY = config.GALLERY.format(model=MODEL, dataset=BENCH)
TEXT_CORRUPTION = "ocr"
QUERY_MANIFEST = config.TEXT_QUERIES.format(dataset=BENCH, corruption=TEXT_CORRUPTION, severity=2)


# -- setups: each gets its own temp cwd --------------------------------------------------------
def _nothing(cwd: Path) -> None:
    pass


def _dataset(cwd: Path) -> None:
    make_tiny_dataset(cwd / MANIFEST.parent, n_test=3)


def _write_manifest(text: str) -> Callable[[Path], None]:
    def setup(cwd: Path) -> None:
        (cwd / MANIFEST).parent.mkdir(parents=True)
        (cwd / MANIFEST).write_text(text)

    return setup


def _edit_manifest(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def setup(cwd: Path) -> None:
        _dataset(cwd)
        doc = json.loads((cwd / MANIFEST).read_text())
        edit(doc)
        (cwd / MANIFEST).write_text(json.dumps(doc))

    return setup


def _drop_raw(doc: dict) -> None:
    del doc["images"][0]["sentences"][1]["raw"]


ADAPT_CLEAN = ["--method", "source", "--direction", "i2t", "--corruption", "clean", "--severity", "0"]

# name -> (setup, stage, args). SUBPROCESS cases run as real subprocesses; the extra cases
# run the same stage script in-process (runpy, same argv/cwd) because every stage start-up
# imports torch (~1.5 CPU-s), and the whole test suite must stay fast.
SUBPROCESS: dict[str, tuple[Callable[[Path], None], str, list[str]]] = {
    "unknown_method": (_nothing, "adapt",
                       ["--method", "no_such_method", "--direction", "i2t", "--corruption", "clean",
                        "--severity", "0"]),
    "unknown_corruption_i2t": (_nothing, "adapt",
                               ["--method", "tcr", "--direction", "i2t", "--corruption", "no_such_noise",
                                "--severity", "3"]),
    "missing_manifest": (_nothing, "adapt", ADAPT_CLEAN),
    "missing_gallery": (_dataset, "adapt", ADAPT_CLEAN),
    "manifest_not_json": (_write_manifest('{"images": [ this is not json'), "adapt", ADAPT_CLEAN),
    "manifest_no_images": (_write_manifest('{"format": "qshift-karpathy-v1", "dataset": "builtin"}'),
                           "adapt", ADAPT_CLEAN),
    "manifest_sentence_no_raw": (_edit_manifest(_drop_raw), "adapt", ADAPT_CLEAN),
    "bad_set_leaf": (_nothing, "adapt", ["--set", "methods.tcr.no_such_hp=1", *ADAPT_CLEAN]),
}
INPROCESS: dict[str, tuple[Callable[[Path], None], str, list[str]]] = {
    "unknown_direction": (_nothing, "adapt",
                          ["--method", "source", "--direction", "sideways", "--corruption", "clean",
                           "--severity", "0"]),
    "unknown_corruption_t2i": (_nothing, "adapt",
                               ["--method", "tcr", "--direction", "t2i", "--corruption", "no_such_noise",
                                "--severity", "2"]),
    "corrupt_images_unknown": (_dataset, "corrupt_images", ["--corruption", "no_such_noise", "--severity", "3"]),
    "corrupt_text_unknown": (_dataset, "corrupt_text", ["--corruption", "no_such_noise", "--level", "2"]),
    "missing_query_manifest": (_dataset, "adapt",
                               ["--method", "source", "--direction", "t2i", "--corruption", TEXT_CORRUPTION,
                                "--severity", "2"]),
    "missing_model": (_dataset, "encode_gallery", []),
    "bad_set_branch": (_nothing, "adapt", ["--set", "no_such_section.lr=1", *ADAPT_CLEAN]),
    "bad_set_no_equals": (_nothing, "adapt", ["--set", "seed", *ADAPT_CLEAN]),
    "seed_not_in_seeds": (_nothing, "adapt", [*ADAPT_CLEAN, "--seed", "5"]),
    # a later --params wins with argparse: this overrides the temp params file
    "missing_params": (_nothing, "adapt", ["--params", "no_such_params.yaml", *ADAPT_CLEAN]),
}


def _argv(stage: str, params: Path, args: list[str]) -> list[str]:
    return [str(STAGES / f"{stage}.py"), "--params", str(params), "--no-progress", *args]


@pytest.fixture(scope="module")
def params_file(tmp_path_factory) -> Path:
    params = tmp_path_factory.mktemp("params") / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    return params


@pytest.fixture(scope="module")
def results(tmp_path_factory, params_file) -> dict[str, subprocess.CompletedProcess]:
    env = {**os.environ, "QSHIFT_PROGRESS": "0", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}

    def launch(name: str) -> subprocess.CompletedProcess:
        setup, stage, args = SUBPROCESS[name]
        cwd = tmp_path_factory.mktemp(name)
        setup(cwd)
        return subprocess.run([PYTHON, *_argv(stage, params_file, args)], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        return dict(zip(SUBPROCESS, pool.map(launch, SUBPROCESS)))


@pytest.fixture
def outcome(request, tmp_path, params_file, monkeypatch, capsys):
    """outcome(name) -> CompletedProcess-like result of the case, however it is run."""

    def get(name: str) -> subprocess.CompletedProcess:
        if name in SUBPROCESS:
            return request.getfixturevalue("results")[name]
        setup, stage, args = INPROCESS[name]
        setup(tmp_path)
        argv = _argv(stage, params_file, args)
        monkeypatch.chdir(tmp_path)
        monkeypatch.setattr(sys, "argv", argv)
        monkeypatch.setenv("QSHIFT_PROGRESS", "0")
        root = logging.getLogger()
        handlers, level = list(root.handlers), root.level
        capsys.readouterr()
        try:
            with pytest.raises(SystemExit) as exc:
                runpy.run_path(argv[0], run_name="__main__")
        finally:  # the stage mirrors its log to a file handler on the root logger
            for h in [h for h in root.handlers if h not in handlers]:
                root.removeHandler(h)
                h.close()
            root.setLevel(level)
        out = capsys.readouterr()
        return subprocess.CompletedProcess(argv, exc.value.code, out.out, out.err)

    return get


def _error(res: subprocess.CompletedProcess) -> str:
    """The stage failed cleanly: status 2, one ``error: ...`` line, no traceback."""
    assert res.returncode == 2, f"rc={res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    assert "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, res.stderr
    return lines[0]


def _assert_lists(msg: str, names) -> None:
    missing = [n for n in names if n not in msg]
    assert not missing, f"valid names {missing} not listed in: {msg}"


def test_unknown_method_lists_valid_methods(outcome):
    msg = _error(outcome("unknown_method"))
    assert "no_such_method" in msg
    _assert_lists(msg, METHODS.names())


def test_unknown_direction_lists_valid_directions(outcome):
    msg = _error(outcome("unknown_direction"))
    assert "sideways" in msg
    _assert_lists(msg, ["i2t", "t2i"])


@pytest.mark.parametrize("case, registry", [("unknown_corruption_i2t", IMAGE_CORRUPTIONS),
                                            ("unknown_corruption_t2i", TEXT_CORRUPTIONS),
                                            ("corrupt_images_unknown", IMAGE_CORRUPTIONS),
                                            ("corrupt_text_unknown", TEXT_CORRUPTIONS)])
def test_unknown_corruption_lists_valid_corruptions(outcome, case, registry):
    msg = _error(outcome(case))
    assert "no_such_noise" in msg
    _assert_lists(msg, registry.names())


def test_adapt_unknown_corruption_also_offers_clean(outcome):
    _assert_lists(_error(outcome("unknown_corruption_i2t")), ["clean"])


@pytest.mark.parametrize("case, path", [
    ("missing_manifest", str(MANIFEST)),
    ("missing_query_manifest", QUERY_MANIFEST),
    ("missing_gallery", GALLERY),
    ("missing_model", CFG["model"]["source"].partition(":")[2]),  # the local-dir folder
    ("missing_params", "no_such_params.yaml"),
])
def test_missing_input_names_the_path(outcome, case, path):
    msg = _error(outcome(case))
    assert path in msg
    assert "not found" in msg or "has no" in msg


@pytest.mark.parametrize("case, problem", [
    ("manifest_not_json", "not valid JSON"),
    ("manifest_no_images", "missing key 'images'"),
    ("manifest_sentence_no_raw", "images[0].sentences[1] needs keys 'sentid' and 'raw'"),
])
def test_malformed_manifest_names_file_and_problem(outcome, case, problem):
    msg = _error(outcome(case))
    assert str(MANIFEST) in msg
    assert problem in msg


@pytest.mark.parametrize("case, key", [("bad_set_leaf", "methods.tcr.no_such_hp"),
                                       ("bad_set_branch", "no_such_section"),
                                       ("bad_set_no_equals", "seed")])
def test_bad_set_override_names_the_key(outcome, case, key):
    msg = _error(outcome(case))
    assert repr(key) in msg


def test_bad_set_leaf_lists_valid_keys_there(outcome):
    _assert_lists(_error(outcome("bad_set_leaf")), ["lr", "tau", "queue_size"])


# -- unit level: qshift.config.load_params ------------------------------------------------------
def _params_with(tmp_path: Path, edit: Callable[[dict], None]) -> Path:
    cfg = yaml.safe_load((REPO / "params.yaml").read_text())
    edit(cfg)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_seed_outside_seeds_is_refused_before_any_work(outcome):
    msg = _error(outcome("seed_not_in_seeds"))
    assert "--seed 5" in msg and "seeds [42]" in msg


@pytest.mark.parametrize("seeds, problem", [([], "non-empty list"), ("7", "non-empty list"), ([1, -1], "-1"),
                                            ([3, "x"], "'x'"), ([7, 7], "more than once"), ([True], "True")])
def test_load_params_bad_seeds_name_the_value(tmp_path, seeds, problem):
    path = _params_with(tmp_path, lambda c: c.update(seeds=seeds))
    with pytest.raises(ConfigError, match="seeds") as e:
        load_params(path)
    assert problem in str(e.value)


def test_results_file_without_a_seed_in_its_key_is_a_clear_error(tmp_path):
    from qshift.errors import InputError
    from qshift.results import validate

    run = config.Run("builtin", "m", "i2t", "tcr", "fog", 3, 42)
    key = {k: v for k, v in run.key.items() if k != "seed"}
    doc = {"schema": 2, "status": "ok", "key": key, "run_key": "builtin/m/i2t/tcr/fog-s3",
           "metrics": {"R@1": 1.0, "R@5": 2.0, "R@10": 3.0}, "n_queries": 4, "online": {}}
    with pytest.raises(InputError, match="key.seed.*before adaptation seeds"):
        validate(doc, run.result_path)
    doc["key"], doc["run_key"] = {**run.key, "seed": 7}, "builtin/m/i2t/tcr/fog-s3/seed7"
    with pytest.raises(InputError, match="key.seed.*path names '42'"):
        validate(doc, run.result_path)


def test_load_params_unknown_method_lists_valid(tmp_path):
    path = _params_with(tmp_path, lambda c: c["adapt"]["methods"].append("no_such_method"))
    with pytest.raises(ConfigError) as e:
        load_params(path)
    assert "no_such_method" in str(e.value)
    _assert_lists(str(e.value), METHODS.names())


def test_load_params_unknown_method_via_override(tmp_path):
    path = _params_with(tmp_path, lambda c: None)
    with pytest.raises(ConfigError) as e:
        load_params(path, ["adapt.methods=[source, no_such_method]"])
    _assert_lists(str(e.value), METHODS.names())


def test_load_params_method_without_hparams_entry(tmp_path):
    path = _params_with(tmp_path, lambda c: c["methods"].pop("tcr"))
    with pytest.raises(ConfigError, match="'tcr'.*no entry under 'methods'"):
        load_params(path)


def test_load_params_unknown_corruption_lists_valid(tmp_path):
    path = _params_with(tmp_path, lambda c: c["corrupt"]["image"]["names"].append("no_such_noise"))
    with pytest.raises(ConfigError) as e:
        load_params(path)
    _assert_lists(str(e.value), IMAGE_CORRUPTIONS.names())


def test_load_params_bad_override_key(tmp_path):
    path = _params_with(tmp_path, lambda c: None)
    with pytest.raises(ConfigError, match="'adapt.no_such_key'"):
        load_params(path, ["adapt.no_such_key=3"])


def test_load_params_valid_file_loads(tmp_path):
    cfg = load_params(_params_with(tmp_path, lambda c: None), ["methods.tcr.lr=1.0e-3", "adapt.steps=1"])
    assert cfg["methods"]["tcr"]["lr"] == pytest.approx(1e-3)
    assert cfg["adapt"]["steps"] == 1


def test_load_params_override_scientific_notation_is_a_float(tmp_path):
    cfg = load_params(_params_with(tmp_path, lambda c: None), ["methods.tcr.lr=1e-3"])
    assert isinstance(cfg["methods"]["tcr"]["lr"], float)


def test_load_params_clean_method_outside_the_grid(tmp_path):
    # Snakemake and DVC would disagree on the clean runs otherwise
    def edit(c):
        c["adapt"]["methods"] = ["source", "tcr"]
        c["adapt"]["clean_methods"] = ["source", "tent"]

    with pytest.raises(ConfigError, match=r"clean_methods has 'tent', which is not in adapt.methods"):
        load_params(_params_with(tmp_path, edit))


@pytest.mark.parametrize("override, problem", [("pretrain.matmul=half", "pretrain.matmul is 'half'; valid: fp32, fast"),
                                               ("pretrain.trim_text=3", "pretrain.trim_text must be true or false"),
                                               ("pretrain.fused_optimizer=maybe",
                                                "pretrain.fused_optimizer must be true or false, got 'maybe'"),
                                               ("pretrain.optimizer=sgd", "pretrain.optimizer is 'sgd'; valid: adamw, muon"),
                                               ("pretrain.muon_precision=fp16",
                                                "pretrain.muon_precision is 'fp16'; valid: fp32, bf16")])
def test_load_params_bad_pretrain_speedup_names_the_value(tmp_path, override, problem):
    path = _params_with(tmp_path, lambda c: None)
    with pytest.raises(ConfigError) as e:
        load_params(path, [override])
    assert problem in str(e.value)
