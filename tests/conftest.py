"""Fixtures shared by several test modules."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from qshift.runtime import set_cpu_kernels

# the CPU kernels the stages run (params cpu_kernels) for the tests' in-process computations too, set
# before any test module imports torch, so a number computed here and one from a stage process agree
set_cpu_kernels((yaml.safe_load((Path(__file__).parent.parent / "params.yaml").read_text()) or {})
                .get("cpu_kernels", "native"))


@pytest.fixture(scope="session")
def store_template(tmp_path_factory) -> Path:
    """An empty MLflow sqlite store, made once: creating one runs every schema migration (~5 s)."""
    path = tmp_path_factory.getbasetemp() / "mlflow-template.db"
    if not path.exists():
        from mlflow.tracking import MlflowClient

        tmp = path.with_name("mlflow-template.tmp.db")
        MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments()
        tmp.rename(path)
    return path
