// Broadcast and presence with supabase-js (V2) and realtime-js (V1).
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { supabase, realtimeClient, subscribed, subscribe, inbox, unique, jwt, until, policies, psql } from './helpers.js'

const clients = []
const track = (c) => (clients.push(c), c)
after(async () => {
  // Disconnect now: a client whose last channel is gone lingers 50 s otherwise.
  for (const c of clients) {
    await c.removeAllChannels()
    ;(c.realtime ?? c).disconnect()
  }
})

test('broadcast with self and ack, and to a second client, with a UTF-8 payload', async () => {
  const a = track(supabase())
  const b = track(supabase())
  const topic = unique('room')
  const gotA = inbox()
  const gotB = inbox()
  const chA = a.channel(topic, { config: { broadcast: { self: true, ack: true } } })
    .on('broadcast', { event: 'msg' }, (m) => gotA.push(m))
  const chB = b.channel(topic).on('broadcast', { event: 'msg' }, (m) => gotB.push(m))
  await subscribed(chA)
  await subscribed(chB)
  const payload = { text: 'héllo wörld — 你好 🎉', nested: { list: [1, 2, 3] } }
  assert.equal(await chA.send({ type: 'broadcast', event: 'msg', payload }), 'ok')
  assert.deepEqual((await gotA.next()).payload, payload)
  const m = await gotB.next()
  assert.equal(m.event, 'msg')
  assert.deepEqual(m.payload, payload)
})

test('a binary payload arrives as bytes', async () => {
  const a = track(supabase())
  const b = track(supabase())
  const topic = unique('bin')
  const got = inbox()
  const chA = a.channel(topic, { config: { broadcast: { ack: true } } })
  const chB = b.channel(topic).on('broadcast', { event: 'blob' }, (m) => got.push(m))
  await subscribed(chA)
  await subscribed(chB)
  const bytes = new Uint8Array([0, 1, 2, 250, 255])
  assert.equal(await chA.send({ type: 'broadcast', event: 'blob', payload: bytes.buffer }), 'ok')
  const m = await got.next()
  assert.deepEqual(new Uint8Array(m.payload), bytes)
})

test('the V1 serializer works through realtime-js', async () => {
  const a = track(realtimeClient(jwt('anon'), { vsn: '1.0.0' }))
  const b = track(realtimeClient(jwt('anon'), { vsn: '1.0.0' }))
  const topic = unique('v1')
  const got = inbox()
  const chA = a.channel(topic, { config: { broadcast: { ack: true } } })
  const chB = b.channel(topic).on('broadcast', { event: 'v1' }, (m) => got.push(m))
  await subscribed(chA)
  await subscribed(chB)
  assert.equal(await chA.send({ type: 'broadcast', event: 'v1', payload: { ok: 1 } }), 'ok')
  assert.deepEqual((await got.next()).payload, { ok: 1 })
})

test('presence across two clients: sync, join, leave', async () => {
  const a = track(supabase())
  const b = track(supabase())
  const topic = unique('lobby')
  const joins = inbox()
  const leaves = inbox()
  const chA = a.channel(topic, { config: { presence: { key: 'alice' } } })
    .on('presence', { event: 'join' }, ({ key }) => joins.push(key))
    .on('presence', { event: 'leave' }, ({ key }) => leaves.push(key))
  const chB = b.channel(topic, { config: { presence: { key: 'bob' } } }).on('presence', { event: 'sync' }, () => {})
  await subscribed(chA)
  await subscribed(chB)
  assert.equal(await chB.track({ status: 'online' }), 'ok')
  assert.equal(await joins.next(), 'bob')
  assert.equal(chA.presenceState().bob[0].status, 'online')
  assert.ok(chA.presenceState().bob[0].presence_ref)
  assert.equal(await chB.untrack(), 'ok')
  assert.equal(await leaves.next(), 'bob')
  assert.equal(chA.presenceState().bob, undefined)
})

test('private channel: denied without a policy, allowed with one', async () => {
  policies()
  const c = track(supabase(jwt('authenticated', { sub: 'js-user' })))
  const denied = c.channel(unique('secret'), { config: { private: true } })
  const { status, err } = await subscribe(denied)
  assert.equal(status, 'CHANNEL_ERROR')
  assert.match(err.message, /^Unauthorized: You do not have permissions to read from this Channel topic: secret-/)
  await c.removeChannel(denied)
  const got = inbox()
  const allowed = c.channel(unique('js-private:room'), { config: { private: true, broadcast: { self: true, ack: true } } })
    .on('broadcast', { event: 'p' }, (m) => got.push(m))
  await subscribed(allowed)
  assert.equal(await allowed.send({ type: 'broadcast', event: 'p', payload: { secret: true } }), 'ok')
  assert.deepEqual((await got.next()).payload, { secret: true })
})

test('both HTTP endpoints: send() before joining, and httpSend()', async () => {
  const sender = track(supabase())
  const receiver = track(supabase())
  const topic = unique('rest')
  const got = inbox()
  await subscribed(receiver.channel(topic).on('broadcast', { event: '*' }, (m) => got.push(m)))
  const unjoined = sender.channel(topic)
  // Not joined: realtime-js falls back to POST /api/broadcast.
  assert.equal(await unjoined.send({ type: 'broadcast', event: 'batch', payload: { n: 1 } }), 'ok')
  const first = await got.next()
  assert.equal(first.event, 'batch')
  assert.deepEqual(first.payload, { n: 1 })
  // httpSend posts to /api/broadcast/:topic/events/:event.
  assert.deepEqual(await unjoined.httpSend('single', { n: 2 }), { success: true })
  const second = await got.next()
  assert.equal(second.event, 'single')
  assert.deepEqual(second.payload, { n: 2 })
})

test('a refreshed token is taken, and when it expires the channel closes', async () => {
  const c = track(realtimeClient(jwt('anon')))
  const topic = unique('token')
  const statuses = inbox()
  const system = inbox()
  const ch = c.channel(topic).on('system', {}, (m) => system.push(m))
  ch.subscribe((status) => statuses.push(status))
  assert.equal(await statuses.next(), 'SUBSCRIBED')
  await c.setAuth(jwt('anon', { ttl: 2 }))
  const m = await system.next(6000)
  assert.equal(m.status, 'error')
  assert.match(m.message, /^Token has expired \d+ seconds ago$/)
  assert.equal(await statuses.next(), 'CLOSED')
  await until(() => ch.state === 'closed')
})

test('realtime.send from SQL reaches supabase-js, public and private', async () => {
  policies()
  // One client per channel: a client reuses its channel object for a topic.
  const publicClient = track(supabase(jwt('authenticated', { sub: 'js-db' })))
  const privateClient = track(supabase(jwt('authenticated', { sub: 'js-db' })))
  const name = unique('js-private:db')
  const got = inbox()
  await subscribed(publicClient.channel(name).on('broadcast', { event: 'from_sql' }, (m) => got.push(['public', m])))
  await subscribed(privateClient.channel(name, { config: { private: true } })
    .on('broadcast', { event: 'from_sql' }, (m) => got.push(['private', m])))
  psql(`SELECT realtime.send('{"a": 1}', 'from_sql', '${name}', false)`)
  psql(`SELECT realtime.send('{"b": 2}', 'from_sql', '${name}', true)`)
  // Two sockets: the order between them is not defined.
  const received = Object.fromEntries([await got.next(10000), await got.next(10000)])
  assert.equal(received.public.payload.a, 1)
  assert.equal(received.public.payload.id, received.public.meta.id)
  assert.equal(received.private.payload.b, 2)
})

test('a trigger calling broadcast_changes reaches supabase-js', async () => {
  const table = unique('js_todos').replace('-', '_')
  psql(`CREATE TABLE ${table} (id int PRIMARY KEY, title text);
        CREATE FUNCTION ${table}_fn() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM realtime.broadcast_changes('${table}', TG_OP, TG_OP, TG_TABLE_NAME, TG_TABLE_SCHEMA, NEW, OLD, TG_LEVEL); RETURN NULL; END $$;
        CREATE TRIGGER t AFTER INSERT OR UPDATE OR DELETE ON ${table} FOR EACH ROW EXECUTE FUNCTION ${table}_fn();`)
  const c = track(supabase(jwt('service_role')))
  const got = inbox()
  await subscribed(c.channel(table, { config: { private: true } }).on('broadcast', { event: '*' }, (m) => got.push(m)))
  psql(`INSERT INTO ${table} VALUES (1, 'hello')`)
  const m = await got.next(10000)
  assert.equal(m.event, 'INSERT')
  assert.deepEqual(m.payload.record, { id: 1, title: 'hello' })
  assert.equal(m.payload.old_record, null)
  psql(`DROP TABLE ${table}; DROP FUNCTION ${table}_fn()`)
})
