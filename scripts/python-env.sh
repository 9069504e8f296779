#!/usr/bin/env bash
# Creates (once) a virtualenv with the Python drivers the client tests use, from PyPI by
# package name (sql-tests/drivers/python/requirements.txt), and prints its python's path.
# The environment lives next to the build (reused across runs; rebuilt when the
# requirements change): $OROCHI_PYENV, or <target dir>/pyenv.
set -euo pipefail
cd "$(dirname "$0")/.."
REQ=sql-tests/drivers/python/requirements.txt
ENV_DIR=${OROCHI_PYENV:-${CARGO_TARGET_DIR:-target}/pyenv}
STAMP="$ENV_DIR/.requirements"
if [ ! -x "$ENV_DIR/bin/python" ] || ! cmp -s "$REQ" "$STAMP"; then
  command -v python3 >/dev/null || {
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv) >&2
  }
  rm -rf "$ENV_DIR"
  python3 -m venv "$ENV_DIR" >&2
  "$ENV_DIR/bin/pip" install -q --disable-pip-version-check -r "$REQ" >&2
  cp "$REQ" "$STAMP"
fi
echo "$(cd "$ENV_DIR" && pwd)/bin/python"
