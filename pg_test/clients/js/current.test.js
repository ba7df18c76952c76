// What today's supabase-js (2.119) and Supabase's own server do, beyond the
// basics: one socket that a refused join does not stall; the full filter
// grammar and column selection; binary broadcasts from the database;
// replication readiness; wildcard bindings that follow the publication.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { supabase, subscribe, subscribed, inbox, unique, jwt, sleep, tracker, psql } from './helpers.js'

const track = tracker(after)

test('a refused private join leaves heartbeats and the other channels going', async () => {
  const heartbeats = []
  const client = track(supabase(jwt('anon'), {
    heartbeatIntervalMs: 500,
    heartbeatCallback: (status) => heartbeats.push(status),
  }))
  // No policy lets anon read this topic: refused after realtime.join_error_delay.
  const denied = client.channel(unique('refused'), { config: { private: true } })
  const refusal = subscribe(denied)
  const got = inbox()
  const open = client.channel(unique('open'), { config: { broadcast: { self: true, ack: true } } })
    .on('broadcast', { event: 'ping' }, (m) => got.push(m))
  const started = Date.now()
  await subscribed(open)
  assert.ok(Date.now() - started < 900, 'the other channel joined while the refusal waited')
  assert.equal(await open.send({ type: 'broadcast', event: 'ping', payload: { n: 1 } }), 'ok')
  assert.deepEqual((await got.next()).payload, { n: 1 })
  const { status } = await refusal
  assert.equal(status, 'CHANNEL_ERROR')
  await sleep(1500)
  assert.ok(!heartbeats.includes('timeout'), `heartbeats: ${heartbeats}`)
  assert.ok(client.realtime.isConnected(), 'the socket stayed up')
  assert.equal(open.state, 'joined')
})

function table(columns) {
  const name = unique('js_cur').replace('-', '_')
  psql(`CREATE TABLE ${name} (${columns}); ALTER PUBLICATION supabase_realtime ADD TABLE ${name};
        GRANT SELECT ON ${name} TO service_role;`)
  return name
}

test('filters beyond eq: ilike, not.is.null, in with quotes, and AND', async () => {
  const t = table('id int PRIMARY KEY, name text, flag boolean')
  const c = track(supabase(jwt('service_role')))
  const got = { ilike: inbox(), notNull: inbox(), within: inbox(), both: inbox() }
  await subscribed(c.channel(t)
    .on('postgres_changes', { event: 'INSERT', schema: 'public', table: t, filter: 'name=ilike.A%' }, (p) => got.ilike.push(p.new.id))
    .on('postgres_changes', { event: 'INSERT', schema: 'public', table: t, filter: 'flag=not.is.null' }, (p) => got.notNull.push(p.new.id))
    .on('postgres_changes', { event: 'INSERT', schema: 'public', table: t, filter: 'name=in.("x,y",b)' }, (p) => got.within.push(p.new.id))
    .on('postgres_changes', { event: 'INSERT', schema: 'public', table: t, filter: 'id=gt.1,flag=is.true' }, (p) => got.both.push(p.new.id)))
  psql(`INSERT INTO ${t} VALUES (1, 'apple', true), (2, 'x,y', null), (3, 'b', true)`)
  assert.equal(await got.ilike.next(10000), 1)
  assert.deepEqual([await got.notNull.next(), await got.notNull.next()], [1, 3])
  assert.deepEqual([await got.within.next(), await got.within.next()], [2, 3])
  assert.equal(await got.both.next(), 3)
  await sleep(300)
  assert.deepEqual([got.ilike.size, got.notNull.size, got.within.size, got.both.size], [0, 0, 0, 0])
})

test('a malformed filter gets Supabase\'s error in a system message; the channel stays', async () => {
  const t = table('id int PRIMARY KEY')
  const c = track(supabase(jwt('service_role')))
  const system = inbox()
  const ch = c.channel(unique('bad'))
    .on('postgres_changes', { event: '*', schema: 'public', table: t, filter: 'id=in.1' }, () => {})
    .on('system', {}, (m) => system.push(m))
  await subscribed(ch)
  const m = await system.next()
  assert.equal(m.status, 'error')
  assert.equal(m.message, 'Error parsing `filter` params: `in` filter value must be wrapped by parentheses')
  assert.equal(ch.state, 'joined')
})

test('select keeps the listed columns and the key', async () => {
  const t = table('id int PRIMARY KEY, name text, secret text')
  const c = track(supabase(jwt('service_role')))
  const got = inbox()
  await subscribed(c.channel(t)
    .on('postgres_changes', { event: 'INSERT', schema: 'public', table: t, select: ['name'] }, (p) => got.push(p.new)))
  psql(`INSERT INTO ${t} VALUES (1, 'n', 's')`)
  assert.deepEqual(await got.next(10000), { id: 1, name: 'n' })
})

test('realtime.send_binary reaches supabase-js as bytes', async () => {
  const c = track(supabase(jwt('service_role')))
  const topic = unique('js-bin-db')
  const got = inbox()
  await subscribed(c.channel(topic).on('broadcast', { event: 'blob' }, (m) => got.push(m)))
  psql(`SELECT realtime.send_binary('\\x00010203ff'::bytea, 'blob', '${topic}', false)`)
  const m = await got.next(10000)
  assert.deepEqual(new Uint8Array(m.payload), new Uint8Array([0, 1, 2, 3, 255]))
  assert.match(m.meta.id, /^[0-9a-f-]{36}$/)
})

test('replication_ready: announced, and an insert made after it is never missed', async () => {
  const c = track(supabase(jwt('service_role')))
  const topic = unique('js-ready')
  const system = inbox()
  const got = inbox()
  await subscribed(c.channel(topic, { config: { broadcast: { replication_ready: true } } })
    .on('system', {}, (m) => system.push(m))
    .on('broadcast', { event: 'after' }, (m) => got.push(m)))
  const m = await system.next(10000)
  assert.deepEqual([m.status, m.message], ['ok', 'Replication connection established'])
  psql(`SELECT realtime.send('{"n": 1}', 'after', '${topic}', false)`)
  assert.equal((await got.next(10000)).payload.n, 1)
})

test('a table added to the publication reaches a table "*" binding without a rejoin', async () => {
  const schema = unique('js_wc').replace('-', '_')
  psql(`CREATE SCHEMA ${schema}; GRANT USAGE ON SCHEMA ${schema} TO service_role;
        CREATE TABLE ${schema}.first (id int PRIMARY KEY); GRANT SELECT ON ${schema}.first TO service_role;
        ALTER PUBLICATION supabase_realtime ADD TABLE ${schema}.first;`)
  const c = track(supabase(jwt('service_role')))
  const got = inbox()
  await subscribed(c.channel(schema)
    .on('postgres_changes', { event: 'INSERT', schema, table: '*' }, (p) => got.push(p.table)))
  psql(`CREATE TABLE ${schema}.later (id int PRIMARY KEY); GRANT SELECT ON ${schema}.later TO service_role;
        ALTER PUBLICATION supabase_realtime ADD TABLE ${schema}.later;`)
  await sleep(3000)
  psql(`INSERT INTO ${schema}.later VALUES (1)`)
  assert.equal(await got.next(10000), 'later')
})
