//! Private channels under RLS on realtime.messages, and replay. The policies
//! admit topics by prefix, so each test's topics are its own.

use realtime_e2e::*;
use serde_json::json;
use std::sync::Once;
use std::time::{Duration, Instant};

const SHORT: Duration = Duration::from_millis(400);

/// Policies (idempotent): `authenticated` reads `read:*` and `rw:*` topics and
/// writes `rw:*` topics; a user reads `user:<sub>` only; `broken:*` raises;
/// on `pres:*` everyone may broadcast and track, only `sub = seer` reads presence.
fn policies() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        psql(
            r#"
            DROP POLICY IF EXISTS e2e_read ON realtime.messages;
            DROP POLICY IF EXISTS e2e_write ON realtime.messages;
            DROP POLICY IF EXISTS e2e_own ON realtime.messages;
            DROP POLICY IF EXISTS e2e_broken ON realtime.messages;
            DROP POLICY IF EXISTS e2e_pres_read ON realtime.messages;
            DROP POLICY IF EXISTS e2e_pres_write ON realtime.messages;
            CREATE POLICY e2e_read ON realtime.messages FOR SELECT TO authenticated
              USING (realtime.topic() LIKE 'read:%' OR realtime.topic() LIKE 'rw:%');
            CREATE POLICY e2e_write ON realtime.messages FOR INSERT TO authenticated
              WITH CHECK (realtime.topic() LIKE 'rw:%');
            CREATE POLICY e2e_own ON realtime.messages FOR SELECT TO authenticated
              USING (realtime.topic() = 'user:' || (current_setting('request.jwt.claims', true)::jsonb ->> 'sub'));
            CREATE POLICY e2e_broken ON realtime.messages FOR SELECT TO authenticated
              USING (CASE WHEN realtime.topic() LIKE 'broken:%'
                           THEN 1 / (length(realtime.topic()) - length(realtime.topic())) = 1 ELSE false END);
            CREATE POLICY e2e_pres_read ON realtime.messages FOR SELECT TO authenticated
              USING (realtime.topic() LIKE 'pres:%' AND (extension = 'broadcast'
                     OR current_setting('request.jwt.claims', true)::jsonb ->> 'sub' = 'seer'));
            CREATE POLICY e2e_pres_write ON realtime.messages FOR INSERT TO authenticated
              WITH CHECK (realtime.topic() LIKE 'pres:%');
            "#,
        );
    });
}

fn user(sub: &str) -> String {
    jwt_with("authenticated", json!({"sub": sub}))
}

#[tokio::test]
async fn denied_without_a_policy_allowed_with_one() {
    policies();
    let mut c = Client::connect(Vsn::V2, &user("u1")).await;
    let name = unique("secret");
    let started = std::time::Instant::now();
    let (_, reply) = c.join(&format!("realtime:{name}"), json!({"config": {"private": true}})).await;
    assert_eq!(
        reply["response"]["reason"],
        format!("Unauthorized: You do not have permissions to read from this Channel topic: {name}")
    );
    assert!(started.elapsed() < Duration::from_secs(9), "answered inside the client's join timeout");
    // anon has no policy at all.
    let mut anon = Client::connect(Vsn::V1, &jwt("anon")).await;
    let (_, reply) = anon.join(&format!("realtime:read:{name}"), json!({"config": {"private": true}})).await;
    assert_eq!(reply["status"], "error");
    // The read policy admits authenticated.
    c.join_ok(&format!("realtime:read:{name}"), json!({"private": true})).await;
}

#[tokio::test]
async fn policies_see_the_claims() {
    policies();
    let mut alice = Client::connect(Vsn::V1, &user("alice")).await;
    alice.join_ok("realtime:user:alice", json!({"private": true})).await;
    let (_, reply) = alice.join("realtime:user:bob", json!({"config": {"private": true}})).await;
    assert_eq!(reply["status"], "error");
}

#[tokio::test]
async fn a_broken_policy_denies_that_join_only() {
    policies();
    let mut c = Client::connect(Vsn::V2, &user("u2")).await;
    let (_, reply) = c.join(&format!("realtime:broken:{}", unique("x")), json!({"config": {"private": true}})).await;
    assert!(reply["response"]["reason"].as_str().unwrap().starts_with("Unauthorized"), "{reply}");
    c.join_ok(&format!("realtime:read:{}", unique("after")), json!({"private": true})).await;
}

#[tokio::test]
async fn read_only_members_receive_but_their_sends_are_dropped() {
    policies();
    let name = unique("ro");
    let mut reader = Client::connect(Vsn::V2, &user("r")).await;
    let mut writer = Client::connect(Vsn::V2, &user("w")).await;
    let rjr = reader
        .join_ok(&format!("realtime:read:{name}"), json!({"private": true, "broadcast": {"ack": true, "self": true}}))
        .await;
    // A read-only member's push: no ack, not delivered, not even to itself.
    reader
        .push(
            Some(&rjr),
            Some("5"),
            &format!("realtime:read:{name}"),
            "broadcast",
            json!({"type":"broadcast","event":"e","payload":{}}),
        )
        .await;
    reader.expect_silence(SHORT).await;

    let topic = format!("realtime:rw:{name}");
    let r2 = reader.join_ok(&topic, json!({"private": true})).await;
    let wjr = writer.join_ok(&topic, json!({"private": true, "broadcast": {"ack": true}})).await;
    writer
        .push(Some(&wjr), Some("6"), &topic, "broadcast", json!({"type":"broadcast","event":"w","payload":{"ok":true}}))
        .await;
    assert_eq!(writer.recv_event("phx_reply").await.payload["status"], "ok");
    let m = reader.recv_event("broadcast").await;
    assert_eq!(m.payload["payload"], json!({"ok": true}));
    let _ = r2;
}

#[tokio::test]
async fn refreshing_to_a_token_without_access_closes_the_channel() {
    policies();
    let mut c = Client::connect(Vsn::V1, &user("carol")).await;
    let jr = c.join_ok("realtime:user:carol", json!({"private": true})).await;
    c.push(Some(&jr), Some("2"), "realtime:user:carol", "access_token", json!({"access_token": user("mallory")})).await;
    let m = c.recv_event("system").await;
    assert_eq!(m.payload["message"], "You no longer have permission to read from this Channel topic: user:carol");
    c.recv_event("phx_close").await;
}

#[tokio::test]
async fn private_only_refuses_public_joins() {
    // Covered by setting the GUC on a live cluster in lifecycle.rs; here the
    // default (off) admits public joins.
    let mut c = Client::connect(Vsn::V2, &jwt("anon")).await;
    c.join_ok(&format!("realtime:{}", unique("public")), json!({})).await;
}

#[tokio::test]
async fn replay_returns_the_latest_stored_messages_oldest_first() {
    policies();
    let name = format!("read:{}", unique("replay"));
    let since = (now() - 60) * 1000;
    for i in 1..=3 {
        psql(&format!("SELECT realtime.send('{{\"i\":{i}}}', 'ev', '{name}', true)"));
    }
    psql(&format!("SELECT realtime.send('{{\"public\":true}}', 'ev', '{name}', false)"));
    let mut c = Client::connect(Vsn::V2, &user("replayer")).await;
    c.join_ok(
        &format!("realtime:{name}"),
        json!({"private": true, "broadcast": {"replay": {"since": since, "limit": 2}}}),
    )
    .await;
    let mut got = Vec::new();
    while let Some(m) = c.try_recv(SHORT).await {
        if m.event == "broadcast" {
            assert_eq!(m.payload["meta"]["replayed"], true);
            assert!(m.payload["meta"]["id"].is_string());
            got.push(m.payload["payload"]["i"].as_i64().unwrap());
        }
    }
    assert_eq!(got, vec![2, 3]);
}

#[tokio::test]
async fn a_refused_join_holds_up_only_its_own_reply() {
    policies();
    let mut c = Client::connect(Vsn::V2, &user("waiter")).await;
    let started = Instant::now();
    let denied = format!("realtime:denied:{}", unique("x"));
    c.push(Some("5"), Some("5"), &denied, "phx_join", json!({"config": {"private": true}})).await;
    c.push(None, Some("6"), "phoenix", "heartbeat", json!({})).await;
    let heartbeat = c.recv().await;
    assert_eq!((heartbeat.topic.as_str(), heartbeat.msg_ref.as_deref()), ("phoenix", Some("6")));
    // Another channel joins while the refusal waits out realtime.join_error_delay.
    c.join_ok(&format!("realtime:read:{}", unique("x")), json!({"private": true})).await;
    let answered = started.elapsed();
    let refusal = c.recv_event("phx_reply").await;
    assert_eq!(refusal.msg_ref.as_deref(), Some("5"));
    assert!(refusal.payload["response"]["reason"].as_str().unwrap().starts_with("Unauthorized"));
    println!("heartbeat and another join answered after {answered:?}; the refusal after {:?}", started.elapsed());
    assert!(answered < Duration::from_millis(500), "the socket waited {answered:?} behind a refused join");
    assert!(started.elapsed() >= Duration::from_millis(900), "the refusal keeps its delay");
}

/// Joins that reach the worker together are probed in one subtransaction;
/// each still gets its own answer (several sockets, so the per-socket
/// request bound does not space them out).
#[tokio::test]
async fn joins_that_arrive_together_each_get_their_answer() {
    policies();
    let mut sockets = Vec::new();
    for n in 0..8 {
        let mut c = Client::connect(Vsn::V2, &user(&format!("batch{n}"))).await;
        let allowed = format!("realtime:read:{}", unique("batch"));
        let denied = format!("realtime:denied:{}", unique("batch"));
        c.push(Some("1"), Some("1"), &allowed, "phx_join", json!({"config": {"private": true}})).await;
        c.push(Some("2"), Some("2"), &denied, "phx_join", json!({"config": {"private": true}})).await;
        sockets.push(c);
    }
    for c in &mut sockets {
        let mut statuses = std::collections::BTreeMap::new();
        for _ in 0..2 {
            let reply = c.recv_event("phx_reply").await;
            statuses.insert(reply.msg_ref.clone().unwrap(), reply.payload["status"].as_str().unwrap().to_owned());
        }
        assert_eq!(statuses.get("1").map(String::as_str), Some("ok"), "{statuses:?}");
        assert_eq!(statuses.get("2").map(String::as_str), Some("error"), "{statuses:?}");
    }
}

#[tokio::test]
async fn presence_reaches_only_members_whose_policy_reads_it() {
    policies();
    let topic = format!("realtime:pres:{}", unique("room"));
    let presence = json!({"private": true, "presence": {"enabled": true}});
    let mut seer = Client::connect(Vsn::V2, &user("seer")).await;
    let mut blind = Client::connect(Vsn::V2, &user("blind")).await;
    let mut later = Client::connect(Vsn::V2, &user("blind")).await;
    let seer_ref = seer.join_ok(&topic, presence.clone()).await;
    assert_eq!(seer.recv_event("presence_state").await.payload, json!({}));
    let blind_ref = blind.join_ok(&topic, presence).await;
    // A member denied presence gets the join, but no presence state...
    blind.expect_silence(SHORT).await;
    let later_ref = later.join_ok(&topic, json!({"private": true})).await;
    let track = |name: &str| json!({"type": "presence", "event": "track", "payload": {"name": name}});
    seer.push(Some(&seer_ref), Some("10"), &topic, "presence", track("seer")).await;
    assert_eq!(seer.recv_event("phx_reply").await.payload["status"], "ok");
    assert!(seer.recv_event("presence_diff").await.payload["joins"].is_object());
    // ... and no diffs, even after tracking itself (which its write policy allows).
    blind.push(Some(&blind_ref), Some("11"), &topic, "presence", track("blind")).await;
    assert_eq!(blind.recv_event("phx_reply").await.payload["status"], "ok");
    // A track turns presence on for a join that did not ask for it: checked too.
    later.push(Some(&later_ref), Some("12"), &topic, "presence", track("later")).await;
    assert_eq!(later.recv_event("phx_reply").await.payload["status"], "ok");
    blind.expect_silence(SHORT).await;
    later.expect_silence(SHORT).await;
    // The one who may read sees everyone's joins.
    let mut names = Vec::new();
    while let Some(m) = seer.try_recv(SHORT).await {
        if m.event == "presence_diff" {
            for metas in m.payload["joins"].as_object().unwrap().values() {
                names.push(metas["metas"][0]["name"].as_str().unwrap().to_owned());
            }
        }
    }
    names.sort();
    assert_eq!(names, ["blind", "later"]);
}
