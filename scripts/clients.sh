#!/usr/bin/env bash
# The official-client conformance suite: supabase-js / realtime-js (node's
# test runner) and Python `realtime` (pytest), pinned in pg_test/clients,
# against the running test cluster (PG_PORT, WS_PORT).
source "$(dirname "$0")/common.sh"
dir=$REPO_ROOT/pg_test/clients
cd "$dir"

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  log "installing Node.js and npm"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
fi
# Reinstall when the lock file changed since the last install.
if ! cmp -s package-lock.json node_modules/.installed-lock.json 2>/dev/null; then
  log "installing the JS clients (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error
  cp package-lock.json node_modules/.installed-lock.json
fi
venv=$CLIENTS_VENV
if [ ! -x $venv/bin/python ] || ! cmp -s requirements.txt $venv/requirements.txt; then
  log "installing the Python client (pip)"
  python3 -m venv $venv
  $venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
  cp requirements.txt $venv/requirements.txt
fi

log "supabase-js / realtime-js"
node --test --test-concurrency=1 --test-timeout=60000 js/*.test.js
log "Python realtime"
(cd python && $venv/bin/python -m pytest -q -p no:cacheprovider --durations=3 -W ignore::DeprecationWarning)
