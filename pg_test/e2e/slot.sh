#!/usr/bin/env bash
# After `make run`: the worker decodes from its own logical slot, with the
# extension's output plugin; on PostgreSQL 17 and later it is a failover slot
# (standbys with sync_replication_slots = on keep a copy of it).
source "$(dirname "$0")/../../scripts/common.sh"
psql=(psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "${PG_PORT:?}" -U postgres -d postgres)
plugin=
for _ in $(seq 50); do
  plugin=$("${psql[@]}" -c "select plugin from pg_replication_slots where slot_name = 'realtime'")
  [ -n "$plugin" ] && break
  sleep 0.2
done
[ "$plugin" = realtime ] || { echo "FAIL: slot realtime has plugin '$plugin'" >&2; exit 1; }
if [ "$PG_VERSION" -ge 17 ]; then
  failover=$("${psql[@]}" -c "select failover from pg_replication_slots where slot_name = 'realtime'")
  [ "$failover" = t ] || { echo "FAIL: on PostgreSQL $PG_VERSION the slot is not a failover slot" >&2; exit 1; }
  echo "ok: the worker's slot uses the realtime plugin and is a failover slot"
else
  echo "ok: the worker's slot uses the realtime plugin"
fi
