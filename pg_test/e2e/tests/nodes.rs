//! A primary and two hot standbys, started by `pg_test/nodes/run.sh` (ports in
//! `PRIMARY_PG_PORT`, `PRIMARY_WS_PORT`, `STANDBY1_…`, `STANDBY2_…`): every
//! node says what it is in `realtime.node()`, and a database broadcast sent
//! on the primary reaches the sockets of every node through `realtime.bus`,
//! once and in commit order; a standby whose replay is paused delivers it
//! when replay resumes; Postgres Changes reach a standby's subscribers, checked
//! there under RLS, and a recovery conflict cancels such a check without
//! losing the change or the worker; client broadcasts reach every node once, from a standby
//! (relayed through the primary) and from the primary; after a failover the
//! sockets stay open, announce the new epoch, and the new primary's sends
//! reach both nodes.

use realtime_e2e::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

struct Node {
    name: &'static str,
    pg: String,
    ws: String,
}

impl Node {
    fn from_env(name: &'static str, prefix: &str) -> Node {
        let port = |kind: &str| {
            let var = format!("{prefix}_{kind}_PORT");
            std::env::var(&var).unwrap_or_else(|_| {
                panic!("{var} is not set: these tests run against the nodes pg_test/nodes/run.sh starts")
            })
        };
        Node { name, pg: port("PG"), ws: port("WS") }
    }

    /// Runs SQL as the superuser on this node; returns psql's unaligned output.
    fn psql(&self, sql: &str) -> String {
        try_psql_at(&self.pg, sql)
            .unwrap_or_else(|e| panic!("psql on the {} (port {}) failed on {sql}: {e}", self.name, self.pg))
    }

    fn node(&self) -> NodeRow {
        let row = self.psql("SELECT role, system_identifier, timeline, bus_lag_bytes FROM realtime.node()");
        let f: Vec<&str> = row.split('|').collect();
        assert_eq!(f.len(), 4, "realtime.node() on the {} is one row of four columns: {row:?}", self.name);
        let number = |s: &str| s.parse::<i64>().unwrap_or_else(|e| panic!("{s:?} in {row:?}: {e}"));
        NodeRow {
            role: f[0].into(),
            system_identifier: f[1].into(),
            timeline: number(f[2]),
            // NULL (psql prints nothing) until the worker's first snapshot.
            bus_lag_bytes: (!f[3].is_empty()).then(|| number(f[3])),
        }
    }

    /// An anon V2 socket on this node's worker, joined to the public `topic`.
    async fn subscriber(&self, topic: &str) -> Client {
        let url = ws_url_at(&self.ws, Vsn::V2, &jwt("anon"));
        let mut c = Client::connect_url(Vsn::V2, &url).await;
        c.join_ok(&format!("realtime:{topic}"), json!({})).await;
        c
    }
}

/// An anon socket on each node, joined to the public `topic`.
async fn subscribers(nodes: &[Node], topic: &str) -> Vec<Client> {
    let mut sockets = Vec::new();
    for node in nodes {
        sockets.push(node.subscriber(topic).await);
    }
    sockets
}

#[derive(Debug)]
struct NodeRow {
    role: String,
    system_identifier: String,
    timeline: i64,
    bus_lag_bytes: Option<i64>,
}

fn primary() -> Node {
    Node::from_env("primary", "PRIMARY")
}

fn standby1() -> Node {
    Node::from_env("standby1", "STANDBY1")
}

fn standby2() -> Node {
    Node::from_env("standby2", "STANDBY2")
}

/// Polls `done` for up to `DB_WAIT`; fails naming what it waited for.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + DB_WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "waited {DB_WAIT:?} for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `count` sends to `topic` with `n` = 0, 1, …, each in a transaction of its own.
fn sends(topic: &str, count: usize) -> String {
    format!(
        "DO $$ BEGIN FOR i IN 0..{} LOOP
           PERFORM realtime.send(jsonb_build_object('n', i), 'e', '{topic}', false);
           COMMIT;
         END LOOP; END $$",
        count - 1
    )
}

/// The next `count` database broadcasts on this node's socket; asserts they
/// are on `topic` with `n` = 0, 1, … in order, and returns their payloads.
async fn receive_in_order(node: &Node, c: &mut Client, topic: &str, count: usize) -> Vec<Value> {
    let mut payloads = Vec::new();
    for want in 0..count {
        let m = loop {
            let m = c.try_recv(DB_WAIT).await.unwrap_or_else(|| {
                panic!("the {}: broadcast n = {want} of {count} did not arrive within {DB_WAIT:?}", node.name)
            });
            if m.event == "broadcast" {
                break m;
            }
        };
        assert_eq!(m.topic, format!("realtime:{topic}"), "the {}: {m:?}", node.name);
        assert_eq!(m.payload["event"], "e", "the {}: {m:?}", node.name);
        assert_eq!(m.payload["payload"]["n"], want as i64, "the {}: out of order: {m:?}", node.name);
        payloads.push(m.payload["payload"].clone());
    }
    payloads
}

#[test]
fn every_node_says_what_it_is() {
    let nodes = [primary(), standby1(), standby2()];
    let on_primary = nodes[0].node();
    assert_eq!(on_primary.role, "primary", "{on_primary:?}");
    assert!(on_primary.timeline >= 1, "{on_primary:?}");
    assert_eq!(on_primary.system_identifier, nodes[0].psql("SELECT system_identifier::text FROM pg_control_system()"));
    for s in &nodes[1..] {
        let row = s.node();
        assert_eq!(row.role, "standby", "the {}: {row:?}", s.name);
        assert_eq!(row.system_identifier, on_primary.system_identifier, "the {}: {row:?}", s.name);
        assert_eq!(row.timeline, on_primary.timeline, "the {}: {row:?}", s.name);
    }
    // The primary's bus lag is 0; a standby's bus reader catches up with
    // what the standby replayed.
    for n in &nodes {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let row = n.node();
            if let Some(lag) = row.bus_lag_bytes {
                assert!(lag >= 0, "the {}: {row:?}", n.name);
                assert!(lag == 0 || row.role == "standby", "the {}: {row:?}", n.name);
                if lag == 0 {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "the {}: bus_lag_bytes is not 0 after 10 s: {row:?}", n.name);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[tokio::test]
async fn a_send_on_the_primary_reaches_every_node_once_in_order() {
    let topic = unique("bus");
    let nodes = [primary(), standby1(), standby2()];
    let mut sockets = subscribers(&nodes, &topic).await;
    nodes[0].psql(&sends(&topic, 50));
    let mut on_primary = None;
    for (node, c) in nodes.iter().zip(&mut sockets) {
        let payloads = receive_in_order(node, c, &topic, 50).await;
        // The same messages everywhere: the ids the primary stored too.
        match &on_primary {
            None => on_primary = Some(payloads),
            Some(expected) => assert_eq!(&payloads, expected, "the {} and the primary differ", node.name),
        }
    }
    for c in &mut sockets {
        c.expect_silence(Duration::from_secs(1)).await;
    }
}

/// WAL replay paused on a standby; resumed when dropped, so a failing test
/// leaves no standby paused behind it.
struct ReplayPaused<'a>(&'a Node);

impl<'a> ReplayPaused<'a> {
    fn on(node: &'a Node) -> ReplayPaused<'a> {
        let guard = ReplayPaused(node);
        node.psql("SELECT pg_wal_replay_pause()");
        // 'pause requested' until the startup process reaches its next record,
        // which it then holds: either way nothing sent from now on is replayed.
        let state = node.psql("SELECT pg_get_wal_replay_pause_state()");
        assert_ne!(state, "not paused", "the {}", node.name);
        guard
    }
}

impl Drop for ReplayPaused<'_> {
    fn drop(&mut self) {
        if let Err(e) = try_psql_at(&self.0.pg, "SELECT pg_wal_replay_resume()") {
            eprintln!("resuming replay on the {} failed: {e}", self.0.name);
        }
    }
}

#[tokio::test]
async fn a_paused_standby_holds_its_messages_and_resume_delivers_them_in_order() {
    let topic = unique("buspause");
    let (p, s1, s2) = (primary(), standby1(), standby2());
    let mut on1 = s1.subscriber(&topic).await;
    let mut on2 = s2.subscriber(&topic).await;
    let paused = ReplayPaused::on(&s2);
    p.psql(&sends(&topic, 20));
    let delivered = receive_in_order(&s1, &mut on1, &topic, 20).await;
    on2.expect_silence(Duration::from_millis(1500)).await;
    drop(paused);
    assert_eq!(receive_in_order(&s2, &mut on2, &topic, 20).await, delivered);
    on1.expect_silence(Duration::from_secs(1)).await;
    on2.expect_silence(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn postgres_changes_on_a_standby_are_checked_there_as_each_subscriber() {
    let (p, s1) = (primary(), standby1());
    let t = unique("pcbus").replace('-', "_");
    p.psql(&format!(
        "CREATE TABLE {t} (id int PRIMARY KEY, owner uuid, body text);
         ALTER TABLE {t} ENABLE ROW LEVEL SECURITY; GRANT SELECT ON {t} TO authenticated;
         CREATE POLICY own ON {t} FOR SELECT TO authenticated USING (owner = auth.uid());
         ALTER PUBLICATION supabase_realtime ADD TABLE {t};"
    ));
    wait_until(&format!("standby1 to replay CREATE TABLE {t}"), || {
        s1.psql(&format!("SELECT to_regclass('{t}') IS NOT NULL")) == "t"
    });
    let (alice, bob) = ("00000000-0000-4000-8000-00000000000a", "00000000-0000-4000-8000-00000000000b");
    let topic = format!("realtime:{t}");
    let binding = json!([{"event": "*", "schema": "public", "table": t}]);
    let mut users = Vec::new();
    for sub in [alice, bob] {
        let url = ws_url_at(&s1.ws, Vsn::V2, &jwt_with("authenticated", json!({"sub": sub})));
        let mut c = Client::connect_url(Vsn::V2, &url).await;
        subscribed_changes(&mut c, &topic, binding.clone()).await;
        users.push(c);
    }
    p.psql(&format!("INSERT INTO {t} VALUES (1, '{alice}', 'for alice'), (2, '{bob}', 'for bob')"));
    assert_eq!(next_change(&mut users[0]).await["data"]["record"]["body"], "for alice");
    assert_eq!(next_change(&mut users[1]).await["data"]["record"]["body"], "for bob");
    // A delete cannot be checked (the row is gone): both get its key.
    p.psql(&format!("DELETE FROM {t} WHERE id = 1"));
    for c in &mut users {
        let deleted = next_change(c).await;
        assert_eq!(deleted["data"]["type"], "DELETE", "{deleted}");
        assert_eq!(deleted["data"]["old_record"], json!({"id": 1}), "{deleted}");
    }
    for c in &mut users {
        c.expect_silence(Duration::from_secs(1)).await;
    }
}

/// A node's setting changed with `ALTER SYSTEM` and a reload; reset when dropped.
struct NodeSetting<'a>(&'a Node, &'static str);

impl<'a> NodeSetting<'a> {
    fn set(node: &'a Node, name: &'static str, value: &str) -> NodeSetting<'a> {
        node.psql(&format!("ALTER SYSTEM SET {name} = '{value}'"));
        node.psql("SELECT pg_reload_conf()");
        NodeSetting(node, name)
    }
}

impl Drop for NodeSetting<'_> {
    fn drop(&mut self) {
        for sql in [format!("ALTER SYSTEM RESET {}", self.1), "SELECT pg_reload_conf()".into()] {
            if let Err(e) = try_psql_at(&self.0.pg, &sql) {
                eprintln!("{sql} on the {} failed: {e}", self.0.name);
            }
        }
    }
}

#[tokio::test]
async fn a_recovery_conflict_cancels_a_check_and_the_change_still_arrives() {
    let (p, s2) = (primary(), standby2());
    let t = unique("pcconflict").replace('-', "_");
    // Each check of a row sleeps, holding the table's lock on the standby.
    p.psql(&format!(
        "CREATE TABLE {t} (id int PRIMARY KEY, body text);
         ALTER TABLE {t} ENABLE ROW LEVEL SECURITY; GRANT SELECT ON {t} TO authenticated;
         CREATE POLICY slow ON {t} FOR SELECT TO authenticated USING (pg_sleep(0.6) IS NOT NULL);
         ALTER PUBLICATION supabase_realtime ADD TABLE {t};"
    ));
    wait_until(&format!("standby2 to replay CREATE TABLE {t}"), || {
        s2.psql(&format!("SELECT to_regclass('{t}') IS NOT NULL")) == "t"
    });
    let _delay = NodeSetting::set(&s2, "max_standby_streaming_delay", "100ms");
    let worker = "SELECT pid FROM pg_stat_activity WHERE backend_type = 'realtime'";
    let (pid, conflicts_before) = (s2.psql(worker), lock_conflicts(&s2));
    let nodes_dir = std::env::var("NODES_DIR").expect("NODES_DIR is set by pg_test/nodes/run.sh");
    let log = ServerLog::mark_in(&std::path::Path::new(&nodes_dir).join("standby2"));
    let url =
        ws_url_at(&s2.ws, Vsn::V2, &jwt_with("authenticated", json!({"sub": "00000000-0000-4000-8000-00000000000c"})));
    let mut c = Client::connect_url(Vsn::V2, &url).await;
    let topic = format!("realtime:{t}");
    subscribed_changes(&mut c, &topic, json!([{"event": "INSERT", "schema": "public", "table": t}])).await;
    // While standby2's worker checks row 1, the primary takes the table's
    // ACCESS EXCLUSIVE lock: replaying it conflicts with the check.
    p.psql(&format!("INSERT INTO {t} VALUES (1, 'first')"));
    std::thread::sleep(Duration::from_millis(200));
    p.psql(&format!("BEGIN; LOCK TABLE {t} IN ACCESS EXCLUSIVE MODE; COMMIT;"));
    p.psql(&format!("INSERT INTO {t} VALUES (2, 'second')"));
    for body in ["first", "second"] {
        let change = next_change(&mut c).await;
        assert_eq!(change["data"]["record"]["body"], body, "{change}");
    }
    c.expect_silence(Duration::from_secs(1)).await;
    assert!(
        log.since().contains("a recovery conflict cancelled routing"),
        "standby2's worker says of no cancelled routing: the test did not cancel the worker's check"
    );
    // PostgreSQL 15 counts the conflict it cancels; 17+ notes it behind the
    // cancel the worker asks for, and ignores it outside the transaction.
    if s2.psql("SHOW server_version_num").parse::<u32>().unwrap() < 170000 {
        assert!(lock_conflicts(&s2) > conflicts_before, "standby2 reports no lock conflict");
    }
    assert_eq!(s2.psql(worker), pid, "standby2's worker was restarted by the conflict");
}

/// Statements standby2 cancelled for lock conflicts in this database.
fn lock_conflicts(node: &Node) -> i64 {
    let count = node.psql("SELECT confl_lock FROM pg_stat_database_conflicts WHERE datname = current_database()");
    count.parse().unwrap_or_else(|e| panic!("confl_lock {count:?} on the {}: {e}", node.name))
}

/// standby1's bus slot: its restart position, or None when there is none.
fn bus_slot(s: &Node) -> Option<u64> {
    let at = s.psql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'realtime_bus'");
    (!at.is_empty()).then(|| lsn(&at))
}

#[tokio::test]
async fn a_restarted_standby_worker_delivers_what_was_replayed_while_it_was_down() {
    let (p, s1) = (primary(), standby1());
    let topic = unique("busslot");
    // The slot follows what standby1 delivers.
    let mut before = s1.subscriber(&topic).await;
    p.psql(&sends(&topic, 3));
    receive_in_order(&s1, &mut before, &topic, 3).await;
    let delivered = lsn(&s1.psql("SELECT pg_last_wal_replay_lsn()"));
    wait_until("standby1's bus slot to reach what it delivered", || bus_slot(&s1).is_some_and(|at| at >= delivered));
    // Down, while the primary sends; back, the sockets that rejoin within
    // realtime.restart_grace get what was replayed meanwhile.
    s1.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'realtime'");
    wait_until("standby1's worker to close its port", || !listening(&s1.ws));
    p.psql(&sends(&topic, 5));
    wait_until("standby1's worker to come back", || listening(&s1.ws));
    let mut after = s1.subscriber(&topic).await;
    receive_in_order(&s1, &mut after, &topic, 5).await;
    after.expect_silence(Duration::from_secs(1)).await;
    // The primary holds no such slot: it is a standby's.
    assert_eq!(bus_slot(&p), None);
}

/// The next `count` broadcasts on `c`, whole (payload and meta).
async fn broadcasts(node: &Node, c: &mut Client, count: usize) -> Vec<Value> {
    let mut got = Vec::new();
    while got.len() < count {
        let m = c
            .try_recv(DB_WAIT)
            .await
            .unwrap_or_else(|| panic!("the {}: {} of {count} broadcasts arrived: {got:?}", node.name, got.len()));
        if m.event == "broadcast" {
            got.push(m.payload);
        }
    }
    got
}

#[tokio::test]
async fn a_client_resumes_on_another_node_from_its_last_position() {
    let (p, s1, s2) = (primary(), standby1(), standby2());
    let topic = unique("resume");
    let system_identifier = p.node().system_identifier;
    // On standby1, the client gets three database broadcasts, each with its
    // position on the bus, and goes away.
    let mut away = s1.subscriber(&topic).await;
    let mut listener = s2.subscriber(&topic).await;
    let mut on_primary = p.subscriber(&topic).await;
    p.psql(&sends(&topic, 3));
    let seen = broadcasts(&s1, &mut away, 3).await;
    let last = seen[2]["meta"]["position"].as_str().unwrap_or_else(|| panic!("no position: {seen:?}")).to_owned();
    drop(away);
    // Meanwhile: four database broadcasts, then two client broadcasts from
    // standby1, which standby2 has replayed once its own listener got them.
    let (mut sender, jr) = sender(&s1, &topic).await;
    p.psql(&sends(&topic, 4));
    broadcasts(&s1, &mut sender, 4).await; // the sender listens too
    broadcast(&s1, &mut sender, &jr, &topic, 2).await;
    broadcasts(&s2, &mut listener, 3 + 4 + 2).await;
    // Everyone else gets positions too, the primary's sockets for what a
    // standby relayed included.
    let all = broadcasts(&p, &mut on_primary, 3 + 4 + 2).await;
    assert!(all.iter().all(|b| b["meta"]["position"].is_string()), "{all:?}");
    // Resuming on standby2 from the last position it saw.
    let url = ws_url_at(&s2.ws, Vsn::V2, &jwt("anon"));
    let mut back = Client::connect_url(Vsn::V2, &url).await;
    let resume = json!({"position": last, "epoch": {"system_identifier": system_identifier}});
    back.join_ok(&format!("realtime:{topic}"), json!({"broadcast": {"resume": resume}})).await;
    let resumed = broadcasts(&s2, &mut back, 6).await;
    let ns: Vec<i64> = resumed.iter().map(|b| b["payload"]["n"].as_i64().unwrap()).collect();
    assert_eq!(ns, [0, 1, 2, 3, 0, 1], "bus order: the four sends, then the two client broadcasts: {resumed:?}");
    let mut previous = lsn(&last);
    for b in &resumed {
        assert_eq!(b["meta"]["resumed"], true, "{b}");
        let at = lsn(b["meta"]["position"].as_str().unwrap());
        assert!(at > previous, "positions grow: {resumed:?}");
        previous = at;
    }
    assert!(resumed[..4].iter().all(|b| b["meta"]["id"].is_string()), "database broadcasts keep their ids");
    // Then live, once.
    p.psql(&sends(&topic, 1));
    let live = broadcasts(&s2, &mut back, 1).await;
    assert_eq!(live[0]["meta"].get("resumed"), None, "{live:?}");
    back.expect_silence(Duration::from_secs(1)).await;
    // Another cluster's position means nothing here: the channel says so.
    let mut elsewhere = Client::connect_url(Vsn::V2, &url).await;
    let wrong = json!({"position": last, "epoch": {"system_identifier": "1"}});
    elsewhere.join_ok(&format!("realtime:{topic}"), json!({"broadcast": {"resume": wrong}})).await;
    let m = elsewhere.recv_event("system").await;
    assert_eq!(m.payload["status"], "error", "{m:?}");
    assert!(
        m.payload["message"].as_str().unwrap().starts_with("UnableToResume: the position is from another"),
        "{m:?}"
    );
}

/// A V2 client on `node` joined to `topic` with presence under `key`, and
/// the `presence_state` it was sent.
async fn member(node: &Node, topic: &str, key: &str) -> (Client, String, Value) {
    let url = ws_url_at(&node.ws, Vsn::V2, &jwt("anon"));
    let mut c = Client::connect_url(Vsn::V2, &url).await;
    let jr = c.join_ok(&format!("realtime:{topic}"), json!({"presence": {"enabled": true, "key": key}})).await;
    let state = c.recv_event("presence_state").await.payload;
    (c, jr, state)
}

/// Tracks `{"name": key}`; the member's own join diff follows the reply.
async fn track(c: &mut Client, jr: &str, topic: &str, key: &str) {
    let payload = json!({"event": "track", "payload": {"name": key}});
    c.push(Some(jr), Some("track"), &format!("realtime:{topic}"), "presence", payload).await;
    assert_eq!(c.recv_event("phx_reply").await.payload["status"], "ok");
    assert_eq!(c.recv_event("presence_diff").await.payload["joins"][key]["metas"][0]["name"], key);
}

/// The next presence diff, within `DB_WAIT`.
async fn next_diff(node: &Node, c: &mut Client) -> Value {
    next_diff_within(node, c, DB_WAIT).await
}

async fn next_diff_within(node: &Node, c: &mut Client, wait: Duration) -> Value {
    loop {
        let m = c.try_recv(wait).await.unwrap_or_else(|| panic!("the {}: no presence_diff within {wait:?}", node.name));
        if m.event == "presence_diff" {
            return m.payload;
        }
    }
}

fn names(side: &Value) -> Vec<&str> {
    side.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default()
}

#[tokio::test]
async fn presence_is_shared_by_every_node_and_goes_with_its_node() {
    let topic = unique("presence");
    let (p, s1, s2) = (primary(), standby1(), standby2());
    let (mut ann, ann_jr, _) = member(&s1, &topic, "ann").await;
    let (mut bob, bob_jr, _) = member(&s2, &topic, "bob").await;
    track(&mut ann, &ann_jr, &topic, "ann").await;
    let joined = next_diff(&s2, &mut bob).await;
    assert_eq!(names(&joined["joins"]), ["ann"], "{joined}");
    assert_eq!(joined["joins"]["ann"]["metas"][0]["name"], "ann");
    track(&mut bob, &bob_jr, &topic, "bob").await;
    assert_eq!(names(&next_diff(&s1, &mut ann).await["joins"]), ["bob"]);
    // A later member, on the primary, is sent both: in its presence_state,
    // or (what the primary had not decoded yet when it joined) as a join.
    let (mut cy, _, state) = member(&p, &topic, "cy").await;
    let mut seen: Vec<String> = names(&state).into_iter().map(str::to_owned).collect();
    while seen.len() < 2 {
        let joined = next_diff(&p, &mut cy).await;
        seen.extend(names(&joined["joins"]).into_iter().map(str::to_owned));
    }
    seen.sort();
    assert_eq!(seen, ["ann", "bob"], "the primary's member, after {state}");
    // An untrack on one node is a leave everywhere.
    let untrack = json!({"event": "untrack", "payload": {}});
    bob.push(Some(&bob_jr), Some("untrack"), &format!("realtime:{topic}"), "presence", untrack).await;
    assert_eq!(bob.recv_event("phx_reply").await.payload["status"], "ok");
    assert_eq!(names(&bob.recv_event("presence_diff").await.payload["leaves"]), ["bob"]);
    for (node, c) in [(&s1, &mut ann), (&p, &mut cy)] {
        let left = next_diff(node, c).await;
        assert_eq!((names(&left["joins"]), names(&left["leaves"])), (vec![], vec!["bob"]), "the {}", node.name);
    }
    track(&mut bob, &bob_jr, &topic, "bob").await;
    assert_eq!(names(&next_diff(&p, &mut cy).await["joins"]), ["bob"]);
    // standby1's worker goes: what it tracked leaves the other nodes (it may
    // not say so itself: the others stop hearing it, for 7 to 9 s).
    s1.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'realtime'");
    for (node, c) in [(&s2, &mut bob), (&p, &mut cy)] {
        let left = next_diff_within(node, c, Duration::from_secs(20)).await;
        assert_eq!(names(&left["leaves"]), ["ann"], "the {}: {left}", node.name);
    }
    // Back, it is sent what the others track.
    let deadline = Instant::now() + DB_WAIT;
    loop {
        if listening(&s1.ws) {
            let (_, _, state) = member(&s1, &topic, "dee").await;
            if names(&state) == ["bob"] {
                break;
            }
            assert!(Instant::now() < deadline, "standby1's presence_state after its restart: {state}");
        }
        assert!(Instant::now() < deadline, "standby1's worker did not come back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for c in [&mut bob, &mut cy] {
        c.expect_silence(Duration::from_millis(500)).await;
    }
}

/// A client on `node` joined to `topic` with `self` and `ack` on.
async fn sender(node: &Node, topic: &str) -> (Client, String) {
    let url = ws_url_at(&node.ws, Vsn::V2, &jwt("anon"));
    let mut c = Client::connect_url(Vsn::V2, &url).await;
    let jr = c.join_ok(&format!("realtime:{topic}"), json!({"broadcast": {"self": true, "ack": true}})).await;
    (c, jr)
}

/// `count` client broadcasts `e` with `n` = 0, 1, …; each acknowledged,
/// and each back to the sender once (`self`), in order.
async fn broadcast(node: &Node, c: &mut Client, jr: &str, topic: &str, count: usize) {
    let full = format!("realtime:{topic}");
    for n in 0..count {
        let payload = json!({"type": "broadcast", "event": "e", "payload": {"n": n}});
        c.push(Some(jr), Some(&format!("b{n}")), &full, "broadcast", payload).await;
    }
    let (mut acks, mut echoed) = (0, 0);
    while acks < count || echoed < count {
        let m = c.try_recv(DB_WAIT).await.unwrap_or_else(|| panic!("the {}: {acks} acks, {echoed} echoes", node.name));
        match m.event.as_str() {
            "phx_reply" => acks += 1,
            "broadcast" => {
                assert_eq!(m.payload["payload"]["n"], echoed, "the {}: {m:?}", node.name);
                echoed += 1;
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn client_broadcasts_reach_every_node_once_from_a_standby_and_from_the_primary() {
    let topic = unique("relay");
    let nodes = [primary(), standby1(), standby2()];
    let mut listeners = subscribers(&nodes, &topic).await;
    // From standby1, through the primary and back: no echo twice on standby1.
    let (mut on_standby, standby_jr) = sender(&nodes[1], &topic).await;
    broadcast(&nodes[1], &mut on_standby, &standby_jr, &topic, 20).await;
    for (node, c) in nodes.iter().zip(&mut listeners) {
        receive_in_order(node, c, &topic, 20).await;
    }
    // From the primary.
    let (mut on_primary, primary_jr) = sender(&nodes[0], &topic).await;
    broadcast(&nodes[0], &mut on_primary, &primary_jr, &topic, 10).await;
    for (node, c) in nodes.iter().zip(&mut listeners) {
        receive_in_order(node, c, &topic, 10).await;
    }
    // Binary payloads travel as they are.
    let bytes = [0u8, 1, 2, 254, 255];
    on_standby.send_raw(kind3(&standby_jr, "bin", &format!("realtime:{topic}"), "blob", None, &bytes)).await;
    // The sender on the primary listens too.
    let receivers = nodes.iter().zip(listeners.iter_mut()).chain([(&nodes[0], &mut on_primary)]);
    for (node, c) in receivers {
        let m = loop {
            let m = c.try_recv(DB_WAIT).await.unwrap_or_else(|| panic!("the {}: no binary broadcast", node.name));
            if m.event == "broadcast" {
                break m;
            }
        };
        assert_eq!(m.binary.as_deref(), Some(&bytes[..]), "the {}: {m:?}", node.name);
        assert_eq!(m.payload["event"], "blob", "the {}: {m:?}", node.name);
    }
    for c in listeners.iter_mut().chain([&mut on_primary]) {
        c.expect_silence(Duration::from_secs(1)).await;
    }
}

/// Whether something accepts connections on the port.
fn listening(port: &str) -> bool {
    std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_ok()
}

#[test]
fn a_standby_without_the_bus_opens_no_port() {
    let s1 = standby1();
    let off = NodeSetting::set(&s1, "realtime.bus", "off");
    s1.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'realtime'");
    wait_until("standby1's worker to close its port", || !listening(&s1.ws));
    // Restarted (after a second), it waits without serving.
    std::thread::sleep(Duration::from_secs(3));
    assert!(!listening(&s1.ws), "a standby with realtime.bus off serves clients");
    assert_eq!(s1.psql("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'realtime'"), "1");
    drop(off);
    wait_until("standby1's worker to serve again with realtime.bus on", || listening(&s1.ws));
}

/// Read and write policies on `realtime.messages` for topics `nodes-rw:…`,
/// made on the primary and replayed by the standbys.
fn private_policies(p: &Node, standbys: &[&Node]) {
    p.psql(
        "DROP POLICY IF EXISTS nodes_read ON realtime.messages;
         DROP POLICY IF EXISTS nodes_write ON realtime.messages;
         CREATE POLICY nodes_read ON realtime.messages FOR SELECT TO authenticated
           USING (realtime.topic() LIKE 'nodes-rw:%');
         CREATE POLICY nodes_write ON realtime.messages FOR INSERT TO authenticated
           WITH CHECK (realtime.topic() LIKE 'nodes-rw:%');",
    );
    for s in standbys {
        wait_until(&format!("the {} to replay the policies", s.name), || {
            s.psql("SELECT count(*) FROM pg_policies WHERE policyname IN ('nodes_read', 'nodes_write')") == "2"
        });
    }
}

/// An authenticated socket on `node`.
async fn user(node: &Node) -> Client {
    let token = jwt_with("authenticated", json!({"sub": "00000000-0000-4000-8000-0000000000c1"}));
    Client::connect_url(Vsn::V2, &ws_url_at(&node.ws, Vsn::V2, &token)).await
}

#[tokio::test]
async fn private_channels_on_a_standby_are_checked_on_the_primary_as_there() {
    let (p, s1) = (primary(), standby1());
    private_policies(&p, &[&s1]);
    let allowed = format!("nodes-rw:{}", unique("p"));
    let denied = format!("nodes-no:{}", unique("p"));
    // The same answers on the standby as on the primary.
    for node in [&p, &s1] {
        let mut c = user(node).await;
        let (_, reply) = c.join(&format!("realtime:{denied}"), json!({"config": {"private": true}})).await;
        assert_eq!(reply["status"], "error", "the {}: {reply}", node.name);
        let reason = reply["response"]["reason"].as_str().unwrap_or_default();
        assert!(reason.starts_with("Unauthorized: You do not have permissions"), "the {}: {reply}", node.name);
    }
    // Allowed on both; a private broadcast from the standby (its write
    // checked on the primary) reaches the primary's private subscriber.
    let full = format!("realtime:{allowed}");
    let mut listener = user(&p).await;
    listener.join_ok(&full, json!({"private": true})).await;
    let mut sender = user(&s1).await;
    let jr = sender.join_ok(&full, json!({"private": true, "broadcast": {"ack": true}})).await;
    let payload = json!({"type": "broadcast", "event": "e", "payload": {"n": 0}});
    sender.push(Some(&jr), Some("p0"), &full, "broadcast", payload).await;
    receive_in_order(&p, &mut listener, &allowed, 1).await;
    listener.expect_silence(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_private_rest_broadcast_on_a_standby_is_checked_on_the_primary() {
    let (p, s1) = (primary(), standby1());
    private_policies(&p, &[&s1]);
    let topic = format!("nodes-rw:{}", unique("rest"));
    let mut listener = user(&s1).await;
    listener.join_ok(&format!("realtime:{topic}"), json!({"private": true})).await;
    let token = jwt_with("authenticated", json!({"sub": "00000000-0000-4000-8000-0000000000c1"}));
    let body = json!({"messages": [{"topic": topic, "event": "e", "payload": {"n": 0}, "private": true}]});
    let url = format!("http://127.0.0.1:{}/realtime/v1/api/broadcast", s1.ws);
    let status = reqwest::Client::new()
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .map(|r| r.status().as_u16());
    assert_eq!(status.ok(), Some(202));
    // Its write check ran on the primary: the read-only standby could not write the probe.
    receive_in_order(&s1, &mut listener, &topic, 1).await;
}

/// Joins a new private topic the policies allow (so no answer is cached);
/// returns the join reply.
async fn private_join(node: &Node) -> Value {
    let mut c = user(node).await;
    c.join(&format!("realtime:nodes-rw:{}", unique("tls")), json!({"config": {"private": true}})).await.1
}

/// How many of the primary's connections named `application_name` use TLS, and how many do not.
fn relay_connections(p: &Node, application_name: &str) -> (i64, i64) {
    let row = p.psql(&format!(
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl)
         FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = '{application_name}'"
    ));
    let (with, without) = row.split_once('|').unwrap_or_else(|| panic!("{row:?}"));
    (with.parse().unwrap(), without.parse().unwrap())
}

#[tokio::test]
async fn the_connection_to_the_primary_uses_tls_as_its_sslmode_says() {
    let (p, s2) = (primary(), standby2());
    private_policies(&p, &[&s2]);
    let tls = format!("{}/tls", std::env::var("NODES_DIR").expect("NODES_DIR, set by pg_test/nodes/run.sh"));
    // By default, primary_conninfo's own sslmode (prefer, from pg_basebackup -R): encrypted.
    assert_eq!(private_join(&s2).await["status"], "ok");
    let (with, without) = relay_connections(&p, "realtime bus relay");
    assert!(with >= 1 && without == 0, "{with} relay connections with TLS, {without} without");
    // verify-full against the CA that signed the primary's certificate.
    let conninfo = |name: &str, root: &str| {
        format!(
            "host=localhost port={} user=postgres dbname=postgres application_name={name} \
             sslmode=verify-full sslrootcert={tls}/{root}",
            p.pg
        )
    };
    let verified = NodeSetting::set(&s2, "realtime.primary_conninfo", &conninfo("relay_verified", "ca.crt"));
    let deadline = Instant::now() + DB_WAIT;
    while relay_connections(&p, "relay_verified") != (1, 0) {
        assert!(Instant::now() < deadline, "standby2 did not connect with verify-full");
        assert_eq!(private_join(&s2).await["status"], "ok");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(verified);
    // Against a CA that did not sign it: no connection, and joins say why.
    let _wrong = NodeSetting::set(&s2, "realtime.primary_conninfo", &conninfo("relay_wrong_ca", "other-ca.crt"));
    let deadline = Instant::now() + DB_WAIT;
    loop {
        let reply = private_join(&s2).await;
        if reply["status"] == "error" {
            let reason = reply["response"]["reason"].as_str().unwrap_or_default();
            assert!(reason.starts_with("UnableToSetPolicies: this standby cannot reach the primary"), "{reply}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "standby2 still joins with a root certificate that did not sign the primary's"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(relay_connections(&p, "relay_wrong_ca"), (0, 0));
}

#[tokio::test]
async fn a_standby_relays_and_checks_as_realtime_relay_which_is_no_superuser() {
    let (p, s1) = (primary(), standby1());
    private_policies(&p, &[&s1]);
    p.psql("ALTER ROLE realtime_relay LOGIN");
    let conninfo = format!(
        "host=127.0.0.1 port={} user=realtime_relay dbname=postgres application_name=relay_as_role sslmode=disable",
        p.pg
    );
    let _relay = NodeSetting::set(&s1, "realtime.primary_conninfo", &conninfo);
    // A denied and an allowed join on the standby, both checked on the primary.
    let allowed = format!("nodes-rw:{}", unique("relay-role"));
    let mut c = user(&s1).await;
    let deadline = Instant::now() + DB_WAIT;
    while p.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'relay_as_role'") == "0" {
        assert!(Instant::now() < deadline, "standby1 did not connect as realtime_relay");
        assert_eq!(private_join(&s1).await["status"], "ok");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let who = p.psql(
        "SELECT a.usename || ',' || r.rolsuper FROM pg_stat_activity a JOIN pg_roles r ON r.oid = a.usesysid
         WHERE a.application_name = 'relay_as_role' LIMIT 1",
    );
    assert_eq!(who, "realtime_relay,false", "the relay's connection on the primary");
    let (_, reply) =
        c.join(&format!("realtime:nodes-no:{}", unique("relay-role")), json!({"config": {"private": true}})).await;
    assert_eq!(reply["status"], "error", "{reply}");
    // A private client broadcast from the standby: written on the primary by the relay.
    let full = format!("realtime:{allowed}");
    let mut listener = user(&p).await;
    listener.join_ok(&full, json!({"private": true})).await;
    let jr = c.join_ok(&full, json!({"private": true, "broadcast": {"ack": true}})).await;
    let payload = json!({"type": "broadcast", "event": "e", "payload": {"n": 0}});
    c.push(Some(&jr), Some("r0"), &full, "broadcast", payload).await;
    receive_in_order(&p, &mut listener, &allowed, 1).await;
    p.psql("ALTER ROLE realtime_relay NOLOGIN");
}

#[tokio::test]
async fn bus_messages_forged_on_the_primary_reach_no_node() {
    let (p, s1, s2) = (primary(), standby1(), standby2());
    p.psql(
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'nodes_intruder') THEN CREATE ROLE nodes_intruder; END IF;
         END $$;",
    );
    let topic = unique("forged");
    let nodes = [p, s1, s2];
    let mut sockets = subscribers(&nodes, &topic).await;
    let broadcast = format!(r#"B{{"topic":"{topic}","event":"pwned","payload":{{"n":0}},"private":false,"id":"x"}}"#);
    let relayed =
        format!("X{{\"origin\":\"evil\",\"topic\":\"realtime:{topic}\",\"private\":false,\"event\":\"pwned\"}}\n{{}}");
    let seal = format!("\u{1f}{:016x}{:016x}{:016x}{}", 0u64, 1u64, 1u64, "ab".repeat(32));
    for prefix in ["realtime.bus.v2", "realtime.bus.v3"] {
        for body in [broadcast.clone(), relayed.clone(), format!("{broadcast}{seal}"), format!("{relayed}{seal}")] {
            let hex: String = body.bytes().map(|b| format!("{b:02x}")).collect();
            nodes[0].psql(&format!(
                "SET ROLE nodes_intruder; SELECT pg_logical_emit_message(false, '{prefix}', decode('{hex}', 'hex'))"
            ));
        }
    }
    // Then a real send: each node delivers it, and it is the first thing each socket gets.
    nodes[0].psql(&sends(&topic, 1));
    for (node, c) in nodes.iter().zip(&mut sockets) {
        receive_in_order(node, c, &topic, 1).await;
        c.expect_silence(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn crafted_resume_positions_get_an_error_and_nothing_else_happens() {
    let (p, s2) = (primary(), standby2());
    let system_identifier = p.node().system_identifier;
    let topic = unique("crafted");
    let worker = |node: &Node| node.psql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'realtime'");
    for node in [&p, &s2] {
        let pid = worker(node);
        let mut watcher = node.subscriber(&topic).await;
        let url = ws_url_at(&node.ws, Vsn::V2, &jwt("anon"));
        // Timeline 0 (which made tliSwitchPoint raise over Rust frames), 0/0,
        // positions inside a segment's and a page's header: each an error.
        for (position, timeline) in
            [("0/1", Some(0)), ("0/0", None), ("0/1", None), ("0/1000010", Some(1)), ("0/2002010", None)]
        {
            let mut epoch = json!({"system_identifier": system_identifier});
            if let Some(t) = timeline {
                epoch["timeline"] = t.into();
            }
            let mut c = Client::connect_url(Vsn::V2, &url).await;
            let resume = json!({"position": position, "epoch": epoch});
            c.join_ok(&format!("realtime:{}", unique("crafted")), json!({"broadcast": {"resume": resume}})).await;
            let m = c.recv_event("system").await;
            assert_eq!(m.payload["status"], "error", "{position} {timeline:?} on the {}: {m:?}", node.name);
            let message = m.payload["message"].as_str().unwrap_or_default();
            assert!(message.starts_with("UnableToResume: "), "{position} on the {}: {m:?}", node.name);
        }
        // Past the end of this node's WAL: nothing to resume, and no harm.
        let mut c = Client::connect_url(Vsn::V2, &url).await;
        let ahead =
            json!({"position": "FFFFFFFF/FFFFFFFF", "epoch": {"system_identifier": system_identifier, "timeline": 1}});
        c.join_ok(&format!("realtime:{}", unique("crafted")), json!({"broadcast": {"resume": ahead}})).await;
        // Garbage is refused at the join.
        for bad in [
            json!("zz"),
            json!({"position": "zz/zz"}),
            json!({"position": 5}),
            json!({"position": "0/1", "epoch": {"timeline": -1}}),
        ] {
            let (_, reply) = c
                .join(&format!("realtime:{}", unique("crafted")), json!({"config": {"broadcast": {"resume": bad}}}))
                .await;
            assert_eq!(reply["status"], "error", "{bad} on the {}: {reply}", node.name);
        }
        assert_eq!(worker(node), pid, "the {}'s worker is the same process", node.name);
        p.psql(&sends(&topic, 1));
        receive_in_order(node, &mut watcher, &topic, 1).await;
    }
}

/// The `system` messages a failover sends each channel: one naming the new
/// epoch, one naming what was missed. Asserts the epoch; returns `missed`.
async fn failover_events(node: &Node, c: &mut Client, topic: &str, system_identifier: &str, timeline: i64) -> Value {
    let (mut epochs, mut missed) = (0, Vec::new());
    let deadline = Instant::now() + DB_WAIT;
    while epochs == 0 || missed.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = c
            .try_recv(left)
            .await
            .unwrap_or_else(|| panic!("the {}: {epochs} epoch messages and {} gap reports", node.name, missed.len()));
        if m.event != "system" {
            continue;
        }
        assert_eq!(m.payload["channel"], topic, "the {}: {m:?}", node.name);
        if m.payload.get("epoch").is_some() {
            assert_eq!(m.payload["epoch"]["timeline"], timeline, "the {}: {m:?}", node.name);
            assert_eq!(m.payload["epoch"]["system_identifier"], system_identifier, "the {}: {m:?}", node.name);
            epochs += 1;
        } else {
            missed.push(m.payload["missed"].clone());
        }
    }
    missed.remove(0)
}

/// Stops the primary at once (`nodes.sh crash-primary`), as a crash would.
fn crash_primary() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/nodes.sh");
    let crashed = std::process::Command::new(script).arg("crash-primary").status().expect("nodes.sh runs");
    assert!(crashed.success(), "nodes.sh crash-primary failed");
}

/// `0/16B3748` as a number.
fn lsn(text: &str) -> u64 {
    let (high, low) = text.split_once('/').unwrap_or_else(|| panic!("not an LSN: {text:?}"));
    (u64::from_str_radix(high, 16).unwrap() << 32) | u64::from_str_radix(low, 16).unwrap()
}

/// Crashes the primary for good: `pg_test/nodes/run.sh` runs it alone,
/// after the others. Sends commit on the primary without reaching the bus
/// (its worker has the bus off), then it crashes; standby1 is promoted and
/// standby2 follows it. The sockets on both stay open, each channel gets one
/// message naming the new epoch and one naming the WAL whose messages were
/// not delivered, with those sends in it; sends on the new primary reach
/// both, in order, once, and a client resumes there from a position of the
/// old timeline.
#[tokio::test]
async fn failover_keeps_the_sockets_announces_the_epoch_and_goes_on() {
    let topic = unique("failover");
    let (p, s1, s2) = (primary(), standby1(), standby2());
    let before = p.node();
    let mut on1 = s1.subscriber(&topic).await;
    let mut on2 = s2.subscriber(&topic).await;
    p.psql(&sends(&topic, 10));
    receive_in_order(&s1, &mut on1, &topic, 10).await;
    let seen = broadcasts(&s2, &mut on2, 10).await;
    let ns: Vec<i64> = seen.iter().map(|b| b["payload"]["n"].as_i64().unwrap()).collect();
    assert_eq!(ns, (0..10).collect::<Vec<_>>(), "{seen:?}");
    let last = seen[9]["meta"]["position"].as_str().expect("a position").to_owned();

    private_policies(&p, &[&s2]);
    // The gap: three sends the primary commits (and the standbys replay)
    // but never puts on the bus.
    p.psql("ALTER SYSTEM SET realtime.bus = off");
    p.psql("SELECT pg_reload_conf()");
    std::thread::sleep(Duration::from_secs(1)); // the worker reloads within its 200 ms loop
    let gap_starts = lsn(&p.psql("SELECT pg_current_wal_lsn()"));
    p.psql(&sends(&unique("unbused"), 3));
    let gap_ends = lsn(&p.psql("SELECT pg_current_wal_insert_lsn()"));
    for s in [&s1, &s2] {
        wait_until(&format!("the {} to replay the unbused sends", s.name), || {
            lsn(&s.psql("SELECT pg_last_wal_replay_lsn()")) >= gap_ends
        });
    }
    crash_primary();
    // Without the primary, a private join on a standby is refused, saying why.
    let mut c = user(&s2).await;
    let topic_rw = format!("realtime:nodes-rw:{}", unique("down"));
    let (_, reply) = c.join(&topic_rw, json!({"config": {"private": true}})).await;
    let reason = reply["response"]["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("UnableToSetPolicies: this standby cannot reach the primary"), "{reply}");
    assert_eq!(s1.psql("SELECT pg_promote(true, 30)"), "t");
    s2.psql(&format!("ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port={} user=postgres'", s1.pg));
    s2.psql("SELECT pg_reload_conf()");

    let timeline = before.timeline + 1;
    for (node, c) in [(&s1, &mut on1), (&s2, &mut on2)] {
        let missed = failover_events(node, c, &topic, &before.system_identifier, timeline).await;
        let (from, to) = (lsn(missed["from"].as_str().unwrap()), lsn(missed["to"].as_str().unwrap()));
        assert!(from <= gap_starts && to >= gap_ends, "the {}: {missed} does not hold the unbused sends", node.name);
        assert!(missed["transactions"].as_u64().unwrap() >= 3, "the {}: {missed}", node.name);
    }
    let after = s1.node();
    assert_eq!((after.role.as_str(), after.timeline), ("primary", timeline), "{after:?}");
    wait_until("standby2 to follow the new primary", || s2.node().timeline == timeline);
    // The new primary's worker creates its slot and decodes from there on.
    wait_until("the promoted standby's worker to decode", || {
        s1.psql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'realtime' AND active") == "1"
    });
    assert_eq!(bus_slot(&s1), None, "a primary keeps no bus slot");
    assert!(bus_slot(&s2).is_some(), "standby2 keeps its bus slot across the switch");
    s1.psql(&sends(&topic, 5));
    receive_in_order(&s1, &mut on1, &topic, 5).await;
    receive_in_order(&s2, &mut on2, &topic, 5).await;
    on1.expect_silence(Duration::from_secs(1)).await;
    on2.expect_silence(Duration::from_secs(1)).await;
    // A client that saw the ten on the old timeline resumes on the new
    // primary: it gets the five sent since, once (the unbused sends are in
    // the gap reported above).
    let epoch = json!({"system_identifier": before.system_identifier, "timeline": before.timeline});
    let url = ws_url_at(&s1.ws, Vsn::V2, &jwt("anon"));
    let mut back = Client::connect_url(Vsn::V2, &url).await;
    let resume = json!({"position": last, "epoch": epoch});
    back.join_ok(&format!("realtime:{topic}"), json!({"broadcast": {"resume": resume}})).await;
    let resumed = broadcasts(&s1, &mut back, 5).await;
    let ns: Vec<i64> = resumed.iter().map(|b| b["payload"]["n"].as_i64().unwrap()).collect();
    assert_eq!(ns, [0, 1, 2, 3, 4], "{resumed:?}");
    assert!(resumed.iter().all(|b| b["meta"]["resumed"] == true), "{resumed:?}");
    back.expect_silence(Duration::from_secs(1)).await;
}

/// PostgreSQL 17+ (`pg_test/nodes/run.sh` runs it there, alone, last: it
/// crashes the primary for good). The standbys sync the worker's failover
/// slot; the primary commits synchronously to standby1 and decodes only what
/// both standbys have (`synchronized_standby_slots`). Under a stream of
/// database broadcasts, one per transaction, the primary crashes; standby1 is
/// promoted, standby2 follows it. Every broadcast the promoted node holds in
/// `realtime.messages`, which is every one whose commit returned, reaches the
/// subscribers on both surviving nodes, in order, once, and no gap is reported.
#[tokio::test]
async fn failover_on_a_synced_slot_delivers_every_replicated_message_once_in_order() {
    let topic = unique("synced-failover");
    let (p, s1, s2) = (primary(), standby1(), standby2());
    let before = p.node();
    let mut on1 = s1.subscriber(&topic).await;
    let mut on2 = s2.subscriber(&topic).await;

    p.psql("ALTER SYSTEM SET synchronized_standby_slots = 'standby1, standby2'");
    p.psql("ALTER SYSTEM SET synchronous_standby_names = 'standby1'");
    p.psql("SELECT pg_reload_conf()");
    wait_until("standby1 to be the synchronous standby", || {
        p.psql("SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby1'") == "sync"
    });
    wait_until("standby1 to keep a synced copy of the worker's slot", || {
        s1.psql("SELECT synced AND NOT temporary FROM pg_replication_slots WHERE slot_name = 'realtime'") == "t"
    });

    // One send per psql call: each one whose call returned has committed,
    // and so is on standby1.
    let returned = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sender = {
        let (returned, port, topic) = (returned.clone(), p.pg.clone(), topic.clone());
        std::thread::spawn(move || {
            for n in 0..2000 {
                let sql = format!("SELECT realtime.send(jsonb_build_object('n', {n}), 'e', '{topic}', false)");
                if try_psql_at(&port, &sql).is_err() {
                    break;
                }
                returned.lock().unwrap().push(n);
            }
        })
    };
    wait_until("60 sends to commit", || returned.lock().unwrap().len() >= 60);
    crash_primary();
    sender.join().expect("the sender ends when the primary is gone");
    let returned = returned.lock().unwrap().clone();

    assert_eq!(s1.psql("SELECT pg_promote(true, 30)"), "t");
    s1.psql("SELECT pg_create_physical_replication_slot('standby2', true)");
    s2.psql(&format!(
        "ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port={} user=postgres dbname=postgres application_name=standby2'",
        s1.pg
    ));
    s2.psql("SELECT pg_reload_conf()");
    let timeline = before.timeline + 1;
    wait_until("standby2 to follow the new primary", || s2.node().timeline == timeline);

    let held: Vec<i64> = s1
        .psql(&format!("SELECT payload->>'n' FROM realtime.messages WHERE topic = '{topic}' ORDER BY inserted_at, id"))
        .lines()
        .map(|n| n.parse().unwrap())
        .collect();
    assert!(
        returned.iter().all(|n| held.contains(&(*n as i64))),
        "a send whose commit returned is missing on the promoted node: returned {returned:?}, held {held:?}"
    );
    assert_eq!(held, (0..held.len() as i64).collect::<Vec<_>>(), "the promoted node holds the sends in order");
    for (node, c) in [(&s1, &mut on1), (&s2, &mut on2)] {
        let mut got = Vec::new();
        while got.len() < held.len() {
            let m = c.try_recv(DB_WAIT).await.unwrap_or_else(|| {
                panic!("the {}: {} of the {} held sends arrived: {got:?}", node.name, got.len(), held.len())
            });
            match m.event.as_str() {
                "broadcast" => got.push(m.payload["payload"]["n"].as_i64().unwrap()),
                "system" => assert!(m.payload.get("missed").is_none(), "the {}: a gap was reported: {m:?}", node.name),
                _ => {}
            }
        }
        assert_eq!(got, held, "the {}: every held send, in order, once", node.name);
        while let Some(m) = c.try_recv(Duration::from_secs(2)).await {
            assert!(m.event != "broadcast", "the {}: a send arrived twice: {m:?}", node.name);
            assert!(m.payload.get("missed").is_none(), "the {}: a gap was reported: {m:?}", node.name);
        }
    }
    // The new primary's own sends reach both.
    s1.psql(&sends(&topic, 3));
    receive_in_order(&s1, &mut on1, &topic, 3).await;
    receive_in_order(&s2, &mut on2, &topic, 3).await;
}
