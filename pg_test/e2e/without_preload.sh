#!/usr/bin/env bash
# Without shared_preload_libraries: CREATE EXTENSION realtime and LOAD
# 'realtime' each end in an ERROR that says what to do, and the session goes
# on (loading the library late used to be FATAL: "cannot create
# PGC_POSTMASTER variables after startup"). A cluster of its own, stopped on exit.
source "$(dirname "$0")/../../scripts/common.sh"
dir=$PG_STATE/without-preload
data=$dir/pgdata
pick_port BARE_PG_PORT 54460
stop_bare() { as_pg_user "$PG_BIN/pg_ctl" -D "$data" -w -m immediate stop >/dev/null 2>&1 || true; }
stop_bare
rm -rf "$dir"
mkdir -p "$dir"
[ "$(id -u)" = 0 ] && chown "$PG_OS_USER" "$dir"
as_pg_user "$PG_BIN/initdb" -D "$data" -U postgres --auth=trust >/dev/null
trap stop_bare EXIT
as_pg_user "$PG_BIN/pg_ctl" -D "$data" -l "$dir/postgres.log" -w \
  -o "-p $BARE_PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=''" start >/dev/null
out=$(psql -X -q -At -h 127.0.0.1 -p "$BARE_PG_PORT" -U postgres -d postgres \
  -c 'CREATE EXTENSION realtime' -c "SELECT 'still here after CREATE EXTENSION'" \
  -c "LOAD 'realtime'" -c "SELECT 'still here after LOAD'" 2>&1 || true)
fail() { echo "FAIL: $1" >&2; echo "$out" >&2; exit 1; }
[ "$(grep -c 'ERROR:  realtime must be loaded when the server starts' <<<"$out")" = 2 ] || fail "two ERRORs naming the cause"
[ "$(grep -c "HINT:  Add 'realtime' to shared_preload_libraries" <<<"$out")" = 2 ] || fail "a hint each"
grep -q 'still here after CREATE EXTENSION' <<<"$out" || fail "the session ended at CREATE EXTENSION"
grep -q 'still here after LOAD' <<<"$out" || fail "the session ended at LOAD"
! grep -q FATAL <<<"$out" || fail "FATAL"
echo "without preload: CREATE EXTENSION and LOAD give an ERROR with the fix, and the session goes on"
