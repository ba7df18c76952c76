#!/usr/bin/env bash
# package.sh: writes target/postgresql-<N>-realtime_<version>_amd64.deb for
# PostgreSQL $PG_VERSION, its files where Debian's and PGDG's postgresql-<N>
# look for them (pg_config's own paths), Depends: postgresql-<N>.
# PACKAGE_PROFILE=debug packages the debug build (the tests do, to reuse it).
source "$(dirname "$0")/common.sh"
cd "$REPO_ROOT"

profile=${PACKAGE_PROFILE:-release}
flag=$([ "$profile" = debug ] && echo --debug || true)
out=$REPO_ROOT/target/package/pg$PG_VERSION
log "cargo pgrx package ($profile, PostgreSQL $PG_VERSION)"
rm -rf "$out"
cargo pgrx package $flag --pg-config "$PG_CONFIG" --features "pg$PG_VERSION" --out-dir "$out/root" >/dev/null
# pgrx writes the install script; the upgrade scripts come from sql/.
ext_dir=$out/root$("$PG_CONFIG" --sharedir)/extension
for script in sql/realtime--*--*.sql; do
  [ -e "$script" ] && cp "$script" "$ext_dir/"
done
so=$out/root$("$PG_CONFIG" --pkglibdir)/realtime.so
[ -f "$so" ] || { echo "package.sh: pgrx wrote no $so" >&2; exit 1; }
[ -f "$ext_dir/realtime.control" ] || { echo "package.sh: pgrx wrote no realtime.control" >&2; exit 1; }

# The newest glibc symbol version the library needs is the libc6 it depends on.
glibc=$(objdump -T "$so" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
mkdir -p "$out/root/DEBIAN"
cat >"$out/root/DEBIAN/control" <<CONTROL
Package: postgresql-$PG_VERSION-realtime
Version: $EXT_VERSION
Architecture: amd64
Maintainer: realtime developers <realtime@localhost>
Depends: postgresql-$PG_VERSION, libc6 (>= $glibc)
Section: database
Priority: optional
Homepage: https://github.com/supabase/realtime
Description: Supabase Realtime as a PostgreSQL extension
 Serves the Supabase Realtime WebSocket protocol (Broadcast, Presence,
 Postgres Changes) from a background worker inside PostgreSQL $PG_VERSION.
 Add realtime to shared_preload_libraries, set wal_level = logical,
 restart, then CREATE EXTENSION realtime.
CONTROL
deb=$REPO_ROOT/target/postgresql-$PG_VERSION-realtime_${EXT_VERSION}_amd64.deb
dpkg-deb --root-owner-group --build "$out/root" "$deb" >/dev/null
log "wrote $deb"
echo "$deb"
