#!/usr/bin/env bash
# Cube's main job on a fresh Debian machine: set it up, start a one-node cluster
# (`cube dev`: a manager and a local worker in one process), run the example web
# task, and leave everything running with the next commands to try.
#
# Usage: bash scripts/quickstart.sh [--help]
# Environment (the defaults give the README's cluster; set them all to run a second,
# separate one beside it, as tests/e2e/test_readme.py does):
#   CUBE_PORT       manager port (default 5555; the local worker takes the next one)
#   CUBE_DATA_DIR   where the cluster keeps its state (default ~/.local/share/cube)
#   CUBE_WEB_PORT   host port of the example web task (default 8080)
#   CUBE_NODE_NAME  name of the local worker (default local); a worker adopts the containers
#                   labelled with its name, so two clusters on one machine need two names
set -euo pipefail

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
    exit 0
fi

cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh

port="${CUBE_PORT:-5555}"
web_port="${CUBE_WEB_PORT:-8080}"
node_name="${CUBE_NODE_NAME:-local}"
export CUBE_ADDR="http://127.0.0.1:${port}"
data="${CUBE_DATA_DIR:-$HOME/.local/share/cube}"
mkdir -p "$data"
cube=".venv/bin/cube"
log="$data/dev.log"
pidfile="$data/dev.pid"

if "$cube" status >/dev/null 2>&1; then
    echo "quickstart: a Cube manager already answers at $CUBE_ADDR; using it"
else
    echo "quickstart: starting a one-node cluster (cube dev), log in $log"
    # Fully detached: own session, no stdin, output to a file.
    setsid "$cube" dev --port "$port" --name "$node_name" </dev/null >"$log" 2>&1 &
    echo $! >"$pidfile"
    for _ in $(seq 1 100); do
        "$cube" status >/dev/null 2>&1 && break
        sleep 0.2
    done
    "$cube" status >/dev/null 2>&1 || { tail -20 "$log"; echo "quickstart: cube dev did not start" >&2; exit 1; }
    # The manager needs one collection pass to know its local worker.
    for _ in $(seq 1 50); do
        "$cube" nodes -o json | grep -q '"ready"' && break
        sleep 0.2
    done
fi

# The ID of a running web task that publishes $web_port (a quickstart run before), if any.
running_web() {
    "$cube" status --state running -o json | .venv/bin/python -c '
import json, sys
port = int(sys.argv[1])
for task in json.load(sys.stdin):
    if task["spec"]["name"] == "web" and any(p["host"] == port for p in task["ports"]):
        print(task["id"])
        break
' "$web_port"
}

id=$(running_web)
if [[ -n "$id" ]]; then
    echo "quickstart: the web task ${id:0:12} already runs on host port $web_port; using it"
else
    echo "quickstart: running examples/web.yaml on host port $web_port"
    id=$("$cube" run examples/web.yaml -p "$web_port:8080" --wait)
fi
for _ in $(seq 1 50); do
    curl -fsS "http://127.0.0.1:$web_port/" >/dev/null 2>&1 && break
    sleep 0.2
done
echo
echo "The web task $id is running. It answers on http://127.0.0.1:$web_port/ :"
curl -fsS "http://127.0.0.1:$web_port/" || echo "(not answering yet: try 'cube logs $id')"
short=${id:0:12}
env_line="export PATH=$PWD/.venv/bin:\$PATH CUBE_ADDR=$CUBE_ADDR"
if [[ -n "${CUBE_DATA_DIR:-}" ]]; then
    env_line="$env_line CUBE_DATA_DIR=$CUBE_DATA_DIR"
fi
cat <<MSG

Next, try:
  $env_line
  cube status                  # every task: state, node, ports, restarts, health
  cube status $short     # one task in detail: events, placement scores
  cube nodes                   # the node: capacity, allocation, live metrics
  cube logs $short
  cube run --name sleeper --image cube-busybox:latest --cpu 0.5 --memory 64MiB -- sleep 600
  cube stop $short

The CLI finds the cluster token in $data/dev/manager/token (mode 0600) by itself.
The dashboard: $CUBE_ADDR/ui/ (log in with that token).
Stop the cluster (task containers keep running and are adopted on the next start):
  kill \$(cat $pidfile)
Remove this cluster's containers too:
  docker rm -f \$(docker ps -aq --filter label=cube.worker=$node_name)
MSG
