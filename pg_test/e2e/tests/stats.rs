//! `realtime.stats`, `realtime.connections`, `realtime.channels`: read from
//! another session while 1,000 sockets are connected, they show what this
//! test did. One test, so nothing else here opens sockets meanwhile.

use realtime_e2e::*;
use serde_json::json;
use std::time::{Duration, Instant};

const SOCKETS: usize = 1000;
/// The snapshot is refreshed about once a second.
const FRESH: Duration = Duration::from_secs(10);

fn until(what: &str, sql: &str, expected: &str) {
    let deadline = Instant::now() + FRESH;
    loop {
        let got = psql(sql);
        if got == expected {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {sql} gave {got:?}, expected {expected:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test]
async fn views_show_the_sockets_channels_and_traffic_of_this_test() {
    let crowd = format!("realtime:{}", unique("crowd"));
    let few = format!("realtime:{}", unique("few"));
    let mut clients = Vec::new();
    for i in 0..SOCKETS - 2 {
        let mut c = Client::connect(Vsn::V2, &jwt("anon")).await;
        c.join_ok(if i < 600 { &crowd } else { &few }, json!({})).await;
        clients.push(c);
    }
    // One V1 socket, and one authenticated socket that tracks presence.
    let mut v1 = Client::connect(Vsn::V1, &jwt("anon")).await;
    v1.join_ok(&few, json!({})).await;
    let sub = "00000000-0000-4000-8000-0000000000aa";
    let mut member = Client::connect(Vsn::V2, &jwt_with("authenticated", json!({"sub": sub}))).await;
    let jr = member.join_ok(&crowd, json!({"presence": {"enabled": true, "key": "m"}})).await;
    member
        .push(Some(&jr), Some("5"), &crowd, "presence", json!({"type": "presence", "event": "track", "payload": {}}))
        .await;
    // Its state, then the track's reply and diff in either order.
    let mut seen: Vec<String> = Vec::new();
    for _ in 0..3 {
        seen.push(member.recv().await.event);
    }
    seen.sort();
    assert_eq!(seen, ["phx_reply", "presence_diff", "presence_state"]);

    until("sockets", "SELECT sockets FROM realtime.stats", &SOCKETS.to_string());
    until("connections", "SELECT count(*) FROM realtime.connections", &SOCKETS.to_string());
    let channels = format!(
        "SELECT string_agg(format('%s %s %s %s', private, subscribers, presence_members, postgres_changes_subscribers), ', ' ORDER BY topic) \
         FROM realtime.channels WHERE topic IN ('{crowd}', '{few}')"
    );
    // crowd: 600 + the member, one tracked; few: 398 + the V1 socket.
    until("channels", &channels, "f 601 1 0, f 399 0 0");
    let who = format!(
        "SELECT format('%s %s %s %s', role, protocol_version, remote_address, channels) FROM realtime.connections WHERE sub = '{sub}'"
    );
    assert_eq!(psql(&who), "authenticated 2.0.0 127.0.0.1 1");
    assert_eq!(psql("SELECT count(*) FROM realtime.connections WHERE protocol_version = '1.0.0'"), "1");

    // Messages: 500 broadcasts in, each to 599 other sockets out.
    let sender = &mut clients[0];
    for i in 0..500 {
        sender.push(None, None, &crowd, "broadcast", json!({"event": "e", "payload": {"i": i}})).await;
    }
    for _ in 0..500 {
        clients[1].recv_event("broadcast").await;
    }
    until(
        "messages in and out",
        "SELECT bool_or(messages_in_per_second > 0 AND messages_out_per_second > 0) FROM realtime.stats",
        "t",
    );
    let figures = psql(
        "SELECT format('%s %s %s', worker_rss_bytes > 0, max_memory_bytes > 0, limit_trips ? 'MessagePerSecondRateLimitReached') \
         FROM realtime.stats",
    );
    assert_eq!(figures, "t t t");

    // Only roles that may read all statistics see them.
    assert!(try_psql("SET ROLE anon; SELECT * FROM realtime.stats").is_err());
    assert!(try_psql("SET ROLE pg_read_all_stats; SELECT count(*) FROM realtime.connections").is_ok());

    drop(clients);
    drop((v1, member));
    until("closed sockets", "SELECT sockets FROM realtime.stats", "0");

    // Postgres Changes under RLS: bindings per topic, commit → send times,
    // RLS checks and decode lag.
    let t = published_table("id int PRIMARY KEY, owner uuid");
    psql(&format!(
        "ALTER TABLE {t} ENABLE ROW LEVEL SECURITY; GRANT SELECT ON {t} TO authenticated;
         CREATE POLICY own ON {t} FOR SELECT TO authenticated USING (owner = auth.uid());"
    ));
    let topic = format!("realtime:{t}");
    let mut watcher = Client::connect(Vsn::V2, &jwt_with("authenticated", json!({"sub": sub}))).await;
    let bindings = json!([
        {"event": "INSERT", "schema": "public", "table": t},
        {"event": "UPDATE", "schema": "public", "table": t},
        {"event": "DELETE", "schema": "public", "table": t}
    ]);
    subscribed_changes(&mut watcher, &topic, bindings).await;
    let bindings = format!(
        "SELECT format('%s %s', postgres_changes_subscribers, postgres_changes_bindings) FROM realtime.channels WHERE topic = '{topic}'"
    );
    until("bindings per topic", &bindings, "1 3");
    // Five transactions (one psql each), each a row the watcher may read.
    const COMMITS: usize = 5;
    for i in 0..COMMITS {
        psql(&format!("INSERT INTO {t} VALUES ({i}, '{sub}')"));
    }
    for i in 0..COMMITS {
        assert_eq!(next_change(&mut watcher).await["data"]["record"]["id"], i);
    }
    // Commit → send: at least these five over the last minute, none slower
    // than the test waited; each row was checked as the watcher's claims.
    until(
        "commit to send and RLS figures",
        &format!(
            "SELECT commits_sent_last_minute >= {COMMITS} AND commit_to_send_p50_ms > 0 \
               AND commit_to_send_p50_ms <= commit_to_send_p99_ms AND commit_to_send_p99_ms < {wait} \
               AND rls_checks_last_minute >= {COMMITS} AND rls_check_p99_ms > 0 AND rls_check_p99_ms < {wait} \
               AND decode_lag_bytes >= 0 AND decode_lag_ms BETWEEN 0 AND {wait} \
             FROM realtime.stats",
            wait = DB_WAIT.as_millis() * COMMITS as u128
        ),
        "t",
    );
}
