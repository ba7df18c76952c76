// /inspector in headless Chromium: join a channel with a service_role key,
// see a message sent with realtime.send, send a broadcast from the page and
// see it come back, see the worker's figures; saves target/inspector.png.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createHmac, randomUUID } from 'node:crypto'
import { execFileSync } from 'node:child_process'
import puppeteer from 'puppeteer-core'

const SECRET = 'super-secret-jwt-token-with-at-least-32-characters-long'
const PG_PORT = process.env.PG_PORT ?? '54399'
const WS_PORT = process.env.WS_PORT ?? '4099'
const SHOT = new URL('../../target/inspector.png', import.meta.url).pathname

const b64 = (x) => Buffer.from(x).toString('base64url')
function jwt(role) {
  const now = Math.floor(Date.now() / 1000)
  const body = `${b64(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))}.${b64(JSON.stringify({ role, iat: now, exp: now + 3600 }))}`
  return `${body}.${createHmac('sha256', SECRET).update(body).digest('base64url')}`
}
const psql = (sql) => execFileSync('psql', ['-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1', '-h', '127.0.0.1', '-p', PG_PORT,
  '-U', 'postgres', '-d', 'postgres', '-c', sql], { encoding: 'utf8' }).trim()
const logHas = (page, text) =>
  page.waitForFunction((t) => document.querySelector('#log').textContent.includes(t), { timeout: 10000 }, text)

test('the inspector joins, shows database and page broadcasts, and the figures', async () => {
  const browser = await puppeteer.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    // Root in CI: Chromium's sandbox needs an unprivileged user.
    args: ['--no-sandbox', '--disable-dev-shm-usage'],
  })
  try {
    const page = await browser.newPage()
    await page.setViewport({ width: 1280, height: 760 })
    const errors = []
    page.on('pageerror', (e) => errors.push(e.message))
    const response = await page.goto(`http://127.0.0.1:${WS_PORT}/inspector`)
    assert.equal(response.status(), 200)
    assert.match(response.headers()['content-security-policy'], /default-src 'none'/)

    const topic = `inspect-${randomUUID().slice(0, 8)}`
    await page.$eval('#topic', (el, v) => { el.value = v }, topic)
    await page.type('#key', jwt('service_role'))
    await page.click('#join')
    await page.waitForFunction(() => document.querySelector('#status').textContent === 'joined', { timeout: 10000 })

    psql(`SELECT realtime.send('{"from": "sql"}'::jsonb, 'from-db', '${topic}', false)`)
    await logHas(page, '"from":"sql"')

    await page.$eval('#event', (el) => { el.value = 'from-page' })
    await page.click('#send')
    await logHas(page, '"event":"from-page"')

    await page.click('#track')
    await logHas(page, 'presence_diff')

    // The figures come from the worker's published snapshot.
    await page.waitForFunction(() => /sockets\s+[1-9]/.test(document.querySelector('#stats').textContent),
      { timeout: 10000 })
    await page.screenshot({ path: SHOT })
    assert.deepEqual(errors, [])

    // Anyone else's key sees the page but not the figures.
    const anon = await fetch(`http://127.0.0.1:${WS_PORT}/api/stats`, { headers: { Authorization: `Bearer ${jwt('anon')}` } })
    assert.equal(anon.status, 403)
  } finally {
    await browser.close()
  }
})
