#!/usr/bin/env bash
# Installs what building and testing need, skipping what is already there:
# Debian packages, cargo-pgrx (pinned to the pgrx version in Cargo.toml), and
# pgrx's registration of the system PostgreSQL.
source "$(dirname "$0")/common.sh"

apt_packages=(postgresql-$PG_VERSION postgresql-server-dev-$PG_VERSION libclang-dev clang
              pkg-config sudo python3 python3-venv curl ca-certificates build-essential)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Debian's postgresql package starts a cluster of its own on 5432; ours use other ports.

command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }

if ! cargo pgrx --version 2>/dev/null | grep -q " $PGRX_VERSION\$"; then
  log "installing cargo-pgrx $PGRX_VERSION (takes several minutes)"
  cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
fi

pgrx_home=${PGRX_HOME:-$HOME/.pgrx}
if ! grep -qs "^pg$PG_VERSION = " "$pgrx_home/config.toml"; then
  log "registering PostgreSQL $PG_VERSION with pgrx"
  cargo pgrx init --pg$PG_VERSION "$PG_CONFIG"
fi
