#!/usr/bin/env bash
# `make package` for PostgreSQL $PG_VERSION, installed with dpkg -i next to
# Debian's own postgresql-$PG_VERSION, loads into a fresh cluster and serves
# supabase-js; then dpkg -r removes every file it installed.
source "$(dirname "$0")/../../scripts/common.sh"
cd "$REPO_ROOT"
fail() { echo "package: $*" >&2; exit 1; }

deb=$(PACKAGE_PROFILE=${PACKAGE_PROFILE:-debug} scripts/package.sh | tail -1)
[ "$(basename "$deb")" = "postgresql-$PG_VERSION-realtime_${EXT_VERSION}_amd64.deb" ] || fail "named $deb"
contents=$(dpkg-deb -c "$deb" | awk '{ print $NF }')
for f in "./usr/lib/postgresql/$PG_VERSION/lib/realtime.so" \
         "./usr/share/postgresql/$PG_VERSION/extension/realtime.control" \
         "./usr/share/postgresql/$PG_VERSION/extension/realtime--$EXT_VERSION.sql"; do
  grep -qxF "$f" <<<"$contents" || fail "$f is not in the package"
done
for script in sql/realtime--*--*.sql; do
  [ -e "$script" ] || continue
  grep -qxF "./usr/share/postgresql/$PG_VERSION/extension/$(basename "$script")" <<<"$contents" \
    || fail "the upgrade script $script is not in the package"
done
dpkg-deb -f "$deb" Depends | grep -q "postgresql-$PG_VERSION\b" || fail "no Depends: postgresql-$PG_VERSION"
dpkg-query -W -f='${Status}' "postgresql-$PG_VERSION" | grep -q 'install ok installed' \
  || fail "Debian's postgresql-$PG_VERSION is not installed to test against"

log "dpkg -i $(basename "$deb")"
$SUDO dpkg -i "$deb" >/dev/null
cleanup() {
  RUN_DIR=$run scripts/cluster.sh stop >/dev/null 2>&1 || true
  $SUDO dpkg -r "postgresql-$PG_VERSION-realtime" >/dev/null 2>&1 || true
}
run=$PG_STATE/package-cluster
trap cleanup EXIT
dpkg-query -W -f='${Status}' "postgresql-$PG_VERSION-realtime" | grep -q 'install ok installed' || fail "not installed"
cmp -s <(dpkg-deb --fsys-tarfile "$deb" | tar -xO "./usr/lib/postgresql/$PG_VERSION/lib/realtime.so") \
  "/usr/lib/postgresql/$PG_VERSION/lib/realtime.so" || fail "the installed realtime.so is not the package's"

pick_port PKG_PG_PORT 54470
pick_port PKG_WS_PORT 4170
rm -rf "$run"
RUN_DIR=$run PG_PORT=$PKG_PG_PORT WS_PORT=$PKG_WS_PORT scripts/cluster.sh start >/dev/null
for _ in $(seq 100); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PKG_WS_PORT/health")" = 200 ] && break
  sleep 0.2
done
PG_PORT=$PKG_PG_PORT WS_PORT=$PKG_WS_PORT EXT_VERSION=$EXT_VERSION \
  node --test --test-timeout=60000 pg_test/package/serves.test.js

RUN_DIR=$run scripts/cluster.sh stop >/dev/null
$SUDO dpkg -r "postgresql-$PG_VERSION-realtime" >/dev/null
[ ! -e "/usr/lib/postgresql/$PG_VERSION/lib/realtime.so" ] || fail "dpkg -r left realtime.so behind"
trap - EXIT
echo "package: $(basename "$deb") installs with dpkg -i, serves supabase-js, and dpkg -r removes it"
