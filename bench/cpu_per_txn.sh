#!/usr/bin/env bash
# Server CPU per select-only transaction, OrochiDB vs PostgreSQL, same run: utime+stime of the
# server (PostgreSQL: the postmaster and its reaped backends) over one pgbench run, divided by
# the transactions it processed. Prints; writes nothing.
#   SCALE=10 DURATION=15 bench/cpu_per_txn.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${SCALE:-10}
DURATION=${DURATION:-15}
# shellcheck source=bench/lib.sh
. bench/lib.sh
start_servers
for port in "$PG_PORT" "$OR_PORT"; do
  pgbench -h 127.0.0.1 -p "$port" -U postgres -i -q -s "$SCALE" postgres >/dev/null 2>&1
done
HZ=$(getconf CLK_TCK)
# utime + stime + cutime + cstime of a process, in ticks
ticks() { local a; read -r a <"/proc/$1/stat"; set -- ${a##*) }; echo $(( ${12} + ${13} + ${14} + ${15} )); }
measure() {
  local name=$1 port=$2 pid=$3 before after out tx
  pgbench -h 127.0.0.1 -p "$port" -U postgres -S -M prepared -c 8 -j 2 -T 5 postgres >/dev/null 2>&1
  sleep 1
  before=$(ticks "$pid")
  out=$(pgbench -h 127.0.0.1 -p "$port" -U postgres -S -M prepared -c 8 -j 2 -T "$DURATION" postgres 2>&1)
  sleep 1  # backends exit and are reaped into the postmaster's cutime
  after=$(ticks "$pid")
  tx=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
  echo "$name: $(echo "$out" | sed -n 's/^tps = \([0-9.]*\) .*/\1/p') TPS, $(python3 -c "print(f'{($after - $before) / $HZ * 1e6 / $tx:.1f}')") µs server CPU per transaction"
}
PG_PID=$(head -1 "$WORK/pg/postmaster.pid")
measure PostgreSQL "$PG_PORT" "$PG_PID"
measure OrochiDB "$OR_PORT" "$OR_PID"
