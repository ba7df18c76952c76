#!/usr/bin/env bash
# Every test, in order: Rust unit and #[pg_test] tests, then against a live
# cluster started the way `make run` starts one: pg_regress goldens and
# end-to-end tests. Exits non-zero on the first failure.
source "$(dirname "$0")/common.sh"
cd "$REPO_ROOT"

export RUN_DIR=$PG_STATE/test-cluster
export EXTRA_CONF=$LOAD_TEST_LIMITS
# A test cluster left running by an interrupted run is stopped first; then
# the default ports, or the next free ones (PG_PORT and WS_PORT override).
PG_PORT=${PG_PORT:-54399} scripts/cluster.sh stop || true
pick_port PG_PORT 54399
pick_port WS_PORT 4099
cleanup() {
  scripts/cluster.sh stop || true
  scripts/nodes.sh stop || true
}
# The end-to-end tests hold a thousand sockets at once.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
trap cleanup EXIT

runas=$([ "$(id -u)" = 0 ] && echo postgres || id -un)
pgrx_data=$PG_STATE/pgrx-test-data
mkdir -p "$pgrx_data"
[ "$(id -u)" = 0 ] && chown "$runas" "$pgrx_data"

log "PostgreSQL $PG_VERSION: $("$PG_CONFIG" --version)"
log "cargo pgrx test (unit tests and #[pg_test])"
cargo pgrx test "pg$PG_VERSION" --runas "$runas" --pgdata "$pgrx_data/data"

log "make run, twice (it must be idempotent)"
make --no-print-directory run PROFILE=debug >/dev/null
make --no-print-directory run PROFILE=debug >/dev/null

log "pg_regress goldens"
pg_test/regress/run.sh

log "end-to-end"
for t in pg_test/e2e/*.sh; do
  log "  $t"
  "$t"
done
cargo test -p realtime-e2e

log "official clients"
scripts/clients.sh

log "inspector (headless Chromium)"
pg_test/inspector/run.sh

log "TLS (realtime.ssl, a self-signed certificate)"
TLS=1 make --no-print-directory run PROFILE=debug >/dev/null
pg_test/tls/run.sh

log "primary and two hot standbys (realtime.bus)"
pg_test/nodes/run.sh

log "the Debian package (make package, dpkg -i, a client, dpkg -r)"
pg_test/package/run.sh
log "all tests passed on PostgreSQL $PG_VERSION"
