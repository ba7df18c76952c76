//! The worker's lifecycle: settings reloads, restarts and crashes. Each test
//! disturbs every connection, so they take turns.

use realtime_e2e::*;
use serde_json::json;
use std::time::Duration;

/// Held for a whole test: the tests of this file take turns.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn wait_for_health() {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(format!("127.0.0.1:{}", ws_port())).await.is_ok()
            && get("/health").await.0 == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the worker did not come back within 10 s");
}

async fn expect_close(c: &mut Client, code: u16) {
    loop {
        let m = c.try_recv(Duration::from_secs(5)).await.expect("the socket is closed");
        if m.event == "socket_close" {
            assert_eq!(m.payload["code"], code, "{m:?}");
            return;
        }
    }
}

#[tokio::test]
async fn reloads_and_restarts() {
    let _turn = SERIAL.lock().await;
    wait_for_health().await;

    // private_only refuses public joins once reloaded.
    reload("ALTER SYSTEM SET realtime.private_only = on");
    let mut c = Client::connect(Vsn::V2, &jwt("anon")).await;
    let (_, reply) = c.join(&format!("realtime:{}", unique("pub")), json!({"config": {}})).await;
    assert_eq!(reply["response"]["reason"], "PrivateOnly: This project only allows private channels");
    reload("ALTER SYSTEM RESET realtime.private_only");
    c.join_ok(&format!("realtime:{}", unique("pub")), json!({})).await;

    // A new JWT secret disconnects every socket with 1012; old tokens stop working.
    reload("ALTER SYSTEM SET realtime.jwt_secret = 'another-secret-that-is-at-least-32-characters'");
    expect_close(&mut c, 1012).await;
    let refused = tokio_tungstenite::connect_async(ws_url(Vsn::V2, &jwt("anon"))).await;
    assert!(refused.is_err(), "a token signed with the old secret is refused");
    reload("ALTER SYSTEM RESET realtime.jwt_secret");
    let mut c = Client::connect(Vsn::V1, &jwt("anon")).await;
    c.join_ok(&format!("realtime:{}", unique("back")), json!({})).await;

    // pg_terminate_backend: sockets close with 1001 and the worker comes back.
    let pid = psql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'realtime'");
    assert!(!pid.is_empty(), "the worker shows in pg_stat_activity");
    psql(&format!("SELECT pg_terminate_backend({pid})"));
    expect_close(&mut c, 1001).await;
    wait_for_health().await;
    let mut c = Client::connect(Vsn::V2, &jwt("anon")).await;
    c.join_ok(&format!("realtime:{}", unique("after-restart")), json!({})).await;
    let new_pid = psql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'realtime'");
    assert_ne!(new_pid, pid);
}

/// psql that waits for the server to accept connections again.
fn psql_when_up(sql: &str) -> String {
    for _ in 0..300 {
        if try_psql("SELECT 1").is_ok() {
            return psql(sql);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the server did not come back within 30 s");
}

/// Reconnects and rejoins the way realtime-js does after a drop, as soon as
/// the worker listens again.
async fn rejoin(topic: &str) -> Client {
    for _ in 0..300 {
        if get("/health").await.0 == 200 {
            let mut c = Client::connect(Vsn::V2, &jwt("anon")).await;
            c.join_ok(topic, json!({})).await;
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the worker did not come back within 30 s");
}

/// Receives until every `n` in `expected` arrived, in that order; anything
/// else (an earlier message delivered again after a crash) is skipped.
async fn expect_in_order(c: &mut Client, expected: &[i64]) {
    let mut next = 0;
    while next < expected.len() {
        let m = c.try_recv(Duration::from_secs(15)).await.unwrap_or_else(|| panic!("missing n = {}", expected[next]));
        if m.event != "broadcast" {
            continue;
        }
        if let Some(n) = m.payload["payload"]["n"].as_i64() {
            if n == expected[next] {
                next += 1;
            } else {
                assert!(!expected[next..].contains(&n), "n = {n} arrived before n = {}", expected[next]);
            }
        }
    }
}

fn send_numbered(topic: &str, range: std::ops::RangeInclusive<i64>) {
    for n in range {
        psql_when_up(&format!("SELECT realtime.send('{{\"n\":{n}}}', 'e', '{topic}', false)"));
    }
}

#[tokio::test]
async fn messages_committed_while_the_worker_restarts_reach_rejoined_clients() {
    let _turn = SERIAL.lock().await;
    wait_for_health().await;
    let name = unique("durable");
    let topic = format!("realtime:{name}");
    let mut c = Client::connect(Vsn::V2, &jwt("anon")).await;
    c.join_ok(&topic, json!({})).await;
    send_numbered(&name, 1..=1);
    expect_in_order(&mut c, &[1]).await;

    let pid = psql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'realtime'");
    psql(&format!("SELECT pg_terminate_backend({pid})"));
    expect_close(&mut c, 1001).await;
    send_numbered(&name, 2..=6); // committed while the worker is down
    let mut c = rejoin(&topic).await;
    send_numbered(&name, 7..=8); // and after it is back
    expect_in_order(&mut c, &[2, 3, 4, 5, 6, 7, 8]).await;
}

#[tokio::test]
async fn messages_survive_a_crash_of_the_whole_cluster() {
    let _turn = SERIAL.lock().await;
    wait_for_health().await;
    let name = unique("crash");
    let topic = format!("realtime:{name}");
    let mut c = Client::connect(Vsn::V1, &jwt("anon")).await;
    c.join_ok(&topic, json!({})).await;
    send_numbered(&name, 1..=1);
    expect_in_order(&mut c, &[1]).await;

    // kill -9 makes the postmaster reinitialize every process: a crash restart.
    let pid = psql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'realtime'");
    let killed = std::process::Command::new("kill").args(["-9", &pid]).status().unwrap();
    assert!(killed.success());
    while let Some(m) = c.try_recv(Duration::from_secs(10)).await {
        if m.event == "socket_close" {
            break;
        }
    }
    send_numbered(&name, 2..=5); // committed once the cluster is back, before the client is
    let mut c = rejoin(&topic).await;
    expect_in_order(&mut c, &[2, 3, 4, 5]).await;
}
