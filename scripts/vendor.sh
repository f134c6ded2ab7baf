#!/usr/bin/env bash
# Install the web UI's third-party JavaScript from npm into webapp/static/vendor
# (never committed; everything is served locally, no CDN). Installs Debian's nodejs/npm
# first when the machine has no npm.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f webapp/package.json ] || exit 0
if ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
fi
if [ ! -d webapp/node_modules ] || [ webapp/package.json -nt webapp/node_modules ]; then
  (cd webapp && npm install --no-audit --no-fund --silent)
fi
mkdir -p webapp/static/vendor
node webapp/copy-vendor.js
