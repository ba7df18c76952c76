-- The SQL surface of Supabase Realtime, kept compatible so existing triggers and
-- RLS policies work unchanged. The schema itself comes from `schema = realtime`
-- in the control file.

-- Without shared_preload_libraries there is no worker, and loading the
-- library now would end the session: say so before anything loads it.
DO $preloaded$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_settings
                 WHERE name = 'realtime.database' AND context = 'postmaster') THEN
    RAISE EXCEPTION 'realtime must be loaded when the server starts'
      USING ERRCODE = 'object_not_in_prerequisite_state',
            HINT = 'Add ''realtime'' to shared_preload_libraries (with wal_level = logical) and restart PostgreSQL.';
  END IF;
END
$preloaded$;

-- Roles that Supabase policies name. Roles are cluster-wide, so create only the missing ones.
DO $roles$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'anon') THEN
    CREATE ROLE anon NOLOGIN NOINHERIT;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'authenticated') THEN
    CREATE ROLE authenticated NOLOGIN NOINHERIT;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
    CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
  END IF;
END
$roles$;

GRANT USAGE ON SCHEMA realtime TO anon, authenticated, service_role;

-- Owns realtime.messages and its partitions, so that the worker can run the
-- table's own code (defaults, triggers, checks its owner adds) as the
-- table's owner and nobody else while it writes probe rows. NOLOGIN; the
-- database's owner is made a member (below) so it can write policies.
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

-- The role the worker acts as for clients: authorization probes, Postgres
-- Changes checks and filters, replay. Not a superuser and cannot log in; a
-- member of exactly the roles clients may assume (anon, authenticated,
-- service_role and realtime.allowed_roles, kept in step by the worker through
-- realtime.sync_worker_roles), so a token naming any other role is refused by
-- Postgres itself. A role with superuser-like powers (a superuser, or a
-- member of pg_execute_server_program, pg_read_server_files or
-- pg_write_server_files) is never one, whatever its name. It owns nothing.
DO $worker$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'realtime_worker') THEN
    CREATE ROLE realtime_worker NOLOGIN NOINHERIT;
  END IF;
END
$worker$;
GRANT USAGE ON SCHEMA realtime TO realtime_worker;
GRANT realtime_worker, realtime_admin TO realtime_relay;

-- Timestamps are UTC wall-clock time whatever the session TimeZone is, because
-- partitions are cut on UTC days: a plain now() default would route a row written
-- from a UTC+14 session into tomorrow's partition.
CREATE TABLE realtime.messages (
  topic text NOT NULL,
  extension text NOT NULL,
  payload jsonb,
  event text,
  private boolean DEFAULT false,
  updated_at timestamp NOT NULL DEFAULT timezone('utc', now()),
  inserted_at timestamp NOT NULL DEFAULT timezone('utc', now()),
  id uuid NOT NULL DEFAULT gen_random_uuid(),
  -- realtime.send_binary's payload; a message has one or the other.
  binary_payload bytea,
  PRIMARY KEY (id, inserted_at),
  CONSTRAINT messages_payload_exclusive CHECK (payload IS NULL OR binary_payload IS NULL) NOT VALID
) PARTITION BY RANGE (inserted_at);

-- No policies ship: private channels are denied until the user writes some.
ALTER TABLE realtime.messages ENABLE ROW LEVEL SECURITY;

-- Serves replay of private broadcasts (newest first per topic). Not ON ONLY, so
-- every partition gets it.
CREATE INDEX messages_inserted_at_topic_index ON realtime.messages (inserted_at DESC, topic)
  WHERE extension = 'broadcast' AND private IS TRUE;

GRANT SELECT, INSERT, UPDATE ON realtime.messages TO anon, authenticated, service_role;
ALTER TABLE realtime.messages OWNER TO realtime_admin;

-- A database owner that is not a superuser (Supabase's migrations run as
-- one) writes the policies of realtime.messages, which takes ownership.
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

CREATE FUNCTION realtime.topic() RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT nullif(current_setting('realtime.topic', true), '')::text $$;

-- Stores one broadcast (a JSON or a binary payload) for realtime.send and
-- realtime.send_binary. Never raises: a broadcast must not abort the caller's
-- statement (a cancel, such as the caller's statement_timeout, still
-- cancels). Runs as the caller (not SECURITY DEFINER), so the caller's INSERT
-- policies apply.
--
-- The first send of a transaction goes through an exception block that
-- turns a failure (an RLS denial, a missing partition, a lock timeout) into a
-- WARNING. Later ones by a caller to whom no row-level security applies (a
-- superuser, the owner, a BYPASSRLS role such as service_role) insert
-- directly when this transaction already inserted into today's partition:
-- it then holds the locks an insert takes, so nothing it could wait for or
-- be refused remains, and it saves a subtransaction per call, which logical
-- decoding pays for dearly (a transaction of a million sends would
-- otherwise carry a million of them). The mark is transaction-local, so a
-- rolled-back subtransaction takes it away with its locks.
CREATE FUNCTION realtime.insert_broadcast(
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

-- A JSON broadcast; an object payload gets the message's "id".
CREATE FUNCTION realtime.send(payload jsonb, event text, topic text, private boolean DEFAULT true)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  message_id uuid := gen_random_uuid();
BEGIN
  -- Only an object can carry an id; other JSON values pass through untouched.
  IF jsonb_typeof(payload) = 'object' AND NOT payload ? 'id' THEN
    payload := payload || jsonb_build_object('id', message_id);
  END IF;
  PERFORM realtime.insert_broadcast(message_id, payload, NULL, event, topic, private);
END
$$;

-- A binary broadcast: V2 clients receive the bytes as they are (a kind-4
-- frame with binary encoding); the V1 serializer cannot carry bytes, so V1
-- clients do not receive it, as with Supabase.
CREATE FUNCTION realtime.send_binary(payload bytea, event text, topic text, private boolean DEFAULT true)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  PERFORM realtime.insert_broadcast(gen_random_uuid(), NULL, payload, event, topic, private);
END
$$;

-- For row-level triggers:
--   PERFORM realtime.broadcast_changes('topic', TG_OP, TG_OP, TG_TABLE_NAME,
--                                      TG_TABLE_SCHEMA, NEW, OLD, TG_LEVEL);
CREATE FUNCTION realtime.broadcast_changes(
  topic_name text, event_name text, operation text, table_name text, table_schema text,
  new record, old record, level text DEFAULT 'ROW')
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF level = 'STATEMENT' THEN
    RAISE EXCEPTION 'Failed to process the row: function can only be triggered for each row, not for each statement';
  END IF;
  IF operation IS NULL OR operation NOT IN ('INSERT', 'UPDATE', 'DELETE') THEN
    RAISE EXCEPTION 'Failed to process the row: Unexpected operation type: %', coalesce(operation, 'NULL');
  END IF;
  PERFORM realtime.send(
    jsonb_build_object('old_record', old, 'record', new, 'operation', operation,
                       'table', table_name, 'schema', table_schema),
    event_name, topic_name);
END
$$;

-- One partition per UTC day, named realtime.messages_YYYY_MM_DD, from the day
-- before as_of through three days after it. Returns the partitions it created.
-- A day that cannot be created is reported as a WARNING and the others still are.
CREATE FUNCTION realtime.create_partitions(as_of timestamptz DEFAULT now())
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

-- The retention setting (realtime.retention, default 3 days) as an interval.
CREATE FUNCTION realtime.retention() RETURNS interval
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT coalesce(nullif(current_setting('realtime.retention', true), ''), '3d')::interval $$;

-- Drops the day partitions whose every row is older than the retention: a day
-- goes once its end is at least `retention` before as_of. Returns what it dropped.
CREATE FUNCTION realtime.drop_old_partitions(as_of timestamptz DEFAULT now())
RETURNS SETOF text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  cutoff timestamp := timezone('utc', as_of - realtime.retention());
  partition_name text;
  day date;
BEGIN
  FOR partition_name IN
    SELECT c.relname
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'realtime.messages'::regclass
      AND c.relname ~ '^messages_[0-9]{4}_[0-9]{2}_[0-9]{2}$'
    ORDER BY c.relname
  LOOP
    BEGIN
      day := to_date(substr(partition_name, 10), 'YYYY_MM_DD');
    EXCEPTION WHEN OTHERS THEN
      CONTINUE; -- not a date: not ours to drop
    END;
    CONTINUE WHEN (day + 1)::timestamp > cutoff;
    -- Partitions made by CREATE EXTENSION belong to the extension, which would
    -- refuse the DROP; release them first.
    IF EXISTS (SELECT 1 FROM pg_depend
               WHERE classid = 'pg_class'::regclass
                 AND objid = format('realtime.%I', partition_name)::regclass
                 AND refclassid = 'pg_extension'::regclass AND deptype = 'e') THEN
      EXECUTE format('ALTER EXTENSION realtime DROP TABLE realtime.%I', partition_name);
    END IF;
    EXECUTE format('DROP TABLE IF EXISTS realtime.%I', partition_name);
    RETURN NEXT partition_name;
  END LOOP;
END
$$;

-- Wakes the worker when a transaction that wrote messages commits.
CREATE FUNCTION realtime.wake_worker() RETURNS trigger
LANGUAGE c SET search_path = pg_catalog, pg_temp AS 'MODULE_PATHNAME', 'realtime_wake_worker';
CREATE TRIGGER wake_worker AFTER INSERT ON realtime.messages
  FOR EACH STATEMENT EXECUTE FUNCTION realtime.wake_worker();

-- Makes realtime_worker a member of exactly anon, authenticated, service_role
-- and the roles named (those that exist). Run by the worker at start and on
-- reload of realtime.allowed_roles. Returns the roles it may assume.
CREATE FUNCTION realtime.sync_worker_roles(allowed text[])
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
REVOKE ALL ON FUNCTION realtime.sync_worker_roles(text[]) FROM PUBLIC;
-- The defaults that qualify, until the worker syncs realtime.allowed_roles
-- (only granted here: the roles are the cluster's, and a worker serving
-- another database may have granted more).
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

REVOKE ALL ON FUNCTION realtime.create_partitions(timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION realtime.drop_old_partitions(timestamptz) FROM PUBLIC;

-- So realtime.send works as soon as the extension exists.
SELECT count(*) FROM realtime.create_partitions();

-- Supabase-style policies call auth.uid(), auth.role() and auth.jwt(). Where no
-- auth schema provides them (plain Postgres), they read the claims the worker
-- sets while it checks a subscriber.
DO $auth$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = 'auth') THEN
    CREATE SCHEMA auth;
  END IF;
  IF to_regprocedure('auth.uid()') IS NULL THEN
    CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $f$
      SELECT nullif(coalesce(current_setting('request.jwt.claim.sub', true),
                             current_setting('request.jwt.claims', true)::jsonb ->> 'sub'), '')::uuid
    $f$;
  END IF;
  IF to_regprocedure('auth.role()') IS NULL THEN
    CREATE FUNCTION auth.role() RETURNS text LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $f$
      SELECT nullif(coalesce(current_setting('request.jwt.claim.role', true),
                             current_setting('request.jwt.claims', true)::jsonb ->> 'role'), '')::text
    $f$;
  END IF;
  IF to_regprocedure('auth.jwt()') IS NULL THEN
    CREATE FUNCTION auth.jwt() RETURNS jsonb LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $f$
      SELECT coalesce(nullif(current_setting('request.jwt.claim', true), ''),
                      nullif(current_setting('request.jwt.claims', true), ''))::jsonb
    $f$;
  END IF;
END
$auth$;
GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;

-- Postgres Changes reads the tables of this publication. Users add tables with
-- ALTER PUBLICATION supabase_realtime ADD TABLE ...
DO $publication$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = 'supabase_realtime') THEN
    CREATE PUBLICATION supabase_realtime;
  END IF;
END
$publication$;
