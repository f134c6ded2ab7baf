#!/usr/bin/env bash
# Install the web UI's third-party JavaScript from npm into webapp/static/vendor
# (never committed; everything is served locally, no CDN).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f webapp/package.json ]; then
  if [ ! -d webapp/node_modules ] || [ webapp/package.json -nt webapp/node_modules ]; then
    (cd webapp && npm install --no-audit --no-fund --silent)
  fi
  mkdir -p webapp/static/vendor
  node webapp/copy-vendor.js
fi
