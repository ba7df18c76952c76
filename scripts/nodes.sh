#!/usr/bin/env bash
# A primary and two hot standbys on 127.0.0.1, each with its realtime worker;
# the primary writes database broadcasts into WAL (realtime.bus = on) and the
# standbys deliver them from their replayed WAL.
#   nodes.sh start   the primary (cluster.sh start), then each standby from a
#                    fresh pg_basebackup; waits until every worker answers
#                    /health, prints the ports
#   nodes.sh stop    stops whichever of the three runs
#   nodes.sh crash-primary   stops the primary at once (-m immediate), as a
#                    crash would (the failover test)
# NODES_DIR (default target/pgN/nodes) holds primary/, standby1/, standby2/ and tls/.
# PRIMARY_PG_PORT, PRIMARY_WS_PORT (54410, 4110), STANDBY1_PG_PORT,
# STANDBY1_WS_PORT (54411, 4111), STANDBY2_PG_PORT, STANDBY2_WS_PORT (54412,
# 4112) pick the ports; a busy default moves to the next free port.
source "$(dirname "$0")/common.sh"

NODES_DIR=${NODES_DIR:-$PG_STATE/nodes}

data_dir() { echo "$NODES_DIR/$1/pgdata"; }

running() {
  local data
  data=$(data_dir "$1")
  [ -f "$data/PG_VERSION" ] && as_pg_user "$PG_BIN/pg_ctl" -D "$data" status >/dev/null 2>&1
}

stop_node() {
  local data
  data=$(data_dir "$1")
  if running "$1"; then
    as_pg_user "$PG_BIN/pg_ctl" -D "$data" -w -m fast stop >/dev/null ||
      as_pg_user "$PG_BIN/pg_ctl" -D "$data" -w -m immediate stop >/dev/null || true
    log "stopped $1"
  fi
}

# The standbys first: a primary's shutdown waits for its WAL senders.
stop() {
  stop_node standby2
  stop_node standby1
  stop_node primary
}

# Prints the HTTP status of the worker's /health on port $1 (000: no answer).
health() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$1/health" || true; }

# Prints pg_is_in_recovery() of the server on port $1 (nothing: no answer).
in_recovery() {
  psql -X -q -At -h 127.0.0.1 -p "$1" -U postgres -d postgres -c 'SELECT pg_is_in_recovery()' 2>/dev/null || true
}

# Waits up to 20 s for node $1 (Postgres on $2, worker on $3) to answer
# pg_is_in_recovery() = $4 and /health 200; else shows the end of its log and exits.
wait_ready() {
  local name=$1 pg=$2 ws=$3 recovery=$4 deadline=$((SECONDS + 20))
  while [ "$SECONDS" -lt "$deadline" ]; do
    if [ "$(in_recovery "$pg")" = "$recovery" ] && [ "$(health "$ws")" = 200 ]; then return; fi
    sleep 0.2
  done
  echo "$name did not come up within 20 s: pg_is_in_recovery() on port $pg should be $recovery" \
    "(it is '$(in_recovery "$pg")') and http://127.0.0.1:$ws/health should answer 200 (it answers $(health "$ws"))." \
    "The end of $NODES_DIR/$name/postgres.log:" >&2
  tail -n 40 "$NODES_DIR/$name/postgres.log" >&2 || true
  exit 1
}

# A hot standby $1 of the primary, from a fresh base backup, Postgres on $2 and
# the worker on $3. On 17+, it syncs the worker's failover slot (slot $1 on
# the primary, sync_replication_slots).
start_standby() {
  local name=$1 pg=$2 ws=$3 dir=$NODES_DIR/$1
  local data=$dir/pgdata
  rm -rf "$dir"
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then chown "$PG_OS_USER" "$dir"; fi
  if [ "$PG_VERSION" -ge 17 ]; then
    # 17+: the standby streams through a physical slot of its own on the
    # primary and keeps a synced copy of the worker's failover slot.
    psql -X -q -At -h 127.0.0.1 -p "$PRIMARY_PG_PORT" -U postgres -d postgres -c \
      "SELECT pg_create_physical_replication_slot('$name', true)" >/dev/null
  fi
  log "$name: pg_basebackup from the primary"
  # A fast checkpoint: a spread one paces itself over minutes.
  as_pg_user "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$PRIMARY_PG_PORT" -U postgres -D "$data" \
    -R -X stream --checkpoint=fast
  # The primary's realtime.conf came along: its own ports, the rest as it is.
  as_pg_user sed -i -e "s/^port = .*/port = $pg/" -e "s/^realtime\.port = .*/realtime.port = $ws/" \
    "$data/realtime.conf"
  if ! as_pg_user grep -qx "port = $pg" "$data/realtime.conf" ||
    ! as_pg_user grep -qx "realtime.port = $ws" "$data/realtime.conf"; then
    echo "$name: could not set its ports in $data/realtime.conf" >&2
    exit 1
  fi
  if [ "$PG_VERSION" -ge 17 ]; then
    # After pg_basebackup -R's own lines: the last setting in the file wins.
    as_pg_user tee -a "$data/postgresql.auto.conf" >/dev/null <<CONF
primary_conninfo = 'host=127.0.0.1 port=$PRIMARY_PG_PORT user=postgres dbname=postgres application_name=$name'
primary_slot_name = '$name'
sync_replication_slots = on
CONF
  fi
  log "$name: starting PostgreSQL on port $pg"
  as_pg_user touch "$dir/postgres.log"
  as_pg_user "$PG_BIN/pg_ctl" -D "$data" -l "$dir/postgres.log" -w start >/dev/null
}

# TLS for the standbys' connections to the primary, in $NODES_DIR/tls: a CA,
# the primary's certificate from it (localhost, 127.0.0.1), and a second CA
# that signed nothing (the tests' wrong root).
make_certificates() {
  local dir=$NODES_DIR/tls
  [ -f "$dir/server.crt" ] && return
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then chown "$PG_OS_USER" "$dir"; fi
  local ca
  for ca in ca other-ca; do
    as_pg_user openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=realtime test $ca" \
      -keyout "$dir/$ca.key" -out "$dir/$ca.crt" 2>/dev/null
  done
  as_pg_user openssl req -newkey rsa:2048 -nodes -subj /CN=localhost \
    -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' |
    as_pg_user tee "$dir/server.ext" >/dev/null
  as_pg_user openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
    -CAcreateserial -days 3650 -extfile "$dir/server.ext" -out "$dir/server.crt" 2>/dev/null
  as_pg_user chmod 600 "$dir/server.key" "$dir/ca.key" "$dir/other-ca.key"
}

start() {
  # Nodes left running by an interrupted run stop first, freeing their ports;
  # every start is from fresh data directories (a failover test leaves the
  # old primary crashed, and its settings changed).
  stop
  rm -rf "$NODES_DIR/primary"
  pick_node_ports 54410 4110
  mkdir -p "$NODES_DIR"
  # Every WebSocket is a descriptor of a worker: it inherits this limit.
  if [ "$(id -u)" = 0 ]; then ulimit -Hn 200000 2>/dev/null || true; fi
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

  make_certificates
  log "primary: realtime.bus = on, ssl = on"
  RUN_DIR=$NODES_DIR/primary PG_PORT=$PRIMARY_PG_PORT WS_PORT=$PRIMARY_WS_PORT TLS=0 \
    EXTRA_CONF="$LOAD_TEST_LIMITS
realtime.bus = on
hot_standby_feedback = on
wal_keep_size = '256MB'
max_standby_streaming_delay = '2s'
ssl = on
ssl_cert_file = '$NODES_DIR/tls/server.crt'
ssl_key_file = '$NODES_DIR/tls/server.key'" \
    "$REPO_ROOT/scripts/cluster.sh" start >/dev/null
  wait_ready primary "$PRIMARY_PG_PORT" "$PRIMARY_WS_PORT" f

  start_standby standby1 "$STANDBY1_PG_PORT" "$STANDBY1_WS_PORT"
  wait_ready standby1 "$STANDBY1_PG_PORT" "$STANDBY1_WS_PORT" t
  start_standby standby2 "$STANDBY2_PG_PORT" "$STANDBY2_WS_PORT"
  wait_ready standby2 "$STANDBY2_PG_PORT" "$STANDBY2_WS_PORT" t

  local name pg ws
  for name in primary standby1 standby2; do
    pg=${name^^}_PG_PORT ws=${name^^}_WS_PORT
    printf '%-9s postgres 127.0.0.1:%s  realtime ws://127.0.0.1:%s  log %s\n' \
      "$name" "${!pg}" "${!ws}" "$NODES_DIR/$name/postgres.log"
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  crash-primary) as_pg_user "$PG_BIN/pg_ctl" -D "$(data_dir primary)" -w -m immediate stop >/dev/null ;;
  *) echo "usage: $0 start|stop|crash-primary" >&2; exit 2 ;;
esac
