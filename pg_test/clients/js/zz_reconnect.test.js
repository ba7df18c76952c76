// Runs last: it restarts the worker, which drops every socket.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { supabase, subscribed, inbox, unique, psql, until } from './helpers.js'

test('reconnects and rejoins after the server closes the socket', async () => {
  const c = supabase()
  const topic = unique('reconnect')
  const got = inbox()
  const statuses = []
  const ch = c.channel(topic, { config: { broadcast: { self: true, ack: true } } })
    .on('broadcast', { event: 'after' }, (m) => got.push(m))
  ch.subscribe((status) => statuses.push(status))
  await until(() => statuses.includes('SUBSCRIBED'))
  const pid = psql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'realtime'")
  psql(`SELECT pg_terminate_backend(${pid})`)
  await until(() => statuses.includes('CHANNEL_ERROR'), 5000)
  // realtime-js reconnects after about a second and rejoins on its own.
  await until(() => statuses.lastIndexOf('SUBSCRIBED') > statuses.indexOf('CHANNEL_ERROR'), 20000)
  assert.equal(await ch.send({ type: 'broadcast', event: 'after', payload: { back: true } }), 'ok')
  assert.deepEqual((await got.next()).payload, { back: true })
  await c.removeAllChannels()
  c.realtime.disconnect()
})
