#!/usr/bin/env bash
# The main job: set everything up, then run the whole pipeline on the built-in benchmark
# (data -> corrupted queries -> source model -> gallery -> TTA runs -> MLflow -> report).
# Extra arguments go to snakemake, e.g. `bash scripts/run.sh --config benchmark=builtin`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${QSHIFT_VENV:-.venv}"
export PATH="$(cd "$VENV" && pwd)/bin:$PATH"
snakemake --cores all "$@"
echo
echo "Report: reports/report.md   (compare runs: mlflow ui --backend-store-uri sqlite:///mlflow.db)"
