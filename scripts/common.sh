# Shared settings for the scripts: sourced, not run.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_VERSION=${PG_VERSION:-15}
PG_BIN=/usr/lib/postgresql/$PG_VERSION/bin
PG_CONFIG=$PG_BIN/pg_config
# The Python client's environment: a chroot's Python is not the host's.
CLIENTS_VENV=$REPO_ROOT/pg_test/clients/.venv${REALTIME_CHROOT:+-$REALTIME_CHROOT}
# What the scripts make for one major (clusters, test data, logs): majors never share it.
PG_STATE=$REPO_ROOT/target/pg$PG_VERSION
PGRX_VERSION=0.18.0
# The extension's version, as Cargo.toml gives it to the control file.
EXT_VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO_ROOT/Cargo.toml" | head -1)

# The development JWT secret, the same default as the Supabase CLI's local stack.
DEV_JWT_SECRET=${DEV_JWT_SECRET:-super-secret-jwt-token-with-at-least-32-characters-long}
# Development API keys in the shape of a Supabase project's (realtime.api_keys).
DEV_PUBLISHABLE_KEY=${DEV_PUBLISHABLE_KEY:-sb_publishable_realtime_dev_0123456789}
DEV_SECRET_KEY=${DEV_SECRET_KEY:-sb_secret_realtime_dev_0123456789abcdef}

# Test and bench clusters drive far more sockets, joins and messages than
# Supabase's default tenant limits allow; the limits tests lower them again.
LOAD_TEST_LIMITS="realtime.max_concurrent_users = 1000000
realtime.max_joins_per_second = 1000000
realtime.max_events_per_second = 1000000000
realtime.max_bytes_per_second = 2000000000
realtime.max_presence_events_per_second = 1000000000"

# Root runs privileged steps directly; anyone else through sudo.
if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi

# Postgres refuses to run as root: as root the cluster belongs to `postgres`.
if [ "$(id -u)" = 0 ]; then PG_OS_USER=postgres; else PG_OS_USER=$(id -un); fi

as_pg_user() {
  if [ "$(id -u)" = 0 ]; then runuser -u "$PG_OS_USER" -- "$@"; else "$@"; fi
}

log() { printf '==> %s\n' "$*" >&2; }

# Does something accept connections on 127.0.0.1:$1?
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Ports pick_port handed out in this shell: nothing listens on them yet, but
# they are spoken for.
PICKED_PORTS=" "

# The first port from $1 up that nothing listens on and pick_port did not hand out.
free_port() {
  local port=$1
  while port_busy "$port" || [[ $PICKED_PORTS == *" $port "* ]]; do port=$((port + 1)); done
  echo "$port"
}

# Sets the variable named $1 to a free port from $2 up, unless the caller set
# it; says so when the default was taken.
pick_port() {
  local name=$1 default=$2
  if [ -z "${!name:-}" ]; then
    local port
    port=$(free_port "$default")
    [ "$port" = "$default" ] || log "port $default is taken: using $name=$port"
    printf -v "$name" '%s' "$port"
    export "${name?}"
  fi
  PICKED_PORTS+="${!name} "
}

# The ports of scripts/nodes.sh: PRIMARY_, STANDBY1_ and STANDBY2_PG_PORT from
# $1 up, their _WS_PORT from $2 up (each moved on when taken).
pick_node_ports() {
  local i=0 node
  for node in PRIMARY STANDBY1 STANDBY2; do
    pick_port "${node}_PG_PORT" $(($1 + i))
    pick_port "${node}_WS_PORT" $(($2 + i))
    i=$((i + 1))
  done
}
