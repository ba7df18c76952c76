#!/usr/bin/env bash
# realtime.ssl against the running test cluster, started with TLS=1 (a
# self-signed certificate): https and wss answer and plain HTTP does not;
# supabase-js and Python realtime work over wss with the certificate trusted;
# a certificate path that cannot be read is named in the log, and wss keeps
# working with the certificate loaded before.
source "$(dirname "$0")/../../scripts/common.sh"
: "${PG_PORT:?}" "${WS_PORT:?}" "${RUN_DIR:?}"
cert=$RUN_DIR/pgdata/server.crt
log_file=$RUN_DIR/postgres.log
base=https://127.0.0.1:$WS_PORT
psql_() { psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -c "$1"; }
fail() { echo "TLS: $*" >&2; exit 1; }

# GET $1 over https trusting the certificate; prints the status (0: no answer).
status() {
  python3 - "$1" "$cert" <<'PY'
import ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile=sys.argv[2])
try:
    print(urllib.request.urlopen(sys.argv[1], context=ctx, timeout=5).status)
except Exception as e:
    print(getattr(e, "code", 0))
PY
}

for _ in $(seq 50); do [ "$(status "$base/health")" = 200 ] && break; sleep 0.2; done
[ "$(status "$base/health")" = 200 ] || fail "https://…/health did not answer 200"
[ "$(status "http://127.0.0.1:$WS_PORT/health")" = 0 ] || fail "plain http answered on the TLS port"

log "supabase-js over wss"
(cd "$REPO_ROOT/pg_test/clients" && REALTIME_URL=$base NODE_EXTRA_CA_CERTS=$cert \
  node --test --test-concurrency=1 --test-timeout=60000 js/broadcast.test.js)
log "Python realtime over wss"
(cd "$REPO_ROOT/pg_test/clients/python" && REALTIME_URL=$base SSL_CERT_FILE=$cert \
  "$CLIENTS_VENV/bin/python" -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning -k "broadcast or http_send")

log "a certificate path that cannot be read"
lines=$(wc -l <"$log_file")
psql_ "ALTER SYSTEM SET ssl_cert_file = '/nonexistent/server.crt'"
psql_ "SELECT pg_reload_conf()"
expected='realtime.ssl is on but cannot read certificates from ssl_cert_file "/nonexistent/server.crt"'
for _ in $(seq 50); do tail -n +"$lines" "$log_file" | grep -qF "$expected" && break; sleep 0.2; done
tail -n +"$lines" "$log_file" | grep -qF "$expected" || fail "no warning naming the unreadable certificate"
[ "$(status "$base/health")" = 200 ] || fail "wss/https stopped with an unreadable certificate path"
psql_ "ALTER SYSTEM RESET ssl_cert_file"
psql_ "SELECT pg_reload_conf()"
log "TLS: all passed"
