#!/usr/bin/env bash
# Install ml4paleo into .venv and start the web app with its three runners on ./data.
# Usage: bash scripts/start.sh [main.py options, e.g. --port 8080]
# ML4PALEO_SKIP_INSTALL=1 skips the (re)install when .venv is ready (used by the test that
# starts the app exactly as the README says, in a fresh clone, on the shared test venv).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${ML4PALEO_SKIP_INSTALL:-0}" != "1" ]; then
  bash scripts/install.sh all
fi
exec .venv/bin/python main.py "$@"
