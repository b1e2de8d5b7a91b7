#!/usr/bin/env bash
# The test command: set up, then run the whole test suite (unit tests and real end-to-end
# runs of the pipeline through Snakemake and DVC on a tiny configuration).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${QSHIFT_VENV:-.venv}"
export PATH="$(cd "$VENV" && pwd)/bin:$PATH"
exec python -m pytest -q "$@"
