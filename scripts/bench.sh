#!/usr/bin/env bash
# `make bench` / `make bench-quick`: a release build in its own cluster, the
# peer beside it, the load generator against both; writes BENCHMARKS.md.
source "$(dirname "$0")/common.sh"
cd "$REPO_ROOT"
export PG_VERSION RUN_DIR=$PG_STATE/bench-cluster
export EXTRA_CONF=$LOAD_TEST_LIMITS
PG_PORT=${PG_PORT:-54398} scripts/cluster.sh stop || true
pick_port PG_PORT 54398
pick_port WS_PORT 4098
pick_port PEER_PORT 4097
# Scenario 10 starts a primary and two standbys (scripts/nodes.sh) on these.
export NODES_DIR=$PG_STATE/bench-nodes
scripts/nodes.sh stop || true
pick_node_ports 54420 4120
peer_pid=
cleanup() {
  [ -n "$peer_pid" ] && kill "$peer_pid" 2>/dev/null
  scripts/nodes.sh stop || true
  scripts/cluster.sh stop || true
}
trap cleanup EXIT

# 50,000 sockets: the peer and the load generator need the descriptors.
if [ "$(id -u)" = 0 ]; then ulimit -Hn 200000 2>/dev/null || true; fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
make --no-print-directory run PROFILE=release >/dev/null
if ! cmp -s bench/peer/package-lock.json bench/peer/node_modules/.installed-lock.json 2>/dev/null; then
  (cd bench/peer && npm ci --no-audit --no-fund --loglevel=error && cp package-lock.json node_modules/.installed-lock.json)
fi
node bench/peer/server.js "$PEER_PORT" "$PG_PORT" &
peer_pid=$!
cargo build --release -q -p realtime-bench
# A starting worker holds database broadcasts for realtime.restart_grace.
sleep 6
"${CARGO_TARGET_DIR:-target}/release/realtime-bench" "$@" --pg-port "$PG_PORT" --realtime-port "$WS_PORT" \
  --peer-port "$PEER_PORT" --peer-pid "$peer_pid" --out "$REPO_ROOT"
