// The packaged extension serves a client: supabase-js (V2) receives a
// database broadcast sent from SQL through the cluster the package's
// library was loaded into.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { supabase, subscribed, inbox, unique, psql, tracker } from '../clients/js/helpers.js'

const track = tracker(after)

test('the packaged worker delivers realtime.send to a supabase-js subscriber', async () => {
  const version = psql("SELECT extversion FROM pg_extension WHERE extname = 'realtime'")
  assert.equal(version, process.env.EXT_VERSION)
  const client = track(supabase())
  const topic = unique('package')
  const got = inbox()
  const channel = client.channel(topic).on('broadcast', { event: 'hello' }, (m) => got.push(m))
  await subscribed(channel)
  psql(`SELECT realtime.send('{"from": "the package"}', 'hello', '${topic}', false)`)
  const m = await got.next()
  assert.equal(m.event, 'hello')
  assert.deepEqual(m.payload.from, 'the package')
})
