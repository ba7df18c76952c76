# Shared settings for the scripts: sourced, not run.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_VERSION=${PG_VERSION:-15}
PG_BIN=/usr/lib/postgresql/$PG_VERSION/bin
PG_CONFIG=$PG_BIN/pg_config
PGRX_VERSION=0.18.0

# The development JWT secret, the same default as the Supabase CLI's local stack.
DEV_JWT_SECRET=${DEV_JWT_SECRET:-super-secret-jwt-token-with-at-least-32-characters-long}

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
