#!/usr/bin/env bash
# pg_regress goldens against the running test cluster (PG_PORT). Each test
# file creates the extension itself.
#   run.sh            every test in sql/
#   run.sh NAME ...   only these
# On a mismatch, regression.diffs in target/pgN/regress shows the difference.
source "$(dirname "$0")/../../scripts/common.sh"
here=$REPO_ROOT/pg_test/regress
out=$PG_STATE/regress
mkdir -p "$out"
if [ $# -gt 0 ]; then tests=("$@"); else
  mapfile -t tests < <(cd "$here/sql" && ls *.sql | sed 's/\.sql$//')
fi
# Each test file gets a database of its own, so none sees another's leftovers.
# pg_regress fixes the session's TimeZone (PST8PDT) and DateStyle itself.
cd "$out"
failed=()
for t in "${tests[@]}"; do
  "$(dirname "$($PG_CONFIG --pgxs)")/../test/regress/pg_regress" \
    --inputdir="$here" --outputdir="$out" --bindir="$PG_BIN" \
    --host=127.0.0.1 --port="${PG_PORT:?}" --user=postgres \
    --dbname="regress_$t" "$t" || { failed+=("$t"); cat "$out/regression.diffs" >&2; }
done
[ ${#failed[@]} -eq 0 ] || { echo "pg_regress failed: ${failed[*]}" >&2; exit 1; }
