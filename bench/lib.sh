# Shared by the bench/ scripts (source it): a throwaway PostgreSQL and a release OrochiDB on
# free loopback ports, both stopped and removed on exit.
#   start_servers    sets WORK, PGBIN, PG_PORT, OR_PORT, OR_PID
# shellcheck shell=bash

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }

start_servers() {
  command -v pgbench >/dev/null && command -v psql >/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-contrib postgresql-client >&2
  }
  cargo build --release -q -p orochi-coordinator
  BIN=${CARGO_TARGET_DIR:-target}/release/orochi-coordinator
  WORK=$(mktemp -d /tmp/orochi-bench.XXXXXX)
  chmod 755 "$WORK"

  # --- PostgreSQL ---------------------------------------------------------------------------
  PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
  if [ -z "$PGBIN" ] || [ ! -x "$PGBIN/postgres" ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
    PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
  fi
  RUN=()
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd -r -M postgres
    chown postgres "$WORK"
    RUN=(runuser -u postgres --)
  fi
  PG_PORT=$(free_port)
  "${RUN[@]}" "$PGBIN/initdb" -D "$WORK/pg" -U postgres -A trust >/dev/null
  "${RUN[@]}" "$PGBIN/pg_ctl" -D "$WORK/pg" -o "-p $PG_PORT -k $WORK -c listen_addresses=127.0.0.1 -c max_connections=100" \
    -l "$WORK/pg.log" -w start >/dev/null

  # --- OrochiDB -----------------------------------------------------------------------------
  OR_PORT=$(free_port)
  "$BIN" --listen "127.0.0.1:$OR_PORT" --data-dir "$WORK/orochi" >"$WORK/orochi.log" 2>&1 &
  OR_PID=$!
  trap stop_servers EXIT
  for _ in $(seq 100); do pg_isready -q -h 127.0.0.1 -p "$OR_PORT" && break; sleep 0.1; done
}

stop_servers() {
  kill "$OR_PID" 2>/dev/null || true
  "${RUN[@]}" "$PGBIN/pg_ctl" -D "$WORK/pg" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}

wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.1; done; echo "port $1 not up" >&2; exit 1; }

# A coordinator and two worker daemons on loopback (release build), data and logs under $1.
# Sets CL_PORT (the coordinator's Postgres port) and CLUSTER_PIDS; stop_cluster kills them.
start_cluster() {
  local bin=${CARGO_TARGET_DIR:-target}/release w1 w2
  w1=$(free_port); w2=$(free_port); CL_PORT=$(free_port); CLUSTER_PIDS=()
  "$bin/orochi-worker" --listen "127.0.0.1:$w1" --data-dir "$1/w1" >"$1/w1.log" 2>&1 &
  CLUSTER_PIDS+=($!)
  "$bin/orochi-worker" --listen "127.0.0.1:$w2" --data-dir "$1/w2" >"$1/w2.log" 2>&1 &
  CLUSTER_PIDS+=($!)
  wait_port "$w1"; wait_port "$w2"
  "$bin/orochi-coordinator" --listen "127.0.0.1:$CL_PORT" --data-dir "$1/coordinator" \
    --worker "127.0.0.1:$w1" --worker "127.0.0.1:$w2" >"$1/cl.log" 2>&1 &
  CLUSTER_PIDS+=($!)
  wait_port "$CL_PORT"
}
stop_cluster() { for p in "${CLUSTER_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }

# Rows and bytes the workers shipped for a query on port $1 (EXPLAIN ANALYZE's `Shipped from`
# lines, summed over workers): "rows / bytes".
shipped() {
  psql -h 127.0.0.1 -p "$1" -U postgres -Atq -c "EXPLAIN ANALYZE $2" postgres | python3 -c '
import re, sys
rows = bytes_ = 0
for line in sys.stdin:
    m = re.match(r"Shipped from .*: rows=(\d+), bytes=(\d+)", line)
    if m:
        rows += int(m.group(1)); bytes_ += int(m.group(2))
print(f"{rows:,} / {bytes_:,}")'
}

# Replaces the section between `<!-- NAME:begin` and `<!-- NAME:end -->` in FILE (or appends it).
write_section() {
  python3 - "$1" "$2" "$3" <<'PY'
import re, sys
path, name, section = sys.argv[1], sys.argv[2], sys.argv[3]
text = open(path).read()
pattern = re.compile(r"<!-- %s:begin.*?<!-- %s:end -->" % (name, name), re.S)
text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
open(path, "w").write(text)
PY
}
