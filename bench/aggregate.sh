#!/usr/bin/env bash
# Aggregation over ROWS rows (default 10 million): OrochiDB standalone (rows inserted one
# statement chunk at a time, so in the row store, and rows loaded with COPY, so in columnar
# segments), OrochiDB as a cluster (1 coordinator + 2 workers on this machine), PostgreSQL and
# DuckDB, same data, same run.
# Reports each query's best of 3 and, for OrochiDB, the rows and bytes the workers shipped to
# the coordinator (EXPLAIN ANALYZE). Writes the section between the aggregate markers of
# docs/benchmarks.md and prints it.
#
#   bench/aggregate.sh                # 10,000,000 rows
#   ROWS=1000000 bench/aggregate.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-10000000}
CHUNK=${CHUNK:-500000}
OUT=${OUT:-docs/benchmarks.md}
# shellcheck source=bench/lib.sh
. bench/lib.sh
cargo build --release -q -p orochi-coordinator -p orochi-worker
# The row-store columns measure the row store: no background conversion of its rows into
# columnar segments (conversion_check_ms = 0) in the standalone server or the workers.
ROWSTORE_CONF=$(mktemp /tmp/orochi-rowstore.XXXXXX.toml)
echo "conversion_check_ms = 0" >"$ROWSTORE_CONF"
export OROCHI_CONFIG="$ROWSTORE_CONF" OROCHI_WORKER_CONFIG="$ROWSTORE_CONF"
start_servers
CLUSTER_PIDS=()
cleanup() { stop_cluster; stop_servers; }
trap cleanup EXIT
start_cluster "$WORK"
# a second standalone server for the COPY-loaded (columnar) table
COL_PORT=$(free_port)
"$BIN" --listen "127.0.0.1:$COL_PORT" --data-dir "$WORK/orochi-columnar" >"$WORK/columnar.log" 2>&1 &
COL_PID=$!
cleanup() { kill "$COL_PID" 2>/dev/null || true; stop_cluster; stop_servers; }
wait_port "$COL_PORT"

python3 -c "import duckdb" 2>/dev/null || pip install -q duckdb >&2 || pip install -q --break-system-packages duckdb >&2
DUCKDB_VERSION=$(python3 -c "import duckdb; print(duckdb.__version__)")

q() { psql -h 127.0.0.1 -p "$1" -U postgres -Atq -v ON_ERROR_STOP=1 -c "$2" postgres; }
secs() { python3 -c "import time; print(time.monotonic())"; }
TABLE="CREATE TABLE facts (id bigint PRIMARY KEY, g int, v bigint, x double precision)"
GEN="i, (i % 100)::int, i % 1000003, (i % 977) / 7.0"
load() {
  local start end from=1
  start=$(secs)
  q "$1" "$TABLE" >/dev/null
  while [ "$from" -le "$ROWS" ]; do
    local to=$((from + CHUNK - 1)); [ "$to" -gt "$ROWS" ] && to=$ROWS
    q "$1" "INSERT INTO facts SELECT $GEN FROM generate_series($from, $to) i" >/dev/null
    from=$((to + 1))
  done
  end=$(secs); python3 -c "print(f'{$end - $start:.0f}')"
}
QUERIES=(
  "SELECT count(*), sum(v), min(x), max(x) FROM facts"
  "SELECT g, count(*), sum(v), avg(x) FROM facts GROUP BY g"
  "SELECT count(*) FROM facts WHERE v % 1000 = 7"
  "SELECT count(DISTINCT g) FROM facts WHERE x > 50"
)
# two results agree field by field (floats to 1e-9: partial sums add up in another order)
same_result() {
  python3 - "$1" "$2" <<'PY'
import math, sys
a, b = (x.split("\n") for x in sys.argv[1:3])
def same(x, y):
    try:
        return math.isclose(float(x), float(y), rel_tol=1e-9)
    except ValueError:
        return x == y
ok = len(a) == len(b) and all(
    len(r.split("|")) == len(s.split("|")) and all(same(x, y) for x, y in zip(r.split("|"), s.split("|")))
    for r, s in zip(a, b))
sys.exit(0 if ok else 1)
PY
}
best_ms() {
  local best=""
  for _ in 1 2 3; do
    local start end ms; start=$(secs)
    q "$1" "$2" >/dev/null
    end=$(secs); ms=$(python3 -c "print(round(($end - $start) * 1000))")
    if [ -z "$best" ] || [ "$ms" -lt "$best" ]; then best=$ms; fi
  done
  echo "$best"
}
duck_ms() {
  python3 - "$ROWS" "$1" <<'PY'
import sys, time, duckdb
rows, sql = int(sys.argv[1]), sys.argv[2]
con = duckdb.connect()
con.execute(f"CREATE TABLE facts AS SELECT i AS id, (i % 100)::int AS g, i % 1000003 AS v, (i % 977) / 7.0 AS x FROM range(1, {rows} + 1) t(i)")
best = None
for _ in range(3):
    t = time.monotonic(); con.execute(sql).fetchall(); ms = (time.monotonic() - t) * 1000
    best = ms if best is None else min(best, ms)
print(round(best))
PY
}

echo "loading $ROWS rows into each ..." >&2
PG_LOAD=$(load "$PG_PORT"); echo "postgres loaded in $PG_LOAD s" >&2
q "$PG_PORT" "VACUUM ANALYZE facts" >/dev/null
CSV="$WORK/facts.csv"
psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -Atq -c "\\copy facts TO '$CSV' WITH (FORMAT csv)" postgres
COL_LOAD=$(
  start=$(secs)
  q "$COL_PORT" "$TABLE" >/dev/null
  psql -h 127.0.0.1 -p "$COL_PORT" -U postgres -Atq -v ON_ERROR_STOP=1 \
    -c "\\copy facts FROM '$CSV' WITH (FORMAT csv)" postgres >/dev/null
  end=$(secs); python3 -c "print(f'{$end - $start:.0f}')"
)
echo "standalone (COPY, columnar) loaded in $COL_LOAD s" >&2
SA_LOAD=$(load "$OR_PORT"); echo "standalone loaded in $SA_LOAD s" >&2
CL_LOAD=$(load "$CL_PORT"); echo "cluster loaded in $CL_LOAD s" >&2
ROWS_FMT=$(python3 -c "print(f'{$ROWS:,}')")
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
TABLE_MD="| query | PostgreSQL | DuckDB | standalone, row store | standalone, columnar | columnar / PostgreSQL | cluster | cluster / standalone | rows / bytes shipped, standalone | rows / bytes shipped, cluster |
|---|---|---|---|---|---|---|---|---|---|"
for sql in "${QUERIES[@]}"; do
  echo "$sql" >&2
  pg=$(best_ms "$PG_PORT" "$sql"); sa=$(best_ms "$OR_PORT" "$sql"); cl=$(best_ms "$CL_PORT" "$sql")
  co=$(best_ms "$COL_PORT" "$sql")
  same_result "$(q "$COL_PORT" "$sql ORDER BY 1")" "$(q "$OR_PORT" "$sql ORDER BY 1")" ||
    { echo "columnar result differs: $sql" >&2; exit 1; }
  dk=$(duck_ms "$sql")
  TABLE_MD+="
| \`$sql\` | $pg | $dk | $sa | $co | $(ratio "$co" "$pg") | $cl | $(ratio "$cl" "$sa") | $(shipped "$OR_PORT" "$sql") | $(shipped "$CL_PORT" "$sql") |"
done
SECTION=$(cat <<MD
<!-- aggregate:begin (generated by bench/aggregate.sh; do not edit by hand) -->
### Aggregation over $ROWS_FMT rows: standalone, cluster, PostgreSQL, DuckDB

Command: \`ROWS=$ROWS bench/aggregate.sh\` (commit $COMMIT, $(nproc) cores, $(date -u +%Y-%m-%d)).
Table \`facts (id bigint PRIMARY KEY, g int, v bigint, x double precision)\`, loaded with
\`INSERT … SELECT … generate_series\` in transactions of $CHUNK rows (row store); the
columnar server got the same rows with one \`\\copy … FROM\` (CSV written by PostgreSQL), so
they are in columnar segments (same results checked per query). Cluster: 1 coordinator
and 2 workers on loopback on the same cores. PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}') with default
settings after \`VACUUM ANALYZE\`; DuckDB $DUCKDB_VERSION in memory (in process, no client
protocol). Times in ms, best of 3, wall clock at the client (lower is better).

Load: PostgreSQL $PG_LOAD s, standalone $SA_LOAD s, columnar (COPY) $COL_LOAD s, cluster $CL_LOAD s.

$TABLE_MD

Rows shipped are what the shard scans returned to the coordinator (EXPLAIN ANALYZE's
\`Shipped from\` lines): with the partial aggregates on the workers, one state per group per
scan partition instead of $ROWS_FMT rows.
<!-- aggregate:end -->
MD
)
write_section "$OUT" aggregate "$SECTION"
echo "$SECTION"
