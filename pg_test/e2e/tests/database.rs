//! Broadcast from the database: realtime.send and broadcast_changes reach
//! subscribed sockets through the worker's slot, in commit order, never when
//! rolled back.

use realtime_e2e::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

async fn next_broadcast(c: &mut Client) -> Msg {
    loop {
        let m = c.try_recv(DB_WAIT).await.expect("a broadcast from the database");
        if m.event == "broadcast" {
            return m;
        }
    }
}

#[tokio::test]
async fn send_reaches_v1_and_v2_subscribers_with_its_id() {
    let name = unique("db");
    let mut v1 = Client::connect(Vsn::V1, &jwt("anon")).await;
    let mut v2 = Client::connect(Vsn::V2, &jwt("anon")).await;
    v1.join_ok(&format!("realtime:{name}"), json!({})).await;
    v2.join_ok(&format!("realtime:{name}"), json!({})).await;
    psql(&format!("SELECT realtime.send('{{\"v\":\"x\"}}', 'ev', '{name}', false)"));
    let id = psql(&format!("SELECT id FROM realtime.messages WHERE topic = '{name}'"));
    for c in [&mut v1, &mut v2] {
        let m = next_broadcast(c).await;
        assert_eq!(m.topic, format!("realtime:{name}"));
        assert_eq!(m.payload["event"], "ev");
        assert_eq!(m.payload["payload"], json!({"v": "x", "id": id}));
        assert_eq!(m.payload["meta"], json!({"id": id}));
    }
}

#[tokio::test]
async fn private_and_public_rows_reach_their_own_channels_only() {
    let name = unique("dbiso");
    let service = jwt("service_role");
    let mut public = Client::connect(Vsn::V2, &service).await;
    let mut private = Client::connect(Vsn::V2, &service).await;
    public.join_ok(&format!("realtime:{name}"), json!({})).await;
    private.join_ok(&format!("realtime:{name}"), json!({"private": true})).await;
    psql(&format!("SELECT realtime.send('{{\"to\":\"private\"}}', 'e', '{name}', true)"));
    psql(&format!("SELECT realtime.send('{{\"to\":\"public\"}}', 'e', '{name}', false)"));
    assert_eq!(next_broadcast(&mut private).await.payload["payload"]["to"], "private");
    assert_eq!(next_broadcast(&mut public).await.payload["payload"]["to"], "public");
    private.expect_silence(Duration::from_millis(500)).await;
    public.expect_silence(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn any_json_payload_passes_through() {
    let name = unique("dbjson");
    let mut c = Client::connect(Vsn::V1, &jwt("anon")).await;
    c.join_ok(&format!("realtime:{name}"), json!({})).await;
    for payload in ["[1,2,3]", "\"text\"", "42", "null"] {
        psql(&format!("SELECT realtime.send('{payload}', 'e', '{name}', false)"));
        let m = next_broadcast(&mut c).await;
        assert_eq!(m.payload["payload"], serde_json::from_str::<Value>(payload).unwrap());
    }
}

#[tokio::test]
async fn broadcast_changes_from_a_trigger() {
    let table = unique("todos").replace('-', "_");
    let topic = format!("{table}:changes");
    psql(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, title text);
         CREATE FUNCTION {table}_broadcast() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           PERFORM realtime.broadcast_changes('{topic}', TG_OP, TG_OP, TG_TABLE_NAME, TG_TABLE_SCHEMA, NEW, OLD, TG_LEVEL);
           RETURN NULL;
         END $$;
         CREATE TRIGGER broadcast AFTER INSERT OR UPDATE OR DELETE ON {table}
           FOR EACH ROW EXECUTE FUNCTION {table}_broadcast();"
    ));
    let mut c = Client::connect(Vsn::V2, &jwt("service_role")).await;
    c.join_ok(&format!("realtime:{topic}"), json!({"private": true})).await;
    psql(&format!("INSERT INTO {table} VALUES (1, 'a')"));
    psql(&format!("UPDATE {table} SET title = 'b' WHERE id = 1"));
    psql(&format!("DELETE FROM {table} WHERE id = 1"));
    let expected = [
        ("INSERT", json!({"id": 1, "title": "a"}), Value::Null),
        ("UPDATE", json!({"id": 1, "title": "b"}), json!({"id": 1, "title": "a"})),
        ("DELETE", Value::Null, json!({"id": 1, "title": "b"})),
    ];
    for (op, record, old) in expected {
        let m = next_broadcast(&mut c).await;
        assert_eq!(m.payload["event"], op);
        let p = &m.payload["payload"];
        assert_eq!(p["operation"], op);
        assert_eq!(p["table"], table.as_str());
        assert_eq!(p["schema"], "public");
        assert_eq!(p["record"], record);
        assert_eq!(p["old_record"], old);
        assert_eq!(p["id"], m.payload["meta"]["id"]);
    }
    psql(&format!("DROP TABLE {table}; DROP FUNCTION {table}_broadcast()"));
}

#[tokio::test]
async fn rolled_back_sends_are_never_delivered() {
    let name = unique("dbrollback");
    let mut c = Client::connect(Vsn::V1, &jwt("anon")).await;
    c.join_ok(&format!("realtime:{name}"), json!({})).await;
    psql(&format!(
        "BEGIN; SELECT realtime.send('{{\"n\":\"rolled back\"}}', 'e', '{name}', false); ROLLBACK;
         BEGIN; SELECT realtime.send('{{\"n\":\"committed\"}}', 'e', '{name}', false); COMMIT;"
    ));
    assert_eq!(next_broadcast(&mut c).await.payload["payload"]["n"], "committed");
    c.expect_silence(Duration::from_millis(800)).await;
}

#[tokio::test]
async fn transactions_arrive_whole_and_in_commit_order() {
    let name = unique("dborder");
    let mut c = Client::connect(Vsn::V2, &jwt("anon")).await;
    c.join_ok(&format!("realtime:{name}"), json!({})).await;
    // Two sessions commit 40 transactions each, concurrently; each transaction
    // sends three messages. The commit order is read back from the slot's
    // own view afterwards: the xmin order of the stored rows is not it, but
    // every transaction's three rows must arrive together and in insert order,
    // and each session's transactions in its own order.
    let session = |s: usize| {
        let name = name.clone();
        std::thread::spawn(move || {
            psql(&format!(
                "DO $$ BEGIN FOR k IN 1..40 LOOP
                   FOR part IN 0..2 LOOP
                     PERFORM realtime.send(jsonb_build_object('s', {s}, 'k', k, 'part', part), 'e', '{name}', false);
                   END LOOP;
                   COMMIT;
                 END LOOP; END $$"
            ))
        })
    };
    let (a, b) = (session(1), session(2));
    a.join().unwrap();
    b.join().unwrap();
    let mut last_k = [0i64; 3];
    for _ in 0..80 {
        let first = next_broadcast(&mut c).await.payload["payload"].clone();
        let (s, k) = (first["s"].as_i64().unwrap() as usize, first["k"].as_i64().unwrap());
        assert_eq!(first["part"], 0, "a transaction starts with its first message");
        for part in 1..3 {
            let m = next_broadcast(&mut c).await.payload["payload"].clone();
            assert_eq!(
                (m["s"].as_i64().unwrap() as usize, m["k"].as_i64().unwrap(), m["part"].as_i64().unwrap()),
                (s, k, part)
            );
        }
        assert_eq!(k, last_k[s] + 1, "session {s}'s transactions arrive in its commit order");
        last_k[s] = k;
    }
}

#[tokio::test]
async fn commit_to_client_latency() {
    let name = unique("dblatency");
    let mut c = Client::connect(Vsn::V2, &jwt("anon")).await;
    c.join_ok(&format!("realtime:{name}"), json!({})).await;
    let n = 200;
    let sender = {
        let name = name.clone();
        std::thread::spawn(move || {
            psql(&format!(
                "DO $$ BEGIN FOR i IN 1..{n} LOOP
                   PERFORM pg_sleep(0.005);
                   PERFORM realtime.send(
                     jsonb_build_object('i', i, 't', (extract(epoch FROM clock_timestamp()) * 1000000)::bigint),
                     'lat', '{name}', false);
                   COMMIT;
                 END LOOP; END $$"
            ))
        })
    };
    // The send time is taken just before the commit, by the server's clock;
    // the receive time here, on the same machine's clock.
    let mut latencies = Vec::new();
    let mut order = Vec::new();
    let started = Instant::now();
    while latencies.len() < n {
        let m = next_broadcast(&mut c).await;
        let sent = m.payload["payload"]["t"].as_i64().unwrap();
        latencies.push((now_micros() - sent) as f64 / 1000.0);
        order.push(m.payload["payload"]["i"].as_i64().unwrap());
    }
    sender.join().unwrap();
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    println!(
        "commit→client latency over {n} sends ({:.1} s): p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        started.elapsed().as_secs_f64(),
        pct(0.5),
        pct(0.95),
        pct(0.99),
        latencies[latencies.len() - 1]
    );
    assert_eq!(order, (1..=n as i64).collect::<Vec<_>>());
}

fn now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64
}
