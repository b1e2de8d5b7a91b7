#!/usr/bin/env bash
# The test command: set up, then run the test suite (unit tests and real end-to-end runs of the
# pipeline through Snakemake, DVC and SLURM on a tiny configuration). Tests marked `slow` (more
# end-to-end runs of other presets, DVC experiments, the browser check) are left out to keep it
# under ~20 minutes on 2 cores; `bash scripts/test.sh -m slow` runs them, `-m ''` runs everything.
# .ci/run runs this, then the slow tests while its time allows.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${QSHIFT_VENV:-.venv}"
export PATH="$(cd "$VENV" && pwd)/bin:$PATH"
exec python -m pytest -q -m "not slow" "$@"
