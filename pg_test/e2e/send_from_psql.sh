#!/usr/bin/env bash
# After `make run`: a send from psql leaves a row whose payload carries its id.
source "$(dirname "$0")/../../scripts/common.sh"
psql=(psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "${PG_PORT:?}" -U postgres -d postgres)
topic="room:e2e-$$-$RANDOM"
"${psql[@]}" -c "select realtime.send('{\"a\":1}', 'e', '$topic', false)"
got=$("${psql[@]}" -c "select (payload->>'id')::uuid = id and payload->>'a' = '1' and not private
                          from realtime.messages where topic = '$topic'")
[ "$got" = t ] || { echo "FAIL: expected one row for $topic with its id in the payload, got '$got'" >&2; exit 1; }
echo "ok: send from psql stored a row whose payload carries its id"
