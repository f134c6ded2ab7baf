#!/usr/bin/env bash
# Create .venv (if missing) and install ml4paleo into it with the given extras, plus the web
# UI's JavaScript from npm. Usage: bash scripts/install.sh all,test
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=${1:-all}
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[${EXTRAS}]"
bash scripts/vendor.sh
