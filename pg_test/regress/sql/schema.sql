-- What CREATE EXTENSION installs.
CREATE EXTENSION realtime;

-- The three Supabase roles; service_role bypasses RLS.
SELECT rolname, rolcanlogin, rolbypassrls FROM pg_roles
WHERE rolname IN ('anon', 'authenticated', 'service_role') ORDER BY rolname;

SELECT r.rolname, has_schema_privilege(r.rolname, 'realtime', 'USAGE') AS usage,
       has_table_privilege(r.rolname, 'realtime.messages', 'SELECT, INSERT, UPDATE') AS rw,
       has_table_privilege(r.rolname, 'realtime.messages', 'DELETE') AS can_delete
FROM pg_roles r WHERE r.rolname IN ('anon', 'authenticated', 'service_role') ORDER BY 1;

-- The messages table: columns, partitioning, RLS on with no policies.
SELECT attname, format_type(atttypid, atttypmod) AS type, attnotnull,
       pg_get_expr(d.adbin, d.adrelid) AS default
FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE attrelid = 'realtime.messages'::regclass AND attnum > 0 AND NOT attisdropped
ORDER BY attnum;
SELECT pg_get_partkeydef('realtime.messages'::regclass);
SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'realtime.messages'::regclass AND contype <> 'n';
SELECT relrowsecurity FROM pg_class WHERE oid = 'realtime.messages'::regclass;
SELECT count(*) AS policies FROM pg_policies WHERE schemaname = 'realtime';
SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'realtime' AND tablename = 'messages' ORDER BY 1;

-- Five day partitions exist at once: yesterday through today+3 (UTC).
SELECT count(*) AS partitions,
       min(c.relname) = 'messages_' || to_char(timezone('utc', now())::date - 1, 'YYYY_MM_DD') AS from_yesterday,
       max(c.relname) = 'messages_' || to_char(timezone('utc', now())::date + 3, 'YYYY_MM_DD') AS to_today_plus_3
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'realtime.messages'::regclass;

-- The publication Postgres Changes reads, empty.
SELECT pubname, puballtables, (SELECT count(*) FROM pg_publication_tables t WHERE t.pubname = p.pubname) AS tables
FROM pg_publication p WHERE pubname = 'supabase_realtime';

-- Functions and their signatures.
SELECT p.proname, pg_get_function_identity_arguments(p.oid) AS args, pg_get_function_result(p.oid) AS result,
       p.prosecdef AS security_definer
FROM pg_proc p WHERE p.pronamespace = 'realtime'::regnamespace ORDER BY 1, 2;

-- Maintenance functions are for superusers and the worker only.
SELECT has_function_privilege('anon', 'realtime.create_partitions(timestamptz)', 'EXECUTE') AS anon_creates,
       has_function_privilege('anon', 'realtime.drop_old_partitions(timestamptz)', 'EXECUTE') AS anon_drops,
       has_function_privilege('anon', 'realtime.send(jsonb, text, text, boolean)', 'EXECUTE') AS anon_sends;

-- The worker's statistics views: their columns, readable by pg_read_all_stats only.
SELECT c.relname, string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum) AS columns
FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0
WHERE c.relnamespace = 'realtime'::regnamespace AND c.relkind = 'v' GROUP BY 1 ORDER BY 1;
SELECT v, has_table_privilege('anon', v, 'SELECT') AS anon, has_table_privilege('pg_read_all_stats', v, 'SELECT') AS monitor
FROM unnest(ARRAY['realtime.stats', 'realtime.connections', 'realtime.channels']) v ORDER BY 1;
SELECT has_function_privilege('anon', 'realtime.stats_json()', 'EXECUTE') AS anon_reads_stats;

-- Settings and their defaults.
SELECT name, boot_val, unit, context FROM pg_settings WHERE name LIKE 'realtime.%' ORDER BY name;
SHOW realtime.retention;

-- The JWT secret is hidden from everyone but superusers.
SET ROLE anon;
SHOW realtime.jwt_secret;
RESET ROLE;

-- realtime.topic() is null until a topic is set, and reads the transaction's setting.
SELECT realtime.topic() IS NULL AS no_topic;
BEGIN;
SELECT set_config('realtime.topic', 'room:1', true) IS NOT NULL;
SELECT realtime.topic();
COMMIT;
SELECT realtime.topic() IS NULL AS no_topic_after_commit;

-- auth.uid(), auth.role() and auth.jwt() read the claims, for Supabase-style policies.
SELECT p.proname, pg_get_function_result(p.oid) FROM pg_proc p WHERE p.pronamespace = 'auth'::regnamespace ORDER BY 1;
SELECT auth.uid() IS NULL AS no_uid, auth.role() IS NULL AS no_role, auth.jwt() IS NULL AS no_jwt;
BEGIN;
SELECT set_config('request.jwt.claims', '{"sub":"00000000-0000-4000-8000-000000000001","role":"authenticated"}', true) IS NOT NULL;
SELECT auth.uid(), auth.role(), auth.jwt() ->> 'sub' AS sub;
-- The single claims set by the worker win, as in Supabase.
SELECT set_config('request.jwt.claim.sub', '00000000-0000-4000-8000-000000000002', true) IS NOT NULL;
SELECT auth.uid();
ROLLBACK;

-- Dropping and recreating the extension works, and keeps the roles.
DROP EXTENSION realtime;
SELECT count(*) AS roles_kept FROM pg_roles WHERE rolname IN ('anon', 'authenticated', 'service_role');
CREATE EXTENSION realtime;
SELECT count(*) AS partitions FROM pg_inherits WHERE inhparent = 'realtime.messages'::regclass;

-- Every function of the extension resolves names in pg_catalog alone, whatever
-- the caller's search_path: none is listed here.
SELECT p.oid::regprocedure AS unpinned
FROM pg_proc p
JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'realtime'
WHERE NOT coalesce('search_path=pg_catalog, pg_temp' = ANY (p.proconfig), false)
ORDER BY 1;

-- realtime.messages and its partitions belong to realtime_admin; realtime_worker,
-- which may become every client role, owns nothing.
SELECT DISTINCT c.relowner::regrole AS owner FROM pg_class c
WHERE c.relnamespace = 'realtime'::regnamespace AND c.relname LIKE 'messages%';
SELECT count(*) AS owned_by_realtime_worker FROM pg_class WHERE relowner = 'realtime_worker'::regrole;
SELECT count(*) AS functions_of_realtime_worker FROM pg_proc WHERE proowner = 'realtime_worker'::regrole;

-- Secrets show as a mask to anyone but a superuser, and pg_settings lists none.
SET ROLE pg_monitor;
SHOW realtime.metrics_token;
SELECT count(*) AS listed FROM pg_settings WHERE name IN ('realtime.jwt_secret', 'realtime.metrics_token',
  'realtime.primary_conninfo', 'realtime.jwt_jwks');
RESET ROLE;
