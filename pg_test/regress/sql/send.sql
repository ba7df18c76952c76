-- realtime.send: one broadcast row per call; never raises.
CREATE EXTENSION realtime;

-- The id rule: an object payload gets "id" = the row's id unless it has one.
SELECT realtime.send('{"a":1}', 'e', 'room:1', false);
SELECT topic, event, extension, private, payload - 'id' AS payload,
       (payload->>'id')::uuid = id AS payload_id_is_row_id
FROM realtime.messages WHERE topic = 'room:1';

-- private defaults to true.
SELECT realtime.send('{"b":2}', 'e', 'room:2');
SELECT private FROM realtime.messages WHERE topic = 'room:2';

-- A payload that has an id keeps it; the row gets its own.
SELECT realtime.send('{"id":"mine","c":3}', 'e', 'room:3');
SELECT payload, payload->>'id' <> id::text AS row_has_own_id FROM realtime.messages WHERE topic = 'room:3';

-- Other JSON values pass through untouched.
SELECT realtime.send('[1,2,3]', 'e', 'room:array');
SELECT realtime.send('"text"', 'e', 'room:string');
SELECT realtime.send('42', 'e', 'room:number');
SELECT realtime.send('null', 'e', 'room:json-null');
SELECT realtime.send(NULL, 'e', 'room:sql-null');
SELECT topic, payload FROM realtime.messages WHERE topic LIKE 'room:%' AND topic NOT IN ('room:1', 'room:2', 'room:3')
ORDER BY topic;

-- Nested objects and UTF-8 survive.
SELECT realtime.send('{"nested":{"k":[1,{"x":"é中"}]}}', 'e', 'room:utf8');
SELECT payload->'nested' FROM realtime.messages WHERE topic = 'room:utf8';

-- Each call is its own row, and the topic is set for the transaction only.
BEGIN;
SELECT realtime.send('{}', 'first', 'room:tx');
SELECT realtime.topic();
SELECT realtime.send('{}', 'second', 'room:tx2');
SELECT realtime.topic();
COMMIT;
SELECT realtime.topic() IS NULL AS topic_cleared;

-- A rolled-back send leaves nothing.
BEGIN;
SELECT realtime.send('{}', 'e', 'room:rollback');
ROLLBACK;
SELECT count(*) FROM realtime.messages WHERE topic = 'room:rollback';

-- Runs as the caller: without an INSERT policy, authenticated is denied by RLS.
-- The statement goes on with a WARNING naming the cause.
SET ROLE authenticated;
SELECT realtime.send('{"x":1}', 'e', 'denied', true);
SELECT 'statement went on' AS after;
RESET ROLE;
SELECT count(*) FROM realtime.messages WHERE topic = 'denied';

-- An INSERT policy that reads realtime.topic() admits its topic only.
CREATE POLICY "authenticated sends to allowed:*" ON realtime.messages FOR INSERT TO authenticated
  WITH CHECK (realtime.topic() LIKE 'allowed:%' AND extension = 'broadcast');
SET ROLE authenticated;
SELECT realtime.send('{"x":1}', 'e', 'allowed:1', true);
SELECT realtime.send('{"x":1}', 'e', 'other:1', true);
RESET ROLE;
SELECT topic FROM realtime.messages WHERE topic IN ('allowed:1', 'other:1');

-- service_role bypasses RLS.
SET ROLE service_role;
SELECT realtime.send('{"x":1}', 'e', 'service', true);
RESET ROLE;
SELECT count(*) FROM realtime.messages WHERE topic = 'service';

-- A null topic warns.
SELECT realtime.send('{}', 'e', NULL);

-- A missing partition: the send warns and the caller goes on.
DO $$
DECLARE today text := 'messages_' || to_char(timezone('utc', now()), 'YYYY_MM_DD');
BEGIN
  EXECUTE format('ALTER EXTENSION realtime DROP TABLE realtime.%I', today);
  EXECUTE format('DROP TABLE realtime.%I', today);
END $$;
SELECT realtime.send('{"lost":true}', 'e', 'room:no-partition');
SELECT 'statement went on' AS after;
-- Recreating the partitions heals it.
SELECT count(*) AS recreated FROM realtime.create_partitions();
SELECT realtime.send('{"lost":false}', 'e', 'room:no-partition');
SELECT payload->'lost' FROM realtime.messages WHERE topic = 'room:no-partition';
