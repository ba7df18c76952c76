// A Supabase app of today with supabase-js: opaque sb_ keys in place of JWTs,
// for the socket (publishable: anon) and for REST (secret: service_role).
// The browser side (CORS from another origin) is in pg_test/inspector.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { supabase, subscribed, inbox, unique, jwt, psql, tracker, policies } from './helpers.js'

const track = tracker(after)
// As scripts/common.sh maps them in realtime.api_keys.
const PUBLISHABLE = process.env.DEV_PUBLISHABLE_KEY ?? 'sb_publishable_realtime_dev_0123456789'
const SECRET_KEY = process.env.DEV_SECRET_KEY ?? 'sb_secret_realtime_dev_0123456789abcdef'

test('createClient with a publishable key: broadcast with ack, and Postgres Changes', async () => {
  const c = track(supabase(PUBLISHABLE))
  const got = inbox()
  const ch = c.channel(unique('sb'), { config: { broadcast: { self: true, ack: true } } })
    .on('broadcast', { event: 'hi' }, (m) => got.push(m))
  await subscribed(ch)
  assert.equal(await ch.send({ type: 'broadcast', event: 'hi', payload: { n: 1 } }), 'ok')
  assert.deepEqual((await got.next()).payload, { n: 1 })

  const t = unique('js_sb').replace('-', '_')
  psql(`CREATE TABLE ${t} (id int PRIMARY KEY, title text); ALTER PUBLICATION supabase_realtime ADD TABLE ${t};
        GRANT SELECT ON ${t} TO anon;`)
  const changes = inbox()
  await subscribed(c.channel(unique('sb-pc'))
    .on('postgres_changes', { event: 'INSERT', schema: 'public', table: t }, (p) => changes.push(p)))
  psql(`INSERT INTO ${t} VALUES (1, 'from a publishable client')`)
  assert.deepEqual((await changes.next(10000)).new, { id: 1, title: 'from a publishable client' })
})

test('a secret key sends over REST to a private channel', async () => {
  policies()
  const topic = unique('js-private:sb')
  const reader = track(supabase(jwt('authenticated', { sub: 'sb-reader' })))
  const got = inbox()
  await subscribed(reader.channel(topic, { config: { private: true } })
    .on('broadcast', { event: 'from-server' }, (m) => got.push(m)))
  psql(`DROP POLICY IF EXISTS js_service_write ON realtime.messages;
        CREATE POLICY js_service_write ON realtime.messages FOR INSERT TO service_role WITH CHECK (true)`)
  const server = track(supabase(SECRET_KEY))
  const sent = await server.channel(topic, { config: { private: true } }).httpSend('from-server', { n: 2 })
  assert.equal(sent.success, true, JSON.stringify(sent))
  assert.deepEqual((await got.next()).payload, { n: 2 })
})

test('an unknown sb_ key ends in CHANNEL_ERROR, not a hang', async () => {
  const c = track(supabase('sb_publishable_not_one_of_ours_000000'))
  const status = await new Promise((resolve) => {
    c.channel(unique('unknown')).subscribe((s) => { if (s !== 'SUBSCRIBED') resolve(s) })
  })
  assert.match(status, /CHANNEL_ERROR|TIMED_OUT|CLOSED/)
})
