// Postgres Changes with supabase-js: bindings, filters, RLS under auth.uid().
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { supabase, subscribed, inbox, unique, jwt, psql, tracker } from './helpers.js'

const track = tracker(after)

function table(columns) {
  const name = unique('js_pc').replace('-', '_')
  psql(`CREATE TABLE ${name} (${columns}); ALTER PUBLICATION supabase_realtime ADD TABLE ${name};
        GRANT SELECT ON ${name} TO service_role, authenticated;`)
  return name
}

test('a filtered and an unfiltered binding: INSERT, UPDATE, DELETE', async () => {
  const t = table('id int PRIMARY KEY, title text')
  const c = track(supabase(jwt('service_role')))
  const all = inbox()
  const onlyTwo = inbox()
  await subscribed(c.channel(t)
    .on('postgres_changes', { event: '*', schema: 'public', table: t }, (p) => all.push(p))
    .on('postgres_changes', { event: 'INSERT', schema: 'public', table: t, filter: 'id=eq.2' }, (p) => onlyTwo.push(p)))
  psql(`INSERT INTO ${t} VALUES (1, 'a'), (2, 'b')`)
  psql(`UPDATE ${t} SET title = 'c' WHERE id = 1`)
  psql(`DELETE FROM ${t} WHERE id = 2`)
  const [i1, i2, u, d] = [await all.next(10000), await all.next(), await all.next(), await all.next()]
  assert.equal(i1.eventType, 'INSERT')
  assert.deepEqual(i1.new, { id: 1, title: 'a' })
  assert.equal(i2.new.id, 2)
  assert.equal(u.eventType, 'UPDATE')
  assert.deepEqual(u.new, { id: 1, title: 'c' })
  assert.deepEqual(u.old, { id: 1 })
  assert.equal(d.eventType, 'DELETE')
  assert.deepEqual(d.old, { id: 2 })
  assert.equal(d.schema, 'public')
  assert.equal(d.table, t)
  assert.match(d.commit_timestamp, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/)
  const two = await onlyTwo.next()
  assert.deepEqual(two.new, { id: 2, title: 'b' })
  assert.equal(onlyTwo.size, 0)
})

test('two users each see only their own rows under an auth.uid() policy', async () => {
  const t = table('id int PRIMARY KEY, owner uuid')
  psql(`ALTER TABLE ${t} ENABLE ROW LEVEL SECURITY;
        CREATE POLICY own ON ${t} FOR SELECT TO authenticated USING (owner = auth.uid());`)
  const alice = '00000000-0000-4000-8000-0000000000a1'
  const bob = '00000000-0000-4000-8000-0000000000b1'
  const got = { [alice]: inbox(), [bob]: inbox() }
  for (const sub of [alice, bob]) {
    const c = track(supabase(jwt('anon')))
    await c.realtime.setAuth(jwt('authenticated', { sub }))
    await subscribed(c.channel(t).on('postgres_changes', { event: 'INSERT', schema: 'public', table: t }, (p) => got[sub].push(p)))
  }
  psql(`INSERT INTO ${t} VALUES (1, '${alice}'), (2, '${bob}')`)
  assert.equal((await got[alice].next(10000)).new.id, 1)
  assert.equal((await got[bob].next(10000)).new.id, 2)
  await new Promise((r) => setTimeout(r, 500))
  assert.equal(got[alice].size + got[bob].size, 0)
})

test('a binding on a table outside the publication reports a system error', async () => {
  const c = track(supabase(jwt('service_role')))
  const system = inbox()
  await subscribed(c.channel(unique('nope'))
    .on('postgres_changes', { event: '*', schema: 'public', table: 'doesnotexist' }, () => {})
    .on('system', {}, (m) => system.push(m)))
  const m = await system.next()
  assert.equal(m.status, 'error')
  assert.match(m.message, /^Unable to subscribe to changes with given parameters/)
})

test('generated columns: stored ones carry their value; 18 virtual ones are null (not in WAL)', async () => {
  const major = Number(psql('SHOW server_version_num')) / 10000 | 0
  const t = table(`id int PRIMARY KEY, price int, doubled int GENERATED ALWAYS AS (price * 2) STORED${
    major >= 18 ? ', tripled int GENERATED ALWAYS AS (price * 3) VIRTUAL' : ''}`)
  const c = track(supabase(jwt('service_role')))
  const got = inbox()
  await subscribed(c.channel(t).on('postgres_changes', { event: 'INSERT', schema: 'public', table: t }, (p) => got.push(p)))
  psql(`INSERT INTO ${t} (id, price) VALUES (1, 5)`)
  const m = await got.next(10000)
  const want = major >= 18 ? { id: 1, price: 5, doubled: 10, tripled: null } : { id: 1, price: 5, doubled: 10 }
  assert.deepEqual(m.new, want)
  // Read back, the virtual column has its value: only the change payload lacks it.
  if (major >= 18) assert.equal(psql(`SELECT tripled FROM ${t}`), '15')
})
