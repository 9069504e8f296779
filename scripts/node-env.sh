#!/usr/bin/env bash
# Installs (once) node-postgres for the client tests from the npm registry, by package name and
# version, next to the build ($OROCHI_NODE_ENV, or <target dir>/nodeenv), and prints the
# node_modules directory to use as NODE_PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES="pg@8.23.1"
ENV_DIR=${OROCHI_NODE_ENV:-${CARGO_TARGET_DIR:-target}/nodeenv}
STAMP="$ENV_DIR/.packages"
if [ ! -d "$ENV_DIR/node_modules/pg" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$PACKAGES" ]; then
  command -v npm >/dev/null || {
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm) >&2
  }
  rm -rf "$ENV_DIR"
  mkdir -p "$ENV_DIR"
  # shellcheck disable=SC2086
  npm install --silent --no-audit --no-fund --prefix "$ENV_DIR" $PACKAGES >&2
  echo "$PACKAGES" > "$STAMP"
fi
echo "$(cd "$ENV_DIR" && pwd)/node_modules"
