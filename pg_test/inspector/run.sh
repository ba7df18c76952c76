#!/usr/bin/env bash
# /inspector in a real browser: Debian's chromium, driven by puppeteer-core
# (pinned here), against the running test cluster. Saves target/inspector.png.
source "$(dirname "$0")/../../scripts/common.sh"
cd "$(dirname "$0")"
if ! command -v chromium >/dev/null; then
  log "installing chromium"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
if ! cmp -s package-lock.json node_modules/.installed-lock.json 2>/dev/null; then
  log "installing puppeteer-core (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error
  cp package-lock.json node_modules/.installed-lock.json
fi
node --test --test-timeout=60000 inspector.test.js cors.test.js
