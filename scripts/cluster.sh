#!/usr/bin/env bash
# A local PostgreSQL cluster with the realtime worker loaded.
#   cluster.sh start   initdb when needed, (re)start, CREATE EXTENSION, print how to connect
#   cluster.sh stop
# RUN_DIR (default .run in the repo, .run/pgN for 17 and 18), PG_PORT and WS_PORT pick where it lives;
# EXTRA_CONF adds settings (the test and bench clusters raise the limits).
# TLS=1 serves wss:// and https:// (and Postgres's own SSL) with a
# self-signed certificate made for localhost and 127.0.0.1: $RUN_DIR/pgdata/server.crt.
source "$(dirname "$0")/common.sh"

# 15's cluster in .run, another major's in .run/pgN: a data directory is one major's.
if [ "$PG_VERSION" = 15 ]; then RUN_DIR=${RUN_DIR:-$REPO_ROOT/.run}; else RUN_DIR=${RUN_DIR:-$REPO_ROOT/.run/pg$PG_VERSION}; fi
PG_PORT=${PG_PORT:-54322}
WS_PORT=${WS_PORT:-4000}
DATA=$RUN_DIR/pgdata
PG_LOG=$RUN_DIR/postgres.log
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres)

running() { [ -f "$DATA/PG_VERSION" ] && as_pg_user "$PG_BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

start() {
  if ! running; then
    for var in PG_PORT WS_PORT; do
      if port_busy "${!var}"; then
        echo "port ${!var} is taken by another program: set $var to a free port (e.g. $var=$(free_port "${!var}"))" >&2
        exit 1
      fi
    done
  fi
  mkdir -p "$RUN_DIR"
  [ "$(id -u)" = 0 ] && chown "$PG_OS_USER" "$RUN_DIR"
  if ! as_pg_user test -w "$RUN_DIR"; then
    echo "user $PG_OS_USER cannot write $RUN_DIR (is a parent directory closed to it?); set RUN_DIR elsewhere" >&2
    exit 1
  fi
  if [ ! -f "$DATA/PG_VERSION" ]; then
    log "initdb $DATA"
    as_pg_user "$PG_BIN/initdb" -D "$DATA" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    echo "include_if_exists = 'realtime.conf'" | as_pg_user tee -a "$DATA/postgresql.conf" >/dev/null
  fi
  # Rewritten on every start so a changed port or secret takes effect.
  as_pg_user tee "$DATA/realtime.conf" >/dev/null <<CONF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = ''
shared_preload_libraries = 'realtime'
wal_level = logical
max_wal_senders = 10
max_replication_slots = 10
realtime.database = 'postgres'
realtime.listen_addresses = '127.0.0.1'
realtime.port = $WS_PORT
realtime.jwt_secret = '$DEV_JWT_SECRET'
realtime.api_keys = '{"$DEV_PUBLISHABLE_KEY": "anon", "$DEV_SECRET_KEY": "service_role"}'
${EXTRA_CONF:-}
CONF
  if [ "${TLS:-0}" = 1 ]; then
    if [ ! -f "$DATA/server.crt" ]; then
      log "making a self-signed certificate for localhost and 127.0.0.1 ($DATA/server.crt)"
      as_pg_user openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=localhost \
        -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -keyout "$DATA/server.key" -out "$DATA/server.crt" 2>/dev/null
      as_pg_user chmod 600 "$DATA/server.key"
    fi
    printf "ssl = on\nrealtime.ssl = on\n" | as_pg_user tee -a "$DATA/realtime.conf" >/dev/null
  fi
  # Every WebSocket is a descriptor of the worker: it inherits this limit.
  if [ "$(id -u)" = 0 ]; then ulimit -Hn 200000 2>/dev/null || true; fi
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  if running; then
    log "restarting PostgreSQL on port $PG_PORT (to load the freshly installed library)"
    as_pg_user "$PG_BIN/pg_ctl" -D "$DATA" -l "$PG_LOG" -w -m fast restart >/dev/null
  else
    log "starting PostgreSQL on port $PG_PORT"
    as_pg_user touch "$PG_LOG"
    as_pg_user "$PG_BIN/pg_ctl" -D "$DATA" -l "$PG_LOG" -w start >/dev/null
  fi
  # A development cluster: when the installed SQL changed since this cluster
  # created the extension, it is created again (installed databases take
  # ALTER EXTENSION realtime UPDATE instead).
  local sql_sum marker=$RUN_DIR/extension.sha256
  sql_sum=$(sha256sum "$($PG_CONFIG --sharedir)/extension/realtime--$EXT_VERSION.sql" | cut -d' ' -f1)
  if [ "$(cat "$marker" 2>/dev/null)" != "$sql_sum" ]; then
    log "creating the extension from its installed SQL (dropping an older one, its realtime.messages and policies)"
    "${PSQL[@]}" -c 'DROP EXTENSION IF EXISTS realtime CASCADE'
  fi
  "${PSQL[@]}" -c 'CREATE EXTENSION IF NOT EXISTS realtime'
  echo "$sql_sum" >"$marker"
}

stop() {
  if running; then
    as_pg_user "$PG_BIN/pg_ctl" -D "$DATA" -w -m fast stop >/dev/null
    log "stopped PostgreSQL on port $PG_PORT"
  fi
}

info() {
  local jwt="python3 $REPO_ROOT/scripts/dev_jwt.py" s=
  local PG_VERSION_PREFIX=
  [ "$PG_VERSION" = 15 ] || PG_VERSION_PREFIX="PG_VERSION=$PG_VERSION "
  [ "${TLS:-0}" = 1 ] && s=s
  cat <<INFO

realtime is running.
  psql       psql postgresql://postgres@127.0.0.1:$PG_PORT/postgres
  WebSocket  ws$s://127.0.0.1:$WS_PORT/realtime/v1/websocket?apikey=<anon key>&vsn=2.0.0
  Supabase   createClient('http$s://127.0.0.1:$WS_PORT', '<anon key>')
  log        $PG_LOG${s:+
  TLS        self-signed: trust $DATA/server.crt (NODE_EXTRA_CA_CERTS, SSL_CERT_FILE, curl --cacert)}

JWTs signed with the development secret (realtime.jwt_secret), valid one year:
  anon           $($jwt anon "$DEV_JWT_SECRET")
  authenticated  $($jwt authenticated "$DEV_JWT_SECRET" 31536000 00000000-0000-4000-8000-000000000001)
  service_role   $($jwt service_role "$DEV_JWT_SECRET")

API keys, as a Supabase project of today has them (realtime.api_keys):
  publishable    $DEV_PUBLISHABLE_KEY   (anon; createClient('http$s://127.0.0.1:$WS_PORT', '$DEV_PUBLISHABLE_KEY'))
  secret         $DEV_SECRET_KEY   (service_role; server-side only)

Stop it with: ${PG_VERSION_PREFIX}make stop
INFO
}

case "${1:-}" in
  start) start; info ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
