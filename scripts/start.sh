#!/usr/bin/env bash
# Install ml4paleo into .venv and start the web app with its three runners on ./data.
# Usage: bash scripts/start.sh [main.py options, e.g. --port 8080]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh all
exec .venv/bin/python main.py "$@"
