-- realtime 0.1.0 -> 0.2.0: the trust work. Every function pins its
-- search_path; realtime.messages and its partitions belong to
-- realtime_admin (the database owner, if not a superuser, becomes a member,
-- so it can write policies) and no longer to realtime_worker; a default
-- client role with superuser-like powers is never granted to the worker;
-- realtime.send's fast path no longer raises into the caller; standby checks
-- carry request.headers; realtime.stats has cumulative counters.
\echo Use "ALTER EXTENSION realtime UPDATE TO '0.2.0'" to load this file. \quit

DO $admin$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'realtime_admin') THEN
    CREATE ROLE realtime_admin NOLOGIN NOINHERIT;
  END IF;
END
$admin$;
GRANT USAGE ON SCHEMA realtime TO realtime_admin;

-- What a hot standby's worker connects to the primary as (realtime.primary_conninfo)
-- to relay its clients' broadcasts and run their private-channel checks
-- there: a member of realtime_worker (so it may act as the client roles) and
-- of realtime_admin (so its probe rows run the table's code as the table's
-- owner), allowed to call the three bus functions, and nothing else. NOLOGIN
-- until a DBA gives it LOGIN and a password. Never a superuser.
DO $relay$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'realtime_relay') THEN
    CREATE ROLE realtime_relay NOLOGIN NOINHERIT;
  END IF;
END
$relay$;
GRANT USAGE ON SCHEMA realtime TO realtime_relay;


GRANT realtime_worker, realtime_admin TO realtime_relay;
GRANT EXECUTE ON FUNCTION realtime.bus_relay(text[]) TO realtime_relay;

ALTER TABLE realtime.messages OWNER TO realtime_admin;
DO $partitions$
DECLARE
  partition regclass;
BEGIN
  FOR partition IN SELECT i.inhrelid::regclass FROM pg_catalog.pg_inherits i
                   WHERE i.inhparent = 'realtime.messages'::regclass LOOP
    EXECUTE pg_catalog.format('ALTER TABLE %s OWNER TO realtime_admin', partition);
  END LOOP;
END
$partitions$;

DO $owner$
DECLARE
  owner name := (SELECT d.datdba::pg_catalog.regrole::pg_catalog.text FROM pg_catalog.pg_database d
                 WHERE d.datname = pg_catalog.current_database());
BEGIN
  IF NOT (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = owner) THEN
    EXECUTE pg_catalog.format('GRANT realtime_admin TO %I', owner);
  END IF;
END
$owner$;


CREATE OR REPLACE FUNCTION realtime.insert_broadcast(
  message_id uuid, payload jsonb, binary_payload bytea, event text, topic text, private boolean)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  today text := 'messages_' || to_char(timezone('utc', now()), 'YYYY_MM_DD');
BEGIN
  IF topic IS NULL THEN
    RAISE WARNING 'WarnSendingBroadcastMessage: topic must not be null';
    RETURN;
  END IF;
  -- Policies read the topic through realtime.topic().
  PERFORM set_config('realtime.topic', topic, true);
  IF current_setting('realtime.sent_into', true) = today
     AND NOT row_security_active('realtime.messages') THEN
    INSERT INTO realtime.messages (id, payload, binary_payload, event, topic, private, extension)
    VALUES (message_id, payload, binary_payload, event, topic, private, 'broadcast');
    RETURN;
  END IF;
  BEGIN
    INSERT INTO realtime.messages (id, payload, binary_payload, event, topic, private, extension)
    VALUES (message_id, payload, binary_payload, event, topic, private, 'broadcast');
    IF to_regclass('realtime.' || today) IS NOT NULL THEN
      PERFORM set_config('realtime.sent_into', today, true);
    END IF;
  EXCEPTION
    WHEN check_violation THEN
      -- Raised by partition routing when the day's partition is missing.
      RAISE WARNING 'WarnSendingBroadcastMessage: %', SQLERRM
        USING HINT = 'The realtime worker creates day partitions ahead; SELECT realtime.create_partitions() creates them now.';
    WHEN OTHERS THEN
      RAISE WARNING 'WarnSendingBroadcastMessage: %', SQLERRM;
  END;
END
$$;

CREATE OR REPLACE FUNCTION realtime.create_partitions(as_of timestamptz DEFAULT now())
RETURNS SETOF text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  today date := timezone('utc', as_of)::date;
  day date;
  partition_name text;
BEGIN
  FOR offset_days IN -1..3 LOOP
    day := today + offset_days;
    partition_name := 'messages_' || to_char(day, 'YYYY_MM_DD');
    CONTINUE WHEN to_regclass(format('realtime.%I', partition_name)) IS NOT NULL;
    BEGIN
      EXECUTE format('CREATE TABLE realtime.%I PARTITION OF realtime.messages FOR VALUES FROM (%L) TO (%L)',
                     partition_name, day::timestamp, (day + 1)::timestamp);
      -- Owned like the table, whoever runs this.
      EXECUTE format('ALTER TABLE realtime.%I OWNER TO %I', partition_name,
                     (SELECT c.relowner::regrole::text FROM pg_class c WHERE c.oid = 'realtime.messages'::regclass));
      RETURN NEXT partition_name;
    EXCEPTION
      -- Another session created it first.
      WHEN duplicate_table OR unique_violation THEN NULL;
      WHEN OTHERS THEN
        RAISE WARNING 'PartitionCreationFailed: realtime.%: %', partition_name, SQLERRM;
    END;
  END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION realtime.sync_worker_roles(allowed text[])
RETURNS SETOF text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  wanted text[] := coalesce(array(
    SELECT r.rolname::text FROM pg_roles r
    WHERE r.rolname = ANY (array['anon', 'authenticated', 'service_role'] || allowed)
      AND NOT r.rolsuper
      AND NOT pg_has_role(r.oid, 'pg_execute_server_program', 'MEMBER')
      AND NOT pg_has_role(r.oid, 'pg_read_server_files', 'MEMBER')
      AND NOT pg_has_role(r.oid, 'pg_write_server_files', 'MEMBER')
    ORDER BY r.rolname), '{}');
  member text;
BEGIN
  FOR member IN
    SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid
    WHERE m.member = 'realtime_worker'::regrole AND r.rolname <> ALL (wanted)
  LOOP
    EXECUTE format('REVOKE %I FROM realtime_worker', member);
  END LOOP;
  FOREACH member IN ARRAY wanted LOOP
    IF NOT pg_has_role('realtime_worker', member, 'MEMBER') THEN
      EXECUTE format('GRANT %I TO realtime_worker', member);
    END IF;
  END LOOP;
  RETURN QUERY SELECT unnest(wanted);
END
$$;

ALTER FUNCTION realtime.topic() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION realtime.send(jsonb, text, text, boolean) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION realtime.send_binary(bytea, text, text, boolean) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION realtime.broadcast_changes(text, text, text, text, text, record, record, text)
  SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION realtime.retention() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION realtime.drop_old_partitions(timestamptz) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION realtime.wake_worker() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION realtime.stats_json() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION realtime.node() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION realtime.bus_relay(text[]) SET search_path = pg_catalog, pg_temp;

-- The standby checks carry the request's x- headers (request.headers) too.
DROP FUNCTION realtime.bus_read_permissions(text, text, text, text, boolean);
DROP FUNCTION realtime.bus_write_permission(text, text, text, text, text);
CREATE FUNCTION realtime."bus_read_permissions"(
	"role" TEXT, /* String */
	"claims" TEXT, /* String */
	"sub" TEXT, /* Option < String > */
	"topic" TEXT, /* String */
	"presence" bool, /* bool */
	"headers" TEXT DEFAULT NULL /* Option < String > */
) RETURNS TABLE (
	"broadcast" bool,  /* bool */
	"presence" bool  /* bool */
)
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'bus_read_permissions_wrapper';
CREATE FUNCTION realtime."bus_write_permission"(
	"role" TEXT, /* String */
	"claims" TEXT, /* String */
	"sub" TEXT, /* Option < String > */
	"topic" TEXT, /* String */
	"extension" TEXT, /* String */
	"headers" TEXT DEFAULT NULL /* Option < String > */
) RETURNS bool /* bool */
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'bus_write_permission_wrapper';
REVOKE ALL ON FUNCTION realtime.bus_read_permissions(text, text, text, text, boolean, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION realtime.bus_write_permission(text, text, text, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION realtime.bus_read_permissions(text, text, text, text, boolean, text) TO realtime_relay;
GRANT EXECUTE ON FUNCTION realtime.bus_write_permission(text, text, text, text, text, text) TO realtime_relay;

-- Cumulative counters and stats_reset, after the columns 0.1.0 had.
CREATE OR REPLACE VIEW realtime.stats AS
SELECT to_timestamp((s->>'taken_at_ms')::float8 / 1000) AS taken_at,
       (s->>'sockets')::bigint AS sockets,
       (s->>'channels')::bigint AS channels,
       (s->>'joins_per_second')::float8 AS joins_per_second,
       (s->>'messages_in_per_second')::float8 AS messages_in_per_second,
       (s->>'messages_out_per_second')::float8 AS messages_out_per_second,
       (s->>'bytes_out_per_second')::float8 AS bytes_out_per_second,
       (s->>'decode_lag_bytes')::bigint AS decode_lag_bytes,
       (s->>'decode_lag_ms')::float8 AS decode_lag_ms,
       (s->>'decode_idle_ms')::bigint AS decode_idle_ms,
       (s#>>'{commit_to_send,p50_ms}')::float8 AS commit_to_send_p50_ms,
       (s#>>'{commit_to_send,p90_ms}')::float8 AS commit_to_send_p90_ms,
       (s#>>'{commit_to_send,p99_ms}')::float8 AS commit_to_send_p99_ms,
       (s#>>'{commit_to_send,count}')::bigint AS commits_sent_last_minute,
       (s->>'rls_checks_per_second')::float8 AS rls_checks_per_second,
       (s#>>'{rls_check,p50_ms}')::float8 AS rls_check_p50_ms,
       (s#>>'{rls_check,p99_ms}')::float8 AS rls_check_p99_ms,
       (s#>>'{rls_check,count}')::bigint AS rls_checks_last_minute,
       (s->>'queued_bytes')::bigint AS queued_bytes,
       (s->>'max_memory_bytes')::bigint AS max_memory_bytes,
       (s->>'worker_rss_bytes')::bigint AS worker_rss_bytes,
       s->'refused_joins' AS refused_joins,
       s->'limit_trips' AS limit_trips,
       (s->>'connections_left_out')::bigint AS connections_left_out,
       (s->>'channels_left_out')::bigint AS channels_left_out,
       to_timestamp((s->>'stats_reset_ms')::float8 / 1000) AS stats_reset,
       (s#>>'{totals,joins}')::bigint AS joins_total,
       (s#>>'{totals,messages_in}')::bigint AS messages_in_total,
       (s#>>'{totals,messages_out}')::bigint AS messages_out_total,
       (s#>>'{totals,bytes_out}')::bigint AS bytes_out_total,
       (s#>>'{totals,database_messages}')::bigint AS database_messages_total,
       (s#>>'{totals,rls_checks}')::bigint AS rls_checks_total
FROM (SELECT realtime.stats_json()::jsonb AS s) snapshot
WHERE s IS NOT NULL;

-- The auth helpers, where this extension made them.
DO $auth$
DECLARE
  helper regprocedure;
BEGIN
  FOR helper IN SELECT d.objid::regprocedure FROM pg_catalog.pg_depend d
                JOIN pg_catalog.pg_proc p ON p.oid = d.objid
                WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.deptype = 'e'
                  AND d.refobjid = (SELECT e.oid FROM pg_catalog.pg_extension e WHERE e.extname = 'realtime')
                  AND p.pronamespace = 'auth'::regnamespace LOOP
    EXECUTE pg_catalog.format('ALTER FUNCTION %s SET search_path = pg_catalog, pg_temp', helper);
  END LOOP;
END
$auth$;

-- A default role with superuser-like powers is no longer the worker's
-- (the worker revokes it when it next syncs its roles); those that qualify are.
DO $grant$
DECLARE
  member text;
BEGIN
  FOR member IN
    SELECT r.rolname FROM pg_catalog.pg_roles r
    WHERE r.rolname IN ('anon', 'authenticated', 'service_role')
      AND NOT r.rolsuper
      AND NOT pg_catalog.pg_has_role(r.oid, 'pg_execute_server_program', 'MEMBER')
      AND NOT pg_catalog.pg_has_role(r.oid, 'pg_read_server_files', 'MEMBER')
      AND NOT pg_catalog.pg_has_role(r.oid, 'pg_write_server_files', 'MEMBER')
  LOOP
    EXECUTE pg_catalog.format('GRANT %I TO realtime_worker', member);
  END LOOP;
END
$grant$;
