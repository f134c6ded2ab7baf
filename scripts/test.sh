#!/usr/bin/env bash
# Install ml4paleo with its test dependencies (and Debian's Chromium and poppler-utils for
# the browser tests) into .venv, then lint and run the whole test suite.
# Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh all,test
# Debian packages the browser tests use: Chromium, and poppler's pdftoppm (renders a page
# of the report PDF the README test downloads)
MISSING=""
[ -x /usr/bin/chromium ] || MISSING="$MISSING chromium"
command -v pdftoppm >/dev/null 2>&1 || MISSING="$MISSING poppler-utils"
if [ -n "$MISSING" ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $MISSING >/dev/null
fi
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
