#!/usr/bin/env bash
# realtime.log_level: the network side's lines reach the Postgres log through
# ereport (with its timestamp and level); at `warning` its info lines (here
# "listening on", written when the worker starts) are left out.
source "$(dirname "$0")/../../scripts/common.sh"
psql=(psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "${PG_PORT:?}" -U postgres -d postgres)
log_file=${RUN_DIR:?}/postgres.log
restart_worker() {
  "${psql[@]}" -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'realtime'" >/dev/null
  for _ in $(seq 100); do
    [ "$("${psql[@]}" -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'realtime'")" = 1 ] && return
    sleep 0.1
  done
  echo "FAIL: the worker did not come back" >&2; exit 1
}
# Lines logged since line $1 that say the worker listens.
listening_since() { tail -n +"$1" "$log_file" | grep -c 'LOG:  realtime: listening on' || true; }

"${psql[@]}" -c "ALTER SYSTEM SET realtime.log_level = 'warning'" -c "SELECT pg_reload_conf()" >/dev/null
sleep 0.5
from=$(wc -l <"$log_file")
restart_worker
sleep 1
quiet=$(listening_since "$from")
"${psql[@]}" -c "ALTER SYSTEM RESET realtime.log_level" -c "SELECT pg_reload_conf()" >/dev/null
[ "$quiet" = 0 ] || { echo "FAIL: an info line was logged at realtime.log_level = warning" >&2; exit 1; }

from=$(wc -l <"$log_file")
restart_worker
for _ in $(seq 50); do [ "$(listening_since "$from")" -ge 1 ] && break; sleep 0.1; done
[ "$(listening_since "$from")" -ge 1 ] || { echo "FAIL: no 'LOG:  realtime: listening on' line at info" >&2; exit 1; }
# A started worker holds database broadcasts for realtime.restart_grace:
# let it pass before the tests that follow.
sleep 5
echo "ok: realtime.log_level keeps the worker's info lines out at warning, and they are ereport lines at info"
