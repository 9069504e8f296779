#!/usr/bin/env bash
# Static checks of deploy/: the YAML parses (and names what it must), the systemd units verify
# (when systemd-analyze is installed), the Dockerfile builds the two daemons that exist.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 - <<'PY'
import sys
try:
    import yaml
except ImportError:
    sys.exit("check-deploy: python3-yaml missing")
docs = list(yaml.safe_load_all(open("deploy/kubernetes/orochi.yaml")))
kinds = sorted(d["kind"] for d in docs)
assert kinds == ["NetworkPolicy", "Service", "Service", "Service", "StatefulSet", "StatefulSet"], kinds
coord = next(d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "orochi-coordinator")
env = {e["name"]: e for e in coord["spec"]["template"]["spec"]["containers"][0]["env"]}
workers = next(d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "orochi-worker")
hosts = env["OROCHI_WORKER_HOSTS"]["value"].split(",")
assert len(hosts) == workers["spec"]["replicas"], (hosts, workers["spec"]["replicas"])
# one Raft member per coordinator pod, named by the pods' stable names
peers = dict(p.split("=", 1) for p in env["OROCHI_RAFT_PEERS"]["value"].split(","))
replicas = coord["spec"]["replicas"]
assert sorted(peers) == [str(i + 1) for i in range(replicas)], peers
service = coord["spec"]["serviceName"]
for i in range(replicas):
    assert peers[str(i + 1)] == f"orochi-coordinator-{i}.{service}:7000", peers
assert any(d["kind"] == "Service" and d["metadata"]["name"] == service and d["spec"].get("clusterIP") == "None" for d in docs), service
compose = yaml.safe_load(open("deploy/docker/docker-compose.yml"))
assert set(compose["services"]) == {"coordinator", "worker1", "worker2"}
print("check-deploy: kubernetes and compose files ok")
PY
for bin in orochi-coordinator orochi-worker; do
  grep -q -- "-p $bin" deploy/docker/Dockerfile || { echo "Dockerfile does not build $bin"; exit 1; }
done
if command -v systemd-analyze >/dev/null; then
  tmp=$(mktemp -d)
  for u in deploy/systemd/*.service; do
    # verify the unit's syntax; the binaries need not be installed here
    sed "s#/usr/local/bin/orochi-[a-z]*#/bin/true#" "$u" >"$tmp/$(basename "$u")"
    out=$(systemd-analyze verify "$tmp/$(basename "$u")" 2>&1 | grep -v -e "Failed to connect" -e "getpwnam" -e "User=orochi" -e "unit configuration" || true)
    [ -z "$out" ] || { echo "$u: $out"; exit 1; }
  done
  rm -rf "$tmp"
  echo "check-deploy: systemd units ok"
fi
