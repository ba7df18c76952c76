-- Day partitions on UTC days: creation, the midnight boundary, time zones, cleanup.
CREATE EXTENSION realtime;
CREATE FUNCTION pg_temp.partitions(prefix text) RETURNS TABLE (name name, bounds text) LANGUAGE sql AS $$
  SELECT c.relname, pg_get_expr(c.relpartbound, c.oid)
  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
  WHERE i.inhparent = 'realtime.messages'::regclass AND c.relname LIKE prefix || '%'
  ORDER BY 1
$$;

-- One second before UTC midnight: yesterday through today+3.
SELECT * FROM realtime.create_partitions('2030-01-10 23:59:59+00');
SELECT * FROM pg_temp.partitions('messages_2030');
-- At midnight the window moves one day; only the new day is created.
SELECT * FROM realtime.create_partitions('2030-01-11 00:00:00+00');
-- Running again creates nothing.
SELECT count(*) FROM realtime.create_partitions('2030-01-11 00:00:00+00');

-- The day is the UTC day whatever the session time zone: 2030-01-12 08:00 in
-- Kiritimati (UTC+14) is still 2030-01-11 in UTC, so no 2030-01-16 partition yet.
SET TimeZone = 'Pacific/Kiritimati';
SELECT count(*) FROM realtime.create_partitions('2030-01-12 08:00:00+14');
-- 2030-01-11 18:00 in New York (UTC-5) is 2030-01-11 23:00 UTC: nothing new either.
SET TimeZone = 'America/New_York';
SELECT count(*) FROM realtime.create_partitions('2030-01-11 18:00:00-05');
-- One hour later it is 2030-01-12 in UTC.
SELECT * FROM realtime.create_partitions('2030-01-11 19:00:00-05');

-- Rows land in the partition of their UTC day.
INSERT INTO realtime.messages (topic, extension, inserted_at) VALUES
  ('boundary', 'broadcast', '2030-01-10 23:59:59.999999'),
  ('boundary', 'broadcast', '2030-01-11 00:00:00');
SELECT tableoid::regclass AS partition, inserted_at FROM realtime.messages WHERE topic = 'boundary' ORDER BY 2;

-- now() defaults store UTC wall-clock time in any session time zone, so a send
-- from UTC+14 does not land in tomorrow's (UTC) partition.
SET TimeZone = 'Pacific/Kiritimati';
BEGIN;
SELECT realtime.send('{}', 'e', 'from-kiritimati');
SELECT inserted_at = timezone('utc', now()) AS inserted_at_is_utc,
       updated_at = timezone('utc', now()) AS updated_at_is_utc,
       tableoid::regclass::text = 'realtime.messages_' || to_char(timezone('utc', now()), 'YYYY_MM_DD') AS utc_day_partition
FROM realtime.messages WHERE topic = 'from-kiritimati';
COMMIT;
RESET TimeZone;

-- Cleanup: with the default retention of 3 days, at 2030-01-15 12:00 UTC the
-- cutoff is 2030-01-12 12:00, so days ending at or before it go (09, 10, 11)
-- and 2030-01-12, which still holds rows younger than 3 days, stays.
SELECT * FROM realtime.drop_old_partitions('2030-01-15 12:00:00+00') AS dropped WHERE dropped LIKE 'messages_2030%';
SELECT * FROM pg_temp.partitions('messages_2030');
-- The rows of dropped days are gone with them.
SELECT count(*) FROM realtime.messages WHERE topic = 'boundary';

-- Exactly at the boundary: 2030-01-16 00:00 minus 3 days is the end of 2030-01-12.
SELECT * FROM realtime.drop_old_partitions('2030-01-16 00:00:00+00') AS dropped WHERE dropped LIKE 'messages_2030%';
SELECT * FROM realtime.drop_old_partitions('2030-01-16 00:00:00+00') AS dropped WHERE dropped LIKE 'messages_2030%';

-- The retention setting drives it (superusers may set it per session).
SET realtime.retention = '1d';
SHOW realtime.retention;
SELECT * FROM realtime.drop_old_partitions('2030-01-16 00:00:00+00') AS dropped WHERE dropped LIKE 'messages_2030%';
SET realtime.retention = '36h';
SELECT realtime.retention();
RESET realtime.retention;
SELECT realtime.retention();

-- Tables that only look like ours are left alone.
CREATE TABLE realtime.messages_legacy PARTITION OF realtime.messages FOR VALUES FROM ('2000-01-01') TO ('2000-01-02');
SELECT * FROM realtime.drop_old_partitions('2031-01-01 00:00:00+00') AS dropped WHERE dropped NOT LIKE 'messages_20__\_%';
SELECT * FROM pg_temp.partitions('messages_legacy');

-- A day that cannot be created (another partition covers it) is a WARNING, and the other days are still created.
CREATE TABLE realtime.messages_custom PARTITION OF realtime.messages FOR VALUES FROM ('2040-01-01') TO ('2040-01-02 12:00');
SELECT * FROM realtime.create_partitions('2040-01-02 06:00:00+00');

-- Only superusers run maintenance.
SET ROLE anon;
SELECT * FROM realtime.create_partitions();
RESET ROLE;
