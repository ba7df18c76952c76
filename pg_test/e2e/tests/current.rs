//! What today's Supabase server does beyond the basics: binary broadcasts
//! from the database, replication readiness, and Postgres Changes values
//! rendered as Supabase renders them.

use realtime_e2e::*;
use serde_json::{Value, json};
use std::time::Duration;

async fn next_event(c: &mut Client, event: &str) -> Msg {
    loop {
        let m = c.try_recv(Duration::from_secs(10)).await.unwrap_or_else(|| panic!("no {event} within 10 s"));
        if m.event == event {
            return m;
        }
    }
}

#[tokio::test]
async fn send_binary_reaches_v2_as_bytes_and_not_v1() {
    let name = unique("bin");
    let mut v2 = Client::connect(Vsn::V2, &jwt("anon")).await;
    let mut v1 = Client::connect(Vsn::V1, &jwt("anon")).await;
    v2.join_ok(&format!("realtime:{name}"), json!({})).await;
    v1.join_ok(&format!("realtime:{name}"), json!({})).await;
    psql(&format!("SELECT realtime.send_binary('\\x00ff10'::bytea, 'blob', '{name}', false)"));
    psql(&format!("SELECT realtime.send('{{\"after\":true}}', 'json', '{name}', false)"));
    let m = next_event(&mut v2, "broadcast").await;
    assert_eq!(m.payload["event"], "blob");
    assert_eq!(m.binary.as_deref(), Some(&[0x00, 0xff, 0x10][..]));
    assert!(m.payload["meta"]["id"].is_string());
    // The V1 serializer cannot carry bytes: its client gets only the JSON one.
    let m = next_event(&mut v1, "broadcast").await;
    assert_eq!(m.payload["event"], "json");
    let stored = psql(&format!(
        "SELECT encode(binary_payload, 'hex') || '|' || (payload IS NULL)::text FROM realtime.messages WHERE topic = '{name}' AND event = 'blob'"
    ));
    assert_eq!(stored, "00ff10|true");
}

#[tokio::test]
async fn replay_returns_binary_messages_as_bytes() {
    let name = unique("binreplay");
    let since = (now() - 60) * 1000;
    psql(&format!("SELECT realtime.send_binary('\\xcafe'::bytea, 'blob', '{name}', true)"));
    let mut c = Client::connect(Vsn::V2, &jwt("service_role")).await;
    c.join_ok(&format!("realtime:{name}"), json!({"private": true, "broadcast": {"replay": {"since": since}}})).await;
    let m = next_event(&mut c, "broadcast").await;
    assert_eq!(m.payload["meta"]["replayed"], true);
    assert_eq!(m.binary.as_deref(), Some(&[0xca, 0xfe][..]));
}

#[tokio::test]
async fn replication_ready_is_announced_before_anything_can_be_missed() {
    let name = unique("ready");
    let topic = format!("realtime:{name}");
    let mut c = Client::connect(Vsn::V2, &jwt("anon")).await;
    let join_ref = c.join_ok(&topic, json!({"broadcast": {"replication_ready": true}})).await;
    let system = next_event(&mut c, "system").await;
    assert_eq!(
        system.payload,
        json!({"extension": "system", "status": "ok", "message": "Replication connection established", "channel": name})
    );
    assert_eq!(system.join_ref.as_deref(), Some(join_ref.as_str()));
    psql(&format!("SELECT realtime.send('{{\"n\":1}}', 'e', '{name}', false)"));
    assert_eq!(next_event(&mut c, "broadcast").await.payload["payload"]["n"], 1);
}

#[tokio::test]
async fn change_values_are_rendered_as_supabase_renders_them() {
    let table = unique("types").replace('-', "_");
    psql(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, b bytea, n numeric, f float8, m money, ts timestamp,
                               tz timestamptz, arr int[], r int4range, j jsonb, d date);
         ALTER PUBLICATION supabase_realtime ADD TABLE {table};
         GRANT SELECT ON {table} TO anon;"
    ));
    let mut c = Client::connect(Vsn::V2, &jwt("anon")).await;
    let binding = json!({"event": "INSERT", "schema": "public", "table": table});
    c.join_ok(&format!("realtime:{table}"), json!({"postgres_changes": [binding]})).await;
    assert_eq!(next_event(&mut c, "system").await.payload["status"], "ok");
    psql(&format!(
        "SET TIME ZONE 'UTC';
         INSERT INTO {table} VALUES (1, '\\x0102ff', 'NaN', '-Infinity', 1.5, '2024-01-01 12:00:00',
                                     '2025-11-03 09:32:55+00', '{{1,2}}', '[1,10)', '{{\"a\":[1,2]}}', '2024-01-02')"
    ));
    let record = next_event(&mut c, "postgres_changes").await.payload["data"]["record"].clone();
    let expected = [
        ("b", json!("0102ff")),
        ("n", Value::Null),
        ("f", Value::Null),
        ("m", json!("$1.50")),
        ("ts", json!("2024-01-01T12:00:00")),
        ("tz", json!("2025-11-03T09:32:55+00:00")),
        ("arr", json!([1, 2])),
        ("r", json!("[1,10)")),
        ("j", json!({"a": [1, 2]})),
        ("d", json!("2024-01-02")),
    ];
    for (column, value) in expected {
        assert_eq!(record[column], value, "{column} in {record}");
    }
    psql(&format!("DROP TABLE {table}"));
}
