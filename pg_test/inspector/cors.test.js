// httpSend() from a web page of another origin, in headless Chromium: the
// page (served here on a port of its own) loads supabase-js's browser build
// (from pg_test/clients, installed before this suite runs) with the
// development publishable key, subscribes over WebSocket, sends over REST
// (a CORS preflight, then the POST), and gets its message back.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { createServer } from 'node:http'
import puppeteer from 'puppeteer-core'

const WS_PORT = process.env.WS_PORT ?? '4099'
const BASE = `http://127.0.0.1:${WS_PORT}`
const PUBLISHABLE = process.env.DEV_PUBLISHABLE_KEY ?? 'sb_publishable_realtime_dev_0123456789'
const BUNDLE = new URL('../clients/node_modules/@supabase/supabase-js/dist/umd/supabase.js', import.meta.url)

const PAGE = `<!doctype html><meta charset="utf-8"><title>an app</title>
<script src="/supabase.js"></script>
<script>
window.roundTrip = (base, key, topic) => new Promise((resolve, reject) => {
  setTimeout(() => reject(new Error('no broadcast back within 15 s')), 15000)
  const listener = supabase.createClient(base, key)
  listener.channel(topic).on('broadcast', { event: 'from-page' }, (m) => resolve({ payload: m.payload, sent: window.sent }))
    .subscribe(async (status) => {
      if (status !== 'SUBSCRIBED') return
      window.sent = await supabase.createClient(base, key).channel(topic).httpSend('from-page', { n: 3 })
    })
})
</script>`

test('httpSend() from a page of another origin reaches a subscriber', async () => {
  const server = createServer((req, res) => {
    if (req.url === '/supabase.js') {
      res.writeHead(200, { 'content-type': 'text/javascript' })
      return res.end(readFileSync(BUNDLE))
    }
    res.writeHead(200, { 'content-type': 'text/html' })
    res.end(PAGE)
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  const browser = await puppeteer.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-dev-shm-usage'],
  })
  try {
    const page = await browser.newPage()
    const errors = []
    page.on('pageerror', (e) => errors.push(e.message))
    await page.goto(`http://127.0.0.1:${server.address().port}/`)
    const topic = `cors-${randomUUID().slice(0, 8)}`
    const got = await page.evaluate((b, k, t) => window.roundTrip(b, k, t), BASE, PUBLISHABLE, topic)
    assert.deepEqual(got.payload, { n: 3 })
    assert.equal(got.sent?.success, true, JSON.stringify(got.sent))
    assert.deepEqual(errors, [])
  } finally {
    await browser.close()
    server.close()
  }
})
