#!/usr/bin/env bash
# Set up QShift: a virtualenv with the pinned requirements and this checkout installed.
# Idempotent and quick when nothing changed: requirements are reinstalled only when
# requirements.txt/constraints.txt change, the package only when it points elsewhere.
#   QSHIFT_VENV  where the virtualenv lives (default: .venv in the repository)
#   PYTHON       the Python 3.11 interpreter to build it from (default: python3)
#   QSHIFT_NLTK_DATA  where WordNet (SR/RI text corruptions) goes (default ~/.cache/qshift/nltk_data)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${QSHIFT_VENV:-.venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating virtualenv $VENV"
  "$PY" -m venv "$VENV"
fi
changed=0
stamp="$(cat requirements.txt constraints.txt | sha256sum | cut -c1-16)"
if [ "$(cat "$VENV/.qshift-requirements" 2>/dev/null || true)" != "$stamp" ]; then
  echo "setup: installing requirements (torch pinned by constraints.txt; a few minutes the first time)"
  "$VENV/bin/python" -m pip install --quiet --progress-bar off -c constraints.txt -r requirements.txt
  echo "$stamp" > "$VENV/.qshift-requirements"
  changed=1
fi
# the virtualenv's qshift must be this checkout's src/ (editable install)
where="$("$VENV/bin/python" -c 'import qshift, os; print(os.path.realpath(qshift.__file__))' 2>/dev/null || true)"
if [ "$where" != "$(pwd -P)/src/qshift/__init__.py" ]; then
  "$VENV/bin/python" -m pip install --quiet --no-deps -e .
  changed=1
fi
# WordNet for the synonym-based text corruptions, from Debian packages (instant when present)
bash scripts/wordnet.sh || echo "setup: warning: WordNet is not installed; the SR/RI text corruptions" \
  "fail until it is (run scripts/wordnet.sh)" >&2
if [ "$changed" = 1 ]; then
  "$VENV/bin/python" -c 'import torch, open_clip, snakemake, dvc, mlflow, qshift; print(f"setup: ok (torch {torch.__version__})")'
fi
