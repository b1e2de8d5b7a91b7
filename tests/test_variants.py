"""Method variants: a ``methods`` entry naming a base method and overrides runs as its own row."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from _tiny import make_tiny_clip_dir, make_tiny_dataset, one_torch_thread
from qshift import config
from qshift.config import base_method, load_params, method_hparams, runs
from qshift.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CFG = yaml.safe_load((REPO / "params.yaml").read_text())
VARIANT = "tcr_lr1e-2"
BATCH = 8

_one_thread = pytest.fixture(autouse=True, scope="module")(one_torch_thread)


def _params(tmp_path: Path, methods: dict, listed: list[str], **extra) -> Path:
    cfg = yaml.safe_load(yaml.safe_dump(CFG))
    cfg["methods"].update(methods)
    cfg["adapt"]["methods"] = ["source", "tcr", *listed]
    cfg["streams"]["methods"] = ["source"]
    cfg["adapt"]["batch_size"] = BATCH
    for k, v in extra.items():
        cfg[k] = v
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_variant_resolves_base_defaults_plus_overrides_and_is_a_grid_row(tmp_path):
    cfg = load_params(_params(tmp_path, {VARIANT: {"method": "tcr", "lr": 1.0e-2},
                                         "v2": {"method": VARIANT, "tau": 0.05,
                                                "by_direction": {"t2i": {"lr": 1.0e-5}}}}, [VARIANT, "v2"]))
    assert base_method(cfg, VARIANT) == "tcr" and base_method(cfg, "v2") == "tcr"  # a chain resolves
    hp = method_hparams(cfg, VARIANT, "i2t")
    from qshift.tta.tcr import TCR

    assert hp == {**TCR.defaults, "lr": 1.0e-2}  # the base class's defaults, then the overrides
    assert method_hparams(cfg, "v2", "i2t") == {**TCR.defaults, "lr": 1.0e-2, "tau": 0.05}
    assert method_hparams(cfg, "v2", "t2i")["lr"] == 1.0e-5  # the variant's own by_direction wins
    paths = {r.result_path for r in runs(cfg)}
    assert any(f"/{VARIANT}/seed42/gaussian_noise-s3.json" in p for p in paths)


def test_base_by_direction_is_inherited_and_explicit_overrides_win():
    cfg = load_params(REPO / "params.yaml", ["benchmark=coco-c"])
    cfg["methods"]["tcr_a"] = {"method": "tcr", "tau": 0.05}
    cfg["methods"]["tcr_b"] = {"method": "tcr", "lr": 1.0e-3}
    assert method_hparams(cfg, "tcr_a", "t2i")["lr"] == 3.0e-5  # the preset's text-query lr
    assert method_hparams(cfg, "tcr_b", "t2i")["lr"] == 1.0e-3


@pytest.mark.parametrize("methods, message", [
    ({"bad": {"method": "no_such"}}, r"methods\.bad\.method is 'no_such', not a method.*valid: deyo, eata"),
    ({"a": {"method": "b"}, "b": {"method": "a"}}, r"cycle: a -> b -> a"),
    ({"Big": {"method": "tcr"}}, r"methods entry 'Big' is not a valid name"),
    ({"t.x": {"method": "tcr"}}, r"variant name 't.x' must match"),
    ({"tcr": {"method": "tent"}}, r"'tcr' is a built-in method"),
    ({"v": {"method": "tcr", "rho": 0.1}}, r"methods\.v \(a variant of 'tcr'\) sets unknown hyperparameter\(s\) rho"),
])
def test_bad_variants_fail_with_one_clear_line(tmp_path, methods, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_params(_params(tmp_path, methods, [m for m in methods if m != "tcr"]))
    assert "\n" not in str(e.value)


def test_snakemake_wildcard_accepts_every_valid_variant_name():
    import re

    snakefile = (REPO / "workflow/Snakefile").read_text()
    pattern = re.search(r'method=r"([^"]+)"', snakefile).group(1)
    for name in (VARIANT, "rest_no-rem", "rest_k3", "a"):
        assert config.VARIANT_NAME.fullmatch(name) and re.fullmatch(pattern, name)


@pytest.fixture(scope="module")
def stage_world(tmp_path_factory):
    """A cwd laid out like the repository: tiny dataset, tiny CLIP, its gallery."""
    from qshift.gallery import encode_gallery
    from qshift.models import load_model

    cwd = tmp_path_factory.mktemp("variant")
    manifest = make_tiny_dataset(cwd / config.MANIFEST.format(dataset=CFG["benchmark"])[:-len("/manifest.json")],
                                 n_test=16)
    clip = make_tiny_clip_dir(cwd / config.MODEL_DIR.format(model=CFG["model"]["name"]))
    encode_gallery(load_model(f"local-dir:{clip}"), manifest,
                   cwd / config.GALLERY.format(model=CFG["model"]["name"], dataset=CFG["benchmark"]), batch_size=64)
    return cwd


def test_variant_row_through_the_adapt_stage(stage_world, tmp_path):
    from qshift.adapt import run_stream
    from qshift.data.manifest import load_split
    from qshift.gallery import load_gallery
    from qshift.models import load_model

    cwd = stage_world
    params = _params(tmp_path, {VARIANT: {"method": "tcr", "lr": 1.0e-2}}, [VARIANT],
                     mlflow={"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "v-{benchmark}"},
                     threads=1, tune={**CFG["tune"], "enabled": False})  # no tune stage in this world
    env = {"PYTHONPATH": str(REPO / "src"), "QSHIFT_PROGRESS": "0", "PATH": str(Path(sys.executable).parent)}
    proc = subprocess.run([sys.executable, str(REPO / "stages/adapt.py"), "--params", str(params),
                           "--method", VARIANT, "--direction", "i2t", "--corruption", "clean", "--severity", "0"],
                          cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = config.Run(CFG["benchmark"], CFG["model"]["name"], "i2t", VARIANT, "clean", 0, 42)
    doc = json.loads((cwd / run.result_path).read_text())
    assert f"/{VARIANT}/" in run.result_path and doc["key"]["method"] == VARIANT and doc["variant_of"] == "tcr"
    assert doc["hparams"]["lr"] == 1.0e-2 and doc["hparams"]["tau"] == config.method_hparams(CFG, "tcr")["tau"]
    assert "variant of tcr" in (cwd / config.LOGS["adapt"].format(**run.key)).read_text()
    # the numbers are exactly those of the base method run with the overridden hyperparameter
    gallery = load_gallery(cwd / config.GALLERY.format(model=CFG["model"]["name"], dataset=CFG["benchmark"]))
    model = load_model(f"local-dir:{cwd / config.MODEL_DIR.format(model=CFG['model']['name'])}")
    queries = load_split(cwd / config.MANIFEST.format(dataset=CFG["benchmark"]), "test")
    direct = run_stream(model, "tcr", {"lr": 1.0e-2}, "i2t", queries, gallery, batch_size=BATCH,
                        steps=CFG["adapt"]["steps"], seed=CFG["seed"], progress=False)
    default = run_stream(model, "tcr", {}, "i2t", queries, gallery, batch_size=BATCH,
                         steps=CFG["adapt"]["steps"], seed=CFG["seed"], progress=False)
    assert doc["online"]["stats"]["loss"] == direct["online"]["stats"]["loss"]
    assert doc["online"]["stats"]["loss"] != default["online"]["stats"]["loss"]  # the override acted
    assert doc["mlflow"]["logged"], doc["mlflow"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (mlrun,) = client.search_runs([client.get_experiment_by_name(f"v-{CFG['benchmark']}").experiment_id],
                                  filter_string="tags.`qshift.role` = 'run'")
    assert mlrun.data.params["key.method"] == VARIANT and float(mlrun.data.params["hp.lr"]) == 1.0e-2
    # a changed hyperparameter of the same entry replaces its run, and the stage says so
    params.write_text(params.read_text().replace("lr: 0.01", "lr: 0.02"))
    proc = subprocess.run([sys.executable, str(REPO / "stages/adapt.py"), "--params", str(params),
                           "--method", VARIANT, "--direction", "i2t", "--corruption", "clean", "--severity", "0"],
                          cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    logtext = (cwd / config.LOGS["adapt"].format(**run.key)).read_text()
    assert "replaced MLflow run" in logtext and "hp.lr: 0.01 -> 0.02" in logtext


NEW_METHOD = '''"""A method added as one file (the test's): Tent with a tenth of its lr."""

from .base import register_method
from .tent import Tent


@register_method("tent_slow")
class TentSlow(Tent):
    defaults = {**Tent.defaults, "lr": Tent.defaults["lr"] / 10}
'''


def test_a_new_method_is_one_file_in_the_package(stage_world, tmp_path):
    """No import list to edit: a module dropped into qshift/tta registers itself, and the adapt
    stage runs it (its hyperparameters: the class's defaults, params only override)."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "src" / "qshift", src / "qshift", ignore=shutil.ignore_patterns("__pycache__"))
    (src / "qshift" / "tta" / "tent_slow.py").write_text(NEW_METHOD)
    params = _params(tmp_path, {"tent_slow": {}}, ["tent_slow"],
                     mlflow={"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "n-{benchmark}"},
                     threads=1, tune={**CFG["tune"], "enabled": False})
    env = {"PYTHONPATH": str(src), "QSHIFT_PROGRESS": "0", "PATH": str(Path(sys.executable).parent)}
    proc = subprocess.run([sys.executable, str(REPO / "stages/adapt.py"), "--params", str(params),
                           "--method", "tent_slow", "--direction", "i2t", "--corruption", "clean", "--severity", "0"],
                          cwd=stage_world, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = config.Run(CFG["benchmark"], CFG["model"]["name"], "i2t", "tent_slow", "clean", 0, 42)
    doc = json.loads((stage_world / run.result_path).read_text())
    from qshift.tta.tent import Tent

    assert doc["key"]["method"] == "tent_slow" and doc["hparams"]["lr"] == pytest.approx(Tent.defaults["lr"] / 10)
    # without the file the name is unknown, and the error lists the valid methods
    proc = subprocess.run([sys.executable, str(REPO / "stages/adapt.py"), "--params", str(params),
                           "--method", "tent_slow", "--direction", "i2t", "--corruption", "clean", "--severity", "0"],
                          cwd=stage_world, capture_output=True, text=True, timeout=600,
                          env={**env, "PYTHONPATH": str(REPO / "src")})
    assert proc.returncode == 2 and "tent_slow" in proc.stderr and "tcr" in proc.stderr
