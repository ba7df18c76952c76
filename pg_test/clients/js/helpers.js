// Shared helpers: JWTs signed with the development secret, psql, clients.
import { createHmac, randomUUID } from 'node:crypto'
import { execFileSync } from 'node:child_process'
import WebSocket from 'ws'
import { createClient } from '@supabase/supabase-js'
import { RealtimeClient } from '@supabase/realtime-js'

export const SECRET = 'super-secret-jwt-token-with-at-least-32-characters-long'
export const PG_PORT = process.env.PG_PORT ?? '54399'
export const WS_PORT = process.env.WS_PORT ?? '4099'
// REALTIME_URL: https://… when the cluster serves TLS (pg_test/tls/run.sh).
export const BASE = process.env.REALTIME_URL ?? `http://127.0.0.1:${WS_PORT}`

const b64 = (x) => Buffer.from(x).toString('base64url')

export function jwt(role = 'anon', { ttl = 3600, ...claims } = {}) {
  const now = Math.floor(Date.now() / 1000)
  const head = b64(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))
  const body = b64(JSON.stringify({ role, iat: now, exp: now + ttl, ...claims }))
  const sig = createHmac('sha256', SECRET).update(`${head}.${body}`).digest('base64url')
  return `${head}.${body}.${sig}`
}

export function psql(sql) {
  return execFileSync('psql', ['-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1', '-h', '127.0.0.1', '-p', PG_PORT,
    '-U', 'postgres', '-d', 'postgres', '-c', sql], {
    encoding: 'utf8', env: { ...process.env, PGOPTIONS: '-c client_min_messages=warning' },
  }).trim()
}

export const unique = (prefix) => `${prefix}-${randomUUID().slice(0, 8)}`

/** supabase-js, as an app would create it (V2 serializer by default). */
export function supabase(key = jwt('anon'), realtime = {}) {
  return createClient(BASE, key, {
    auth: { persistSession: false, autoRefreshToken: false },
    realtime: { transport: WebSocket, ...realtime },
  })
}

/** A bare RealtimeClient, optionally with the V1 serializer. */
export function realtimeClient(key = jwt('anon'), options = {}) {
  return new RealtimeClient(`${BASE.replace(/^http/, 'ws')}/realtime/v1`, {
    params: { apikey: key }, transport: WebSocket, ...options,
  })
}

/** Subscribes; resolves with the first terminal status and its error. */
export function subscribe(channel) {
  return new Promise((resolve) => {
    channel.subscribe((status, err) => {
      if (status !== 'CLOSED' || !channel._settled) {
        channel._settled = true
        resolve({ status, err })
      }
    })
  })
}

export async function subscribed(channel) {
  const { status, err } = await subscribe(channel)
  if (status !== 'SUBSCRIBED') throw new Error(`expected SUBSCRIBED, got ${status}: ${err}`)
  return channel
}

/** A queue of callback arguments with a timed `next()`. */
export function inbox() {
  const items = []
  const waiters = []
  return {
    push: (item) => (waiters.length ? waiters.shift()(item) : items.push(item)),
    next: (ms = 5000) => items.length ? Promise.resolve(items.shift()) : new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`nothing within ${ms} ms`)), ms)
      waiters.push((item) => { clearTimeout(timer); resolve(item) })
    }),
    get size() { return items.length },
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

export async function until(condition, ms = 10000) {
  const end = Date.now() + ms
  while (Date.now() < end) {
    if (await condition()) return
    await sleep(100)
  }
  throw new Error(`condition not met within ${ms} ms`)
}

export function policies() {
  psql(`DROP POLICY IF EXISTS js_read ON realtime.messages;
        DROP POLICY IF EXISTS js_write ON realtime.messages;
        CREATE POLICY js_read ON realtime.messages FOR SELECT TO authenticated
          USING (realtime.topic() LIKE 'js-private:%');
        CREATE POLICY js_write ON realtime.messages FOR INSERT TO authenticated
          WITH CHECK (realtime.topic() LIKE 'js-private:%');`)
}

/** Returns `track(client)`; every tracked client is disconnected once the
 *  file's tests end (a client whose last channel is gone lingers 50 s otherwise). */
export function tracker(after) {
  const clients = []
  after(async () => {
    for (const c of clients) {
      await c.removeAllChannels()
      ;(c.realtime ?? c).disconnect()
    }
  })
  return (c) => (clients.push(c), c)
}
