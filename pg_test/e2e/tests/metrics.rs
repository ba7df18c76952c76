//! `/metrics`: off until `realtime.metrics_token` is set, then behind it as a
//! bearer token; it parses as Prometheus text and its figures follow what
//! this test does. One test, so no other test here moves the counters.

use realtime_e2e::*;
use serde_json::json;
use std::time::{Duration, Instant};

const TOKEN: &str = "scrape-me-e2e";

async fn scrape() -> prometheus_parse::Scrape {
    let bearer = format!("Bearer {TOKEN}");
    let a = http("GET", "/metrics", &[("Authorization", &bearer)], b"").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.header("content-type").unwrap_or_default().starts_with("text/plain"), "{:?}", a.headers);
    let lines = a.body.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines).expect("Prometheus text format")
}

/// A sample's value; `label` picks one series of a labelled metric.
fn value(s: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    let sample = s
        .samples
        .iter()
        .find(|m| m.metric == name && label.is_none_or(|(k, v)| m.labels.get(k) == Some(v)))
        .unwrap_or_else(|| panic!("no {name} {label:?} in the scrape"));
    match sample.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        ref other => panic!("{name}: unexpected {other:?}"),
    }
}

async fn until<F: AsyncFnMut() -> bool>(what: &str, mut check: F) {
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn metrics_are_off_then_behind_a_token_and_follow_the_traffic() {
    assert_eq!(get("/metrics").await.0, 404, "off by default");
    let _on = SystemSetting::set("realtime.metrics_token", TOKEN);
    let bearer = format!("Bearer {TOKEN}");
    until("the token to take effect", async || {
        http("GET", "/metrics", &[("Authorization", &bearer)], b"").await.status == 200
    })
    .await;
    assert_eq!(get("/metrics").await.0, 401, "no token");
    assert_eq!(http("GET", "/metrics", &[("Authorization", "Bearer nope")], b"").await.status, 401);
    assert_eq!(http("GET", "/realtime/v1/metrics", &[("Authorization", &bearer)], b"").await.status, 200);

    let before = scrape().await;
    let ok = |s| value(s, "realtime_joins_total", Some(("result", "ok")));
    let refused = |s| value(s, "realtime_refused_joins_total", Some(("code", "TopicNameRequired")));

    // 20 sockets on one topic, one of them sending 30 broadcasts; one refused join.
    const SOCKETS: usize = 20;
    const SENT: usize = 30;
    let topic = format!("realtime:{}", unique("metrics"));
    let mut clients = Vec::new();
    for _ in 0..SOCKETS {
        let mut c = Client::connect(Vsn::V2, &jwt("anon")).await;
        c.join_ok(&topic, json!({})).await;
        clients.push(c);
    }
    let (_, reply) = clients[0].join("realtime:", json!({"config": {}})).await;
    assert!(reply["response"]["reason"].as_str().unwrap_or_default().starts_with("TopicNameRequired"), "{reply}");
    clients[1].join_ok(&format!("realtime:{}", unique("sender")), json!({})).await;
    for i in 0..SENT {
        clients[1].push(None, None, &topic, "broadcast", json!({"event": "m", "payload": {"i": i}})).await;
    }
    for _ in 0..SENT {
        clients[0].recv_event("broadcast").await;
    }
    psql(&format!(
        "SELECT realtime.send('{{\"via\": \"db\"}}'::jsonb, 'db', '{}', false) FROM generate_series(1, 5)",
        topic.trim_start_matches("realtime:")
    ));
    // Past the other broadcasts (and a fresh worker's restart_grace).
    let (mut from_db, deadline) = (0, Instant::now() + Duration::from_secs(20));
    while from_db < 5 {
        assert!(Instant::now() < deadline, "{from_db} of 5 database messages arrived");
        if let Some(m) = clients[2].try_recv(Duration::from_millis(500)).await {
            from_db += usize::from(m.event == "broadcast" && m.payload["event"] == "db");
        }
    }

    let after = scrape().await;
    assert_eq!(ok(&after) - ok(&before), (SOCKETS + 1) as f64, "joins answered ok");
    assert_eq!(refused(&after) - refused(&before), 1.0, "the refused join, by its code");
    assert!(value(&after, "realtime_sockets", None) >= SOCKETS as f64);
    assert!(value(&after, "realtime_channels", None) >= 2.0);
    let frames_in = value(&after, "realtime_frames_in_total", None) - value(&before, "realtime_frames_in_total", None);
    assert!(frames_in >= (SOCKETS + 2 + SENT) as f64, "frames in: {frames_in}");
    // Every broadcast goes to the 19 other sockets, every database message
    // to all 20, each frame over 40 bytes; counted once written, so the
    // slowest writers may still be at it.
    let least = ((SENT * (SOCKETS - 1) + 5 * SOCKETS) * 40) as f64;
    let sent_before = value(&before, "realtime_bytes_out_total", None);
    until("bytes out to count every delivery", async || {
        value(&scrape().await, "realtime_bytes_out_total", None) - sent_before >= least
    })
    .await;
    let db = value(&after, "realtime_database_messages_total", None)
        - value(&before, "realtime_database_messages_total", None);
    assert!(db >= 5.0, "database messages: {db}");
    let fanned =
        value(&after, "realtime_fan_out_seconds_count", None) - value(&before, "realtime_fan_out_seconds_count", None);
    assert!(fanned >= 1.0, "fan-out observations: {fanned}");
    // The five database messages were one transaction: timed once from commit.
    let timed = value(&after, "realtime_commit_to_send_seconds_count", None)
        - value(&before, "realtime_commit_to_send_seconds_count", None);
    assert!(timed >= 1.0, "commit to send observations: {timed}");
    let took = value(&after, "realtime_commit_to_send_seconds_sum", None)
        - value(&before, "realtime_commit_to_send_seconds_sum", None);
    assert!(took > 0.0 && took / timed < 20.0, "commit to send: {took} s over {timed}");
    assert!(value(&after, "realtime_decode_lag_bytes", None) >= 0.0, "the decoder runs");
    assert!(value(&after, "realtime_decode_lag_seconds", None) >= 0.0, "the decoder runs");
    assert!(value(&after, "realtime_rls_checks_total", None) >= 0.0);
    assert!(value(&after, "realtime_rls_check_p99_seconds", None) >= 0.0);
    assert!(value(&after, "realtime_max_memory_bytes", None) > 0.0);

    // Closed sockets leave the gauge.
    let open = value(&after, "realtime_sockets", None);
    drop(clients);
    until("closed sockets to leave realtime_sockets", async || {
        value(&scrape().await, "realtime_sockets", None) <= open - SOCKETS as f64
    })
    .await;
}
