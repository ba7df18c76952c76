#!/usr/bin/env bash
# `make fuzz`: the property tests over what clients send (Phoenix frames, join
# payloads, REST bodies, JWTs, filters), for FUZZ_CASES cases each (default
# 800,000: over 10 million in all). Not part of `make test`, which runs the
# same properties for proptest's default 256 cases each.
source "$(dirname "$0")/common.sh"
cd "$REPO_ROOT"
cases=${FUZZ_CASES:-800000}
targets=(properties parse_is_total_and_stable rendered_filters_round_trip)
log "fuzzing: $cases cases per property, release build"
started=$(date +%s)
PROPTEST_CASES=$cases cargo test --release --lib --features "pg$PG_VERSION pg_test" -- "${targets[@]}" --test-threads 2 \
  | tee target/fuzz.log
properties=$(grep -c '^test .* ok$' target/fuzz.log || true)
log "$properties properties x $cases cases = $((properties * cases)) cases, 0 failures, in $(( $(date +%s) - started )) s"
