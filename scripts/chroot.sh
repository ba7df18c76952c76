#!/usr/bin/env bash
# chroot.sh COMMAND...: runs COMMAND in this repository inside a Debian chroot
# whose suite ships PostgreSQL $PG_VERSION as Debian's own packages (17:
# trixie, 18: sid), made on first use with debootstrap from the apt mirror this
# machine is configured with, and kept (CHROOT_DIR, default /var/lib/realtime-chroot).
#
# Why a chroot: Debian 12 ships only PostgreSQL 15, the newer suites' binaries
# need a newer libc, and the mirror serves no source for 17. Inside, 17 and 18
# are Debian's packages at Debian's paths, so every script works unchanged and
# `make package` installs against a real postgresql-N. The repository, the Rust
# toolchain (~/.cargo, ~/.rustup) and the network are the host's: the cluster a
# chroot starts listens on the host's loopback.
source "$(dirname "$0")/common.sh"

case $PG_VERSION in
  17) suite=trixie ;;
  18) suite=sid ;;
  *) echo "chroot.sh: PostgreSQL $PG_VERSION needs no chroot (15 is Debian 12's own)" >&2; exit 2 ;;
esac
root=${CHROOT_DIR:-/var/lib/realtime-chroot}/$suite

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

make_chroot() {
  [ -f "$root/.realtime-ready" ] && return
  local mirror
  mirror=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$mirror" ] || { echo "chroot.sh: no Debian mirror found in /etc/apt" >&2; exit 1; }
  command -v debootstrap >/dev/null || {
    log "installing debootstrap"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq debootstrap >/dev/null
  }
  log "making a Debian $suite chroot for PostgreSQL $PG_VERSION in $root (from $mirror; a few minutes, once)"
  as_root rm -rf "$root"
  as_root mkdir -p "$root"
  as_root debootstrap --variant=minbase --include=ca-certificates,sudo,procps "$suite" "$root" "$mirror" \
    >"/tmp/realtime-debootstrap-$suite.log" 2>&1 || {
      tail -20 "/tmp/realtime-debootstrap-$suite.log" >&2; exit 1; }
  # Packages installed inside start no services, and postgresql-common makes
  # no cluster of its own: the scripts make theirs.
  printf '#!/bin/sh\nexit 101\n' | as_root tee "$root/usr/sbin/policy-rc.d" >/dev/null
  as_root chmod +x "$root/usr/sbin/policy-rc.d"
  as_root mkdir -p "$root/etc/postgresql-common"
  echo "create_main_cluster = false" | as_root tee "$root/etc/postgresql-common/createcluster.conf" >/dev/null
  # The mirror may serve a fixed snapshot, whose sid Release file has expired.
  echo 'Acquire::Check-Valid-Until "false";' | as_root tee "$root/etc/apt/apt.conf.d/99realtime" >/dev/null
  as_root touch "$root/.realtime-ready"
}

# Mounts stay after the command: a cluster `make run` starts keeps running.
bind() {
  local from=$1 to=$root$1
  as_root mkdir -p "$to"
  mountpoint -q "$to" || as_root mount --bind "$from" "$to"
}

mount_all() {
  mountpoint -q "$root/proc" || { as_root mkdir -p "$root/proc"; as_root mount -t proc proc "$root/proc"; }
  mountpoint -q "$root/sys" || { as_root mkdir -p "$root/sys"; as_root mount --rbind /sys "$root/sys"; }
  mountpoint -q "$root/dev" || { as_root mkdir -p "$root/dev"; as_root mount --rbind /dev "$root/dev"; }
  # Postgres's dynamic shared memory lives in /dev/shm: a fresh tmpfs, not the host's.
  mountpoint -q "$root/dev/shm" || as_root mount -t tmpfs -o mode=1777 shm "$root/dev/shm"
  bind "$REPO_ROOT"
  bind "$HOME/.cargo"
  bind "$HOME/.rustup"
  as_root cp /etc/resolv.conf "$root/etc/resolv.conf"
  trust_as_the_host
}

# The package clients inside (apt, npm, pip) reach the registries the way the
# host's do: the certificate authorities the host added, and its npm and pip
# settings (a local wheel directory among them).
trust_as_the_host() {
  local added=/usr/local/share/ca-certificates
  if [ -d "$added" ] && ! diff -rq "$added" "$root$added" >/dev/null 2>&1; then
    as_root mkdir -p "$root$added"
    as_root cp -r "$added/." "$root$added/"
    as_root chroot "$root" update-ca-certificates >/dev/null 2>&1 || true
  fi
  local f
  for f in /etc/pip.conf "$HOME/.npmrc" "$HOME/.config/pip/pip.conf"; do
    if [ -f "$f" ]; then
      as_root mkdir -p "$root$(dirname "$f")"
      as_root cp "$f" "$root$f"
    fi
  done
  local links
  for links in "${PIP_FIND_LINKS:-}" "$(sed -n 's/^find-links *= *//p' /etc/pip.conf 2>/dev/null | head -1)"; do
    if [ -n "$links" ] && [ -d "$links" ]; then bind "$links"; fi
  done
}

make_chroot
mount_all
[ $# -gt 0 ] || set -- bash
# The host's environment, with a PATH that exists inside; REALTIME_CHROOT tells
# the scripts (and make) that they already run inside. Builds go to a target
# directory of their own: build scripts and proc macros linked against the
# chroot's newer libc do not run on the host.
exec_in_chroot=(env "PATH=$HOME/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
                "HOME=$HOME" "PG_VERSION=$PG_VERSION" "REALTIME_CHROOT=$suite"
                "CARGO_TARGET_DIR=$REPO_ROOT/target/$suite")
as_root chroot "$root" "${exec_in_chroot[@]}" bash -c 'cd "$1" && shift && exec "$@"' _ "$REPO_ROOT" "$@"
