//! REST broadcast: both endpoints, with and without the /realtime/v1 prefix.

use realtime_e2e::*;
use serde_json::json;
use std::time::Duration;

const SHORT: Duration = Duration::from_millis(400);

fn auth(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn batch_endpoint_delivers_and_answers_202() {
    let name = unique("rest");
    let mut c = Client::connect(Vsn::V1, &jwt("anon")).await;
    c.join_ok(&format!("realtime:{name}"), json!({})).await;
    for path in ["/realtime/v1/api/broadcast", "/api/broadcast?apikey=x&vsn=2.0.0"] {
        let body = json!({"messages": [{"topic": name, "event": "e", "payload": {"via": path}, "private": false}]});
        let token = auth(&jwt("anon"));
        let (status, text) =
            post(path, &[("Authorization", &token), ("Content-Type", "application/json")], body.to_string().as_bytes())
                .await;
        assert_eq!(status, 202, "{path}: {text}");
        let m = c.recv_event("broadcast").await;
        assert_eq!(m.payload, json!({"type": "broadcast", "event": "e", "payload": {"via": path}}));
    }
}

#[tokio::test]
async fn batch_endpoint_errors() {
    let body = json!({"messages": [{"topic": "t", "event": "e", "payload": {}}]}).to_string();
    let (status, text) = post("/api/broadcast", &[("Authorization", "Bearer nope")], body.as_bytes()).await;
    assert_eq!((status, text.as_str()), (401, r#"{"message":"Unauthorized"}"#));
    let (status, _) = post("/api/broadcast", &[], body.as_bytes()).await;
    assert_eq!(status, 401);
    // The apikey header works too; a missing payload is 422.
    let key = jwt("anon");
    let missing = json!({"messages": [{"topic": "t", "event": "e"}]}).to_string();
    let (status, text) = post("/api/broadcast", &[("apikey", &key)], missing.as_bytes()).await;
    assert_eq!(status, 422);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["errors"]["messages"][0]["payload"][0],
        "can't be blank"
    );
}

#[tokio::test]
async fn single_endpoint_json_and_binary() {
    let name = unique("one/slash");
    let encoded = name.replace('/', "%2F");
    let mut v1 = Client::connect(Vsn::V1, &jwt("anon")).await;
    let mut v2 = Client::connect(Vsn::V2, &jwt("anon")).await;
    v1.join_ok(&format!("realtime:{name}"), json!({})).await;
    v2.join_ok(&format!("realtime:{name}"), json!({})).await;
    let token = auth(&jwt("anon"));
    let (status, _) = post(
        &format!("/realtime/v1/api/broadcast/{encoded}/events/hello?apikey=x&vsn=2.0.0"),
        &[("Authorization", &token), ("Content-Type", "application/json")],
        br#"{"a":1}"#,
    )
    .await;
    assert_eq!(status, 202);
    for c in [&mut v1, &mut v2] {
        let m = c.recv_event("broadcast").await;
        assert_eq!(m.payload["event"], "hello");
        assert_eq!(m.payload["payload"], json!({"a": 1}));
    }
    let (status, _) = post(
        &format!("/api/broadcast/{encoded}/events/bin"),
        &[("apikey", &jwt("anon")), ("Content-Type", "application/octet-stream")],
        &[1, 2, 3],
    )
    .await;
    assert_eq!(status, 202);
    let m = v2.recv_event("broadcast").await;
    assert_eq!(m.binary.as_deref(), Some(&[1u8, 2, 3][..]));
    v1.expect_silence(SHORT).await;
    let (status, _) =
        post(&format!("/api/broadcast/{encoded}/events/bad"), &[("apikey", &jwt("anon"))], b"{nope").await;
    assert_eq!(status, 422);
}

#[tokio::test]
async fn private_rest_messages_need_insert_permission() {
    psql(
        "DROP POLICY IF EXISTS e2e_rest_read ON realtime.messages;
         DROP POLICY IF EXISTS e2e_rest_write ON realtime.messages;
         CREATE POLICY e2e_rest_read ON realtime.messages FOR SELECT TO authenticated USING (realtime.topic() LIKE 'restp:%');
         CREATE POLICY e2e_rest_write ON realtime.messages FOR INSERT TO authenticated WITH CHECK (realtime.topic() LIKE 'restp:w:%');",
    );
    let reader = jwt_with("authenticated", json!({"sub": "reader"}));
    let writable = format!("restp:w:{}", unique("x"));
    let readonly = format!("restp:r:{}", unique("x"));
    let mut c = Client::connect(Vsn::V1, &reader).await;
    c.join_ok(&format!("realtime:{writable}"), json!({"private": true})).await;
    c.join_ok(&format!("realtime:{readonly}"), json!({"private": true})).await;
    let body = json!({"messages": [
        {"topic": readonly, "event": "denied", "payload": {}, "private": true},
        {"topic": writable, "event": "allowed", "payload": {}, "private": true}
    ]});
    let (status, _) = post("/api/broadcast", &[("Authorization", &auth(&reader))], body.to_string().as_bytes()).await;
    assert_eq!(status, 202, "denied messages are dropped, still 202");
    let m = c.recv_event("broadcast").await;
    assert_eq!(m.payload["event"], "allowed");
    c.expect_silence(SHORT).await;
}
