//! Supabase's tenant limits: each trips with Supabase's code and text, and
//! lets go again. The test cluster raises every limit (scripts/common.sh);
//! each test lowers one with ALTER SYSTEM, so they take turns. Rates are
//! rolling averages seen at 5 s ticks, so each test outlasts a tick.

use realtime_e2e::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const TICK: Duration = Duration::from_secs(5);

fn topic(prefix: &str) -> String {
    format!("realtime:{}", unique(prefix))
}

/// The `system` error that ends a channel, then its `phx_close`.
async fn expect_closed_with(c: &mut Client, topic: &str, message: &str) {
    let m = loop {
        let m = c.recv().await;
        if m.topic == topic && m.event == "system" {
            break m;
        }
    };
    assert_eq!(m.payload["status"], "error", "{m:?}");
    assert_eq!(m.payload["extension"], "system", "{m:?}");
    assert_eq!(m.payload["message"], message, "{m:?}");
    let close = c.recv().await;
    assert_eq!((close.topic.as_str(), close.event.as_str()), (topic, "phx_close"), "{close:?}");
}

#[tokio::test]
async fn joins_per_second_disconnect_the_socket() {
    let _turn = SERIAL.lock().await;
    let _limit = SystemSetting::set("realtime.max_joins_per_second", "2");
    let mut c = Client::connect(Vsn::V2, &jwt("anon")).await;
    let started = Instant::now();
    // 12 joins in the first 5 s: 2.4 joins/s, at or over the limit at the tick.
    for _ in 0..12 {
        c.join_ok(&topic("joins"), json!({})).await;
    }
    assert!(started.elapsed() < TICK, "the joins took a whole tick");
    tokio::time::sleep_until((started + TICK + Duration::from_millis(500)).into()).await;
    let (_, reply) = c.join(&topic("joins"), json!({"config": {}})).await;
    assert_eq!(reply["status"], "error");
    assert_eq!(reply["response"]["reason"], "ClientJoinRateLimitReached: Too many joins per second");
    let close = c.until_closed(Duration::from_secs(5)).await.expect("the socket is closed");
    assert_eq!(close["code"], 1000, "{close}");
    // Per socket: another one joins.
    let mut other = Client::connect(Vsn::V2, &jwt("anon")).await;
    other.join_ok(&topic("joins"), json!({})).await;
}

#[tokio::test]
async fn messages_per_second_close_the_channel_and_then_let_go() {
    let _turn = SERIAL.lock().await;
    let _limit = SystemSetting::set("realtime.max_events_per_second", "3");
    let room = topic("events");
    let mut c = Client::connect(Vsn::V2, &jwt("anon")).await;
    let started = Instant::now();
    let jr = c.join_ok(&room, json!({})).await;
    // 20 messages in the first tick: 4/s.
    for i in 0..20 {
        c.push(Some(&jr), None, &room, "broadcast", json!({"event": "e", "payload": {"i": i}})).await;
    }
    tokio::time::sleep_until((started + TICK + Duration::from_millis(500)).into()).await;
    c.push(Some(&jr), None, &room, "broadcast", json!({"event": "e", "payload": {"i": 20}})).await;
    expect_closed_with(&mut c, &room, "Too many messages per second").await;

    // Once the average is under the limit again (20 events over 2 ticks is
    // 2/s), the client's messages go through.
    let mut listener = Client::connect(Vsn::V2, &jwt("anon")).await;
    listener.join_ok(&room, json!({})).await;
    // The server's total counts a minute of every test's messages.
    let deadline = Instant::now() + Duration::from_secs(80);
    loop {
        assert!(Instant::now() < deadline, "the limit did not let go within 80 s");
        tokio::time::sleep(Duration::from_secs(3)).await;
        while c.try_recv(Duration::from_millis(100)).await.is_some() {} // the last refusal
        let jr = c.join_ok(&room, json!({})).await;
        c.push(Some(&jr), None, &room, "broadcast", json!({"event": "back", "payload": {}})).await;
        match listener.try_recv(Duration::from_secs(1)).await {
            Some(m) if m.event == "broadcast" => break,
            _ => {}
        }
    }
}

#[tokio::test]
async fn bytes_per_second_close_the_channel() {
    let _turn = SERIAL.lock().await;
    let _limit = SystemSetting::set("realtime.max_bytes_per_second", "1000");
    let room = topic("bytes");
    let mut c = Client::connect(Vsn::V2, &jwt("anon")).await;
    let started = Instant::now();
    let jr = c.join_ok(&room, json!({})).await;
    let kilobyte = "x".repeat(1000);
    for _ in 0..8 {
        c.push(Some(&jr), None, &room, "broadcast", json!({"event": "e", "payload": {"k": kilobyte}})).await;
    }
    tokio::time::sleep_until((started + TICK + Duration::from_millis(500)).into()).await;
    c.push(Some(&jr), None, &room, "broadcast", json!({"event": "e", "payload": {}})).await;
    expect_closed_with(&mut c, &room, "Too many bytes per second").await;
}

#[tokio::test]
async fn presence_events_per_second_close_joining_channels() {
    let _turn = SERIAL.lock().await;
    let _limit = SystemSetting::set("realtime.max_presence_events_per_second", "1");
    // The server's average spans a minute: 15 channels x (a state, 4 tracks
    // and their diffs) is 135 events, over 2 a second.
    let mut tracker = Client::connect(Vsn::V2, &jwt("anon")).await;
    for _ in 0..15 {
        let room = topic("presence");
        while tracker.try_recv(Duration::from_millis(50)).await.is_some() {} // the last channel's replies
        let jr = tracker.join_ok(&room, json!({"presence": {"enabled": true}})).await;
        for i in 0..4 {
            let r = tracker.make_ref();
            tracker.push(Some(&jr), Some(&r), &room, "presence", json!({"event": "track", "payload": {"i": i}})).await;
        }
    }
    // Past the server's next tick (ticks are not aligned with this test).
    tokio::time::sleep(TICK + Duration::from_secs(1)).await;
    let room = topic("presence");
    let mut late = Client::connect(Vsn::V2, &jwt("anon")).await;
    let (_, reply) = late.join(&room, json!({"config": {"presence": {"enabled": true}}})).await;
    assert_eq!(reply["status"], "ok", "{reply}");
    expect_closed_with(&mut late, &room, "Too many presence messages per second").await;
}

#[tokio::test]
async fn concurrent_users_are_counted_from_their_first_join() {
    let _turn = SERIAL.lock().await;
    // Sockets of other tests may still be closing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _limit = SystemSetting::set("realtime.max_concurrent_users", "1");
    let mut idle = Client::connect(Vsn::V2, &jwt("anon")).await; // not counted: no channel
    let mut first = Client::connect(Vsn::V2, &jwt("anon")).await;
    first.join_ok(&topic("users"), json!({})).await;
    // The one user may keep joining; nobody else may.
    first.join_ok(&topic("users"), json!({})).await;
    let (_, reply) = idle.join(&topic("users"), json!({"config": {}})).await;
    assert_eq!(reply["response"]["reason"], "ConnectionRateLimitReached: Too many connected users");
    let refused = get(&format!("/realtime/v1/websocket?apikey={}&vsn=2.0.0", jwt("anon"))).await;
    assert_eq!(refused.0, 429);
    assert_eq!(serde_json::from_str::<Value>(&refused.1).unwrap(), json!({"error": "Too many connected users"}));
    // When the user leaves, the idle socket gets its turn.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, reply) = idle.join(&topic("users"), json!({"config": {}})).await;
        if reply["status"] == "ok" {
            break;
        }
        assert!(Instant::now() < deadline, "still refused 10 s after the user left: {reply}");
    }
}

#[tokio::test]
async fn postgres_changes_bindings_per_join_are_limited() {
    let _turn = SERIAL.lock().await;
    let _limit = SystemSetting::set("realtime.max_postgres_changes_per_join", "2");
    let binding = json!({"event": "*", "schema": "public", "table": "limits_nothing"});
    let mut c = Client::connect(Vsn::V2, &jwt("anon")).await;
    let (_, reply) = c.join(&topic("pc"), json!({"config": {"postgres_changes": [binding, binding, binding]}})).await;
    assert_eq!(reply["status"], "error");
    assert_eq!(
        reply["response"]["reason"],
        "TooManyPostgresChanges: A channel may listen to at most 2 postgres_changes bindings"
    );
    let (_, reply) = c.join(&topic("pc"), json!({"config": {"postgres_changes": [binding, binding]}})).await;
    assert_eq!(reply["status"], "ok", "{reply}");
}

fn service() -> String {
    format!("Bearer {}", jwt("service_role"))
}

#[tokio::test]
async fn rest_broadcasts_are_limited_with_supabases_headers_and_texts() {
    let _turn = SERIAL.lock().await;
    // Averages span a minute: at 1 message/s, 60 in a minute reach the limit.
    let _limit = SystemSetting::set("realtime.max_events_per_second", "1");
    let auth = service();
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
    let name = unique("rest");
    let path = format!("/api/broadcast/{name}/events/e");

    // Earlier tests' messages may still weigh on the average: wait until a
    // message is let through (one every 2 s lets the average fall).
    let deadline = Instant::now() + Duration::from_secs(80);
    while http("POST", &path, &headers, br#"{"n":0}"#).await.status != 202 {
        assert!(Instant::now() < deadline, "the message average did not fall under 1/s within 80 s");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    // A batch that would take the average past the limit.
    let message = json!({"topic": name, "event": "e", "payload": {"n": 1}});
    let batch = json!({"messages": vec![message; 30]}).to_string();
    let a = http("POST", "/api/broadcast", &headers, batch.as_bytes()).await;
    assert_eq!(a.status, 429, "{}", a.body);
    assert_eq!(
        serde_json::from_str::<Value>(&a.body).unwrap(),
        json!({"message": "Too many messages to broadcast, please reduce the batch size"})
    );
    assert_eq!(a.header("x-rate-limit"), Some("1"));
    assert!(a.header("x-rate-rolling").is_some() && a.header("x-rate-limit-remaining").is_some());

    // 35 single messages, each also delivered to a listener (a delivery
    // counts too): 70 in the minute. After the next tick they are refused,
    // while the request rate (35 in a minute) is still under the limit.
    let mut listener = Client::connect(Vsn::V2, &jwt("anon")).await;
    listener.join_ok(&format!("realtime:{name}"), json!({})).await;
    for _ in 0..35 {
        let a = http("POST", &path, &headers, br#"{"n":1}"#).await;
        assert_eq!(a.status, 202, "{}", a.body);
    }
    for _ in 0..35 {
        assert_eq!(listener.recv_event("broadcast").await.payload["payload"]["n"], 1);
    }
    tokio::time::sleep(TICK + Duration::from_millis(500)).await;
    let a = http("POST", &path, &headers, br#"{"n":2}"#).await;
    assert_eq!(a.status, 429, "{}", a.body);
    assert_eq!(
        serde_json::from_str::<Value>(&a.body).unwrap(),
        json!({"message": "You have exceeded your rate limit"})
    );
    listener.expect_silence(Duration::from_millis(300)).await;

    // Requests past the limit: from the next second on, Supabase's plug
    // refuses them all before anything else.
    for _ in 0..40 {
        http("POST", "/api/broadcast", &headers, b"{}").await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let a = http("POST", "/api/broadcast", &headers, b"{}").await;
    assert_eq!(a.status, 429);
    assert_eq!(serde_json::from_str::<Value>(&a.body).unwrap(), json!({"message": "Too many requests"}));
    let rolling: i64 = a.header("x-rate-rolling").unwrap().parse().unwrap();
    let remaining: i64 = a.header("x-rate-limit-remaining").unwrap().parse().unwrap();
    assert!(rolling >= 1 && remaining == 1 - rolling, "rolling {rolling}, remaining {remaining}");
}

/// Private joins from a flooding client wait for the worker in that client's
/// own share of the queue: another client's join is answered promptly.
#[tokio::test]
async fn a_flooding_client_does_not_delay_another_clients_join() {
    let _turn = SERIAL.lock().await;
    psql(
        "DROP POLICY IF EXISTS e2e_limits_read ON realtime.messages;
         CREATE POLICY e2e_limits_read ON realtime.messages FOR SELECT TO authenticated
           USING (realtime.topic() LIKE 'lim:%')",
    );
    let token = jwt_with("authenticated", json!({"sub": "flooder"}));
    let mut flooders = Vec::new();
    for _ in 0..3 {
        let mut f = Client::connect(Vsn::V2, &token).await;
        for i in 0..600 {
            let t = format!("realtime:lim:flood{}", i % 50);
            let r = f.make_ref();
            f.push(Some(&r), Some(&r), &t, "phx_join", json!({"config": {"private": true}})).await;
        }
        flooders.push(f);
    }
    let mut c = Client::connect(Vsn::V2, &jwt_with("authenticated", json!({"sub": "patient"}))).await;
    let started = Instant::now();
    c.join_ok(&format!("realtime:lim:{}", unique("calm")), json!({"private": true})).await;
    let waited = started.elapsed();
    eprintln!("a join behind 1,800 flooding private joins was answered in {waited:?}");
    assert!(waited < Duration::from_secs(1), "the other client's join took {waited:?} behind 1,800 flooding joins");
    drop(flooders);
}
