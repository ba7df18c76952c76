// What today's supabase-js (2.119) and Supabase's own server do, beyond the
// basics: one socket that a refused join does not stall.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { supabase, subscribe, subscribed, inbox, unique, jwt, sleep, tracker } from './helpers.js'

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
