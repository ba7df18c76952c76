// The peer: what people build instead of Realtime. A `ws` server that answers
// Phoenix V2 joins and heartbeats, relays client broadcasts to the other
// members of a topic, and relays `NOTIFY realtime, '{topic, event, payload}'`
// to the members of `realtime:<topic>`. Each message is encoded once.
//   node server.js PORT PG_PORT
import { WebSocketServer } from 'ws'
import pg from 'pg'

const [port, pgPort] = process.argv.slice(2).map(Number)
const topics = new Map() // topic -> Set(ws)

const members = (topic) => topics.get(topic) ?? topics.set(topic, new Set()).get(topic)

// The frame is encoded once, to a Buffer every member's send shares.
function fanOut(topic, frame, except) {
  const data = Buffer.from(frame)
  for (const ws of topics.get(topic) ?? []) if (ws !== except && ws.readyState === 1) ws.send(data, { binary: false })
}

const wss = new WebSocketServer({ port, host: '127.0.0.1' })
wss.on('connection', (ws) => {
  const joined = new Map() // topic -> self
  ws.on('message', (data, isBinary) => {
    if (isBinary) return
    let msg
    try { msg = JSON.parse(data) } catch { return ws.close(1007, 'invalid JSON') }
    const [joinRef, ref, topic, event, payload] = msg
    const reply = (response) => ws.send(JSON.stringify([joinRef, ref, topic, 'phx_reply', { status: 'ok', response }]))
    if (topic === 'phoenix' && event === 'heartbeat') return reply({})
    if (event === 'phx_join') {
      members(topic).add(ws)
      joined.set(topic, payload?.config?.broadcast?.self === true)
      return reply({ postgres_changes: [] })
    }
    if (event === 'broadcast' && joined.has(topic)) {
      const frame = JSON.stringify([null, null, topic, 'broadcast', payload])
      fanOut(topic, frame, joined.get(topic) ? null : ws)
    }
  })
  ws.on('close', () => { for (const topic of joined.keys()) topics.get(topic)?.delete(ws) })
})

const client = new pg.Client({ host: '127.0.0.1', port: pgPort, user: 'postgres', database: 'postgres' })
await client.connect()
client.on('notification', ({ payload }) => {
  const { topic, event, payload: body } = JSON.parse(payload)
  const full = `realtime:${topic}`
  fanOut(full, JSON.stringify([null, null, full, 'broadcast', { type: 'broadcast', event, payload: body }]))
})
await client.query('LISTEN realtime')
console.log(`peer listening on ${port}, pid ${process.pid}`)
