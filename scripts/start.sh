#!/usr/bin/env bash
# Install ml4paleo into .venv and start the web app with its three runners on ./data.
# Usage: bash scripts/start.sh [main.py options, e.g. --port 8080]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[all]'
bash scripts/vendor.sh
exec .venv/bin/python main.py "$@"
