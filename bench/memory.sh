#!/usr/bin/env bash
# The memory test at full size: 5,000,000 rows, 20 concurrent scans, release build.
# Prints the baseline and peak RSS of the server; fails like the test fails.
#
#   bench/memory.sh            # 5M rows
#   ROWS=1000000 bench/memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p orochi-coordinator
OROCHI_MEMORY_ROWS=${ROWS:-5000000} cargo test --release -q -p orochi-sql-tests --test memory -- --nocapture
