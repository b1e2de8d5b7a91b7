#!/usr/bin/env bash
# Optional system packages (Debian/Ubuntu) used by some tests and features:
#   SLURM (a real single-node cluster for the SLURM tests), headless Chromium (HTML report test).
# Needs root (or sudo). Without them the corresponding tests are skipped with a reason.
# Usage: bash scripts/system-deps.sh            (CI runs it from .ci/run)
set -euo pipefail
PACKAGES=(
  # SLURM on one machine (tests/slurm_cluster.py starts munged, slurmctld, slurmd)
  slurmctld slurmd slurm-client munge
  # headless browser for the HTML report test
  chromium
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo"; else
    echo "system-deps: not root; skipping ${missing[*]} (the tests that need them will be skipped)" >&2
    exit 0
  fi
fi
echo "system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
