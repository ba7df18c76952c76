#!/usr/bin/env bash
# realtime.bus: a primary and two hot standbys (scripts/nodes.sh, stopped on
# exit), then the end-to-end tests against all three (pg_test/e2e/tests/nodes.rs),
# one at a time: every node says what it is, a send on the primary reaches the
# sockets of every node once and in order, a paused standby delivers on resume,
# and (last) a failover: the primary crashes, standby1 is promoted, standby2
# follows it, and the sockets on both go on (on 17+, with nothing lost: the
# standbys sync the worker's failover slot).
source "$(dirname "$0")/../../scripts/common.sh"
cd "$REPO_ROOT"
# Nodes left by an interrupted run stop before their ports are picked; the
# ports go to nodes.sh and the tests through the environment.
export NODES_DIR=${NODES_DIR:-$PG_STATE/nodes}
scripts/nodes.sh stop
pick_node_ports 54410 4110
cleanup() { scripts/nodes.sh stop || true; }
trap cleanup EXIT
scripts/nodes.sh start
cargo test -p realtime-e2e --features nodes --test nodes -- --test-threads=1 --skip failover
# Last: it crashes the primary for good. On 15 the promoted standby reports
# what it could not deliver; on 17+ it decodes on from the synced failover slot.
if [ "$PG_VERSION" -ge 17 ]; then
  failover=failover_on_a_synced_slot_delivers_every_replicated_message_once_in_order
else
  failover=failover_keeps_the_sockets_announces_the_epoch_and_goes_on
fi
cargo test -p realtime-e2e --features nodes --test nodes -- --exact "$failover"
