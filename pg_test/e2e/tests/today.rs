//! What a Supabase app of today sends: opaque `sb_` API keys, `x-api-key`,
//! browsers' CORS preflights, the health probes of Supabase's compose file,
//! policies reading `request.headers`, signing keys from a JWKS URL that
//! rotates, replay beside restart grace, the join-rate trip, cumulative
//! counters in `realtime.stats`, and `log_level` on the connect URL. The
//! official-client side of the same is in pg_test/clients. Tests take turns:
//! some restart the worker or count its traffic.

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use realtime_e2e::*;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const SHORT: Duration = Duration::from_millis(500);

/// `authenticated` reads `today:*`; reads and writes `pass:*` only when the
/// request carried `x-room-pass: open`.
fn policies() {
    psql(
        "DROP POLICY IF EXISTS today_read ON realtime.messages;
         DROP POLICY IF EXISTS today_pass_read ON realtime.messages;
         DROP POLICY IF EXISTS today_pass_write ON realtime.messages;
         CREATE POLICY today_read ON realtime.messages FOR SELECT TO authenticated, service_role
           USING (realtime.topic() LIKE 'today:%');
         CREATE POLICY today_pass_read ON realtime.messages FOR SELECT TO authenticated
           USING (realtime.topic() LIKE 'pass:%'
                  AND current_setting('request.headers', true)::jsonb ->> 'x-room-pass' = 'open');
         CREATE POLICY today_pass_write ON realtime.messages FOR INSERT TO authenticated
           WITH CHECK (realtime.topic() LIKE 'pass:%'
                       AND current_setting('request.headers', true)::jsonb ->> 'x-room-pass' = 'open');",
    );
}

fn user() -> String {
    jwt_with("authenticated", json!({"sub": "00000000-0000-4000-8000-0000000000d1"}))
}

async fn connect_refusal(url_path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let a = http("GET", url_path, headers, b"").await;
    let error = serde_json::from_str::<Value>(&a.body).ok().and_then(|b| b["error"].as_str().map(str::to_owned));
    (a.status, error.unwrap_or(a.body))
}

#[tokio::test]
async fn opaque_api_keys_stand_for_their_roles_everywhere() {
    let _turn = SERIAL.lock().await;
    policies();
    // A publishable key connects as anon; its own key as access_token falls back to it.
    let mut c = Client::connect(Vsn::V2, PUBLISHABLE_KEY).await;
    let topic = format!("realtime:{}", unique("sb"));
    let (jr, reply) =
        c.join(&topic, json!({"config": {"broadcast": {"self": true}}, "access_token": PUBLISHABLE_KEY})).await;
    assert_eq!(reply["status"], "ok", "{reply}");
    let hi = json!({"type": "broadcast", "event": "hi", "payload": {"n": 1}});
    c.push(Some(&jr), Some("b1"), &topic, "broadcast", hi).await;
    let m = c.recv_event("broadcast").await;
    assert_eq!(m.payload["payload"]["n"], 1, "{m:?}");
    // A secret key is service_role: a REST broadcast to a private channel reaches its subscriber.
    let private = unique("today:sb");
    let mut reader = Client::connect(Vsn::V2, &user()).await;
    reader.join_ok(&format!("realtime:{private}"), json!({"private": true})).await;
    psql(
        "DROP POLICY IF EXISTS today_service_write ON realtime.messages;
          CREATE POLICY today_service_write ON realtime.messages FOR INSERT TO service_role WITH CHECK (true)",
    );
    let body = json!({"messages": [{"topic": private, "event": "secret", "payload": {"n": 2}, "private": true}]});
    let bearer = format!("Bearer {SECRET_KEY}");
    for (name, value) in [("apikey", SECRET_KEY), ("authorization", bearer.as_str())] {
        let headers = [(name, value), ("content-type", "application/json")];
        let (status, _) = post("/realtime/v1/api/broadcast", &headers, body.to_string().as_bytes()).await;
        assert_eq!(status, 202);
        let m = reader.recv_event("broadcast").await;
        assert_eq!(m.payload["event"], "secret", "{m:?}");
    }
    // An unknown key is refused, naming the setting.
    let (status, error) =
        connect_refusal("/realtime/v1/websocket?apikey=sb_publishable_unknown_000000000&vsn=2.0.0", &[]).await;
    assert_eq!(status, 401);
    assert!(error.contains("realtime.api_keys"), "{error}");
    // x-api-key comes first, as Supabase reads it: a valid JWT there, junk in apikey.
    let url = format!("ws://127.0.0.1:{}/realtime/v1/websocket?apikey=junk&vsn=2.0.0", ws_port());
    let mut c = Client::connect_with_headers(Vsn::V2, &url, &[("x-api-key", &jwt("anon"))]).await;
    c.join_ok(&format!("realtime:{}", unique("x-api-key")), json!({})).await;
    // Supabase's connect errors: JSON {error}, its statuses and texts.
    let expired = jwt_with("anon", json!({"exp": now() - 10}));
    assert_eq!(
        connect_refusal(&format!("/realtime/v1/websocket?apikey={expired}&vsn=2.0.0"), &[]).await,
        (401, "Token has expired".into())
    );
    assert_eq!(connect_refusal("/realtime/v1/websocket?vsn=2.0.0", &[]).await, (401, "API key is missing".into()));
}

#[tokio::test]
async fn broadcast_routes_are_cors_open() {
    let _turn = SERIAL.lock().await;
    for path in ["/realtime/v1/api/broadcast", "/api/broadcast/room/events/e"] {
        let asked = "authorization, apikey, content-type, x-client-info";
        let a = http(
            "OPTIONS",
            path,
            &[
                ("origin", "http://app.example"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", asked),
            ],
            b"",
        )
        .await;
        assert_eq!(a.status, 200, "{path}");
        assert_eq!(a.header("access-control-allow-origin"), Some("*"), "{path}");
        assert!(a.header("access-control-allow-methods").is_some_and(|m| m.contains("POST")), "{path}");
        assert_eq!(a.header("access-control-allow-headers"), Some(asked), "{path}");
    }
    let body = json!({"messages": [{"topic": "cors", "event": "e", "payload": {}}]}).to_string();
    let anon = jwt("anon");
    let a = http(
        "POST",
        "/realtime/v1/api/broadcast",
        &[("origin", "http://app.example"), ("apikey", &anon), ("content-type", "application/json")],
        body.as_bytes(),
    )
    .await;
    assert_eq!(a.status, 202);
    assert_eq!(a.header("access-control-allow-origin"), Some("*"));
}

#[tokio::test]
async fn supabase_s_health_probes_answer() {
    let _turn = SERIAL.lock().await;
    for prefix in ["", "/realtime/v1"] {
        assert_eq!(get(&format!("{prefix}/healthcheck")).await, (200, "ok".into()));
        let (status, body) = get(&format!("{prefix}/api/ping")).await;
        assert_eq!((status, serde_json::from_str::<Value>(&body).unwrap()), (200, json!({"message": "Success"})));
        let path = format!("{prefix}/api/tenants/realtime-dev/health");
        assert_eq!(http("GET", &path, &[], b"").await.status, 403);
        let bearer = format!("Bearer {}", jwt("anon"));
        let a = http("GET", &path, &[("authorization", &bearer)], b"").await;
        assert_eq!(a.status, 200, "{}", a.body);
        let health: Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(health["data"]["healthy"], true, "{health}");
        assert_eq!(health["data"]["db_connected"], true, "{health}");
        assert!(health["data"]["connected_cluster"].is_u64(), "{health}");
    }
}

#[tokio::test]
async fn policies_read_the_request_s_x_headers() {
    let _turn = SERIAL.lock().await;
    policies();
    let url = ws_url(Vsn::V2, &user());
    let topic = format!("realtime:{}", unique("pass:room"));
    let mut with = Client::connect_with_headers(Vsn::V2, &url, &[("x-room-pass", "open")]).await;
    let jr = with.join_ok(&topic, json!({"private": true, "broadcast": {"self": true, "ack": true}})).await;
    let mut without = Client::connect(Vsn::V2, &user()).await;
    let (_, reply) = without.join(&topic, json!({"config": {"private": true}})).await;
    assert_eq!(reply["status"], "error", "{reply}");
    let mut wrong = Client::connect_with_headers(Vsn::V2, &url, &[("x-room-pass", "shut")]).await;
    let (_, reply) = wrong.join(&topic, json!({"config": {"private": true}})).await;
    assert_eq!(reply["status"], "error", "{reply}");
    // Its writes are checked with the same headers.
    with.push(Some(&jr), Some("w1"), &topic, "broadcast", json!({"type": "broadcast", "event": "e", "payload": {}}))
        .await;
    let mut events = Vec::new();
    for _ in 0..2 {
        let m = with.recv().await;
        events.push(m.event.clone());
        if m.event == "phx_reply" {
            assert_eq!(m.payload["status"], "ok", "{m:?}");
        }
    }
    assert!(events.contains(&"broadcast".to_owned()), "{events:?}");
    // REST: the request's own x- headers.
    let sub_topic = topic.trim_start_matches("realtime:");
    let body = json!({"messages": [{"topic": sub_topic, "event": "rest", "payload": {}, "private": true}]}).to_string();
    let bearer = format!("Bearer {}", user());
    let plain = [("authorization", bearer.as_str()), ("content-type", "application/json")];
    assert_eq!(post("/api/broadcast", &plain, body.as_bytes()).await.0, 202);
    with.expect_silence(SHORT).await;
    let passing = [plain[0], plain[1], ("x-room-pass", "open")];
    assert_eq!(post("/api/broadcast", &passing, body.as_bytes()).await.0, 202);
    let m = with.recv_event("broadcast").await;
    assert_eq!(m.payload["event"], "rest", "{m:?}");
}

#[tokio::test]
async fn a_replay_beside_restart_grace_delivers_each_message_once() {
    let _turn = SERIAL.lock().await;
    policies();
    let name = unique("today:grace");
    let since = (now() - 60) * 1000;
    restart_worker().await;
    // Twenty sends in one transaction while the new worker holds broadcasts for its grace.
    psql(&format!(
        "BEGIN; SELECT realtime.send(jsonb_build_object('n', i), 'e', '{name}', true) FROM generate_series(1, 20) i; COMMIT;"
    ));
    let mut c = Client::connect(Vsn::V2, &user()).await;
    c.join_ok(
        &format!("realtime:{name}"),
        json!({"private": true, "broadcast": {"replay": {"since": since, "limit": 25}}}),
    )
    .await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    // The grace is 5 s by default: wait it out.
    let deadline = Instant::now() + Duration::from_secs(8);
    while Instant::now() < deadline {
        if let Some(m) = c.try_recv(Duration::from_millis(200)).await
            && m.event == "broadcast"
        {
            *seen.entry(m.payload["payload"]["id"].as_str().unwrap_or_default().to_owned()).or_default() += 1;
        }
    }
    assert_eq!(seen.len(), 20, "{seen:?}");
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "arrived more than once: {twice:?}");
}

struct SigningKey {
    kid: &'static str,
    alg: Algorithm,
    key: EncodingKey,
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).expect("a test key")
}

fn jwks(key: &SigningKey) -> String {
    let mut jwk = Jwk::from_encoding_key(&key.key, key.alg).unwrap();
    jwk.common.key_id = Some(key.kid.to_owned());
    serde_json::to_string(&JwkSet { keys: vec![jwk] }).unwrap()
}

fn sign(key: &SigningKey) -> String {
    let mut header = Header::new(key.alg);
    header.kid = Some(key.kid.to_owned());
    let claims = json!({"role": "authenticated", "exp": now() + 3600, "sub": "rotated"});
    jsonwebtoken::encode(&header, &claims, &key.key).unwrap()
}

/// A JWKS endpoint on loopback: answers `(status, body)` as set, counts requests.
async fn serve_jwks(answer: Arc<Mutex<(u16, String)>>, fetches: Arc<Mutex<u32>>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (answer, fetches) = (answer.clone(), fetches.clone());
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                *fetches.lock().unwrap() += 1;
                let (status, body) = answer.lock().unwrap().clone();
                let text = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(text.as_bytes()).await;
            });
        }
    });
    port
}

async fn connects(token: &str) -> bool {
    let url = ws_url(Vsn::V2, token);
    tokio_tungstenite::connect_async(&url).await.is_ok()
}

#[tokio::test]
async fn signing_keys_come_from_a_jwks_url_and_follow_its_rotation() {
    let _turn = SERIAL.lock().await;
    let ec = SigningKey {
        kid: "ec-url",
        alg: Algorithm::ES256,
        key: EncodingKey::from_ec_pem(&fixture("es256.pem")).unwrap(),
    };
    let rsa = SigningKey {
        kid: "rsa-url",
        alg: Algorithm::RS256,
        key: EncodingKey::from_rsa_pem(&fixture("rs256.pem")).unwrap(),
    };
    let answer = Arc::new(Mutex::new((200, jwks(&ec))));
    let fetches = Arc::new(Mutex::new(0));
    let port = serve_jwks(answer.clone(), fetches.clone()).await;
    let _url =
        SystemSetting::set("realtime.jwt_jwks_url", &format!("http://127.0.0.1:{port}/auth/v1/.well-known/jwks.json"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while *fetches.lock().unwrap() == 0 {
        assert!(Instant::now() < deadline, "the worker did not fetch the key set");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(connects(&sign(&ec)).await, "a token signed with the published key");
    assert!(!connects(&sign(&rsa)).await, "an unpublished key is refused");
    // The auth server rotates: the next token names a kid the worker does not
    // know yet, long before the ten-minute refresh.
    *answer.lock().unwrap() = (200, jwks(&rsa));
    tokio::time::sleep(Duration::from_millis(5500)).await; // past the least time between fetches
    assert!(connects(&sign(&rsa)).await, "the rotated key, fetched when a token named it");
    // A failing fetch keeps the last good set.
    *answer.lock().unwrap() = (500, "oops".into());
    tokio::time::sleep(Duration::from_millis(5500)).await;
    let _ = connects(&sign(&ec)).await; // an unknown kid asks for a fetch, which fails
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(connects(&sign(&rsa)).await, "the last good set is kept");
    // The static secret works beside it all along.
    assert!(connects(&jwt("anon")).await);
}

#[tokio::test]
async fn the_join_rate_trip_sends_its_reply_and_a_clean_close() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let _turn = SERIAL.lock().await;
    let _limit = SystemSetting::set("realtime.max_joins_per_second", "100");
    let (ws, _) = tokio_tungstenite::connect_async(ws_url(Vsn::V2, &jwt("anon"))).await.unwrap();
    let (mut sink, mut stream) = ws.split();
    // About 160 joins a second, not waiting for replies, until the socket ends.
    let sender = tokio::spawn(async move {
        for n in 0..2000u32 {
            let frame =
                json!([n.to_string(), n.to_string(), format!("realtime:flood-{n}"), "phx_join", {"config": {}}]);
            if sink.send(Message::Text(frame.to_string().into())).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(6)).await;
        }
    });
    let (mut tripped, mut close) = (false, None);
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(1), stream.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v[4]["response"]["reason"] == "ClientJoinRateLimitReached: Too many joins per second" {
                    tripped = true;
                }
            }
            Ok(Some(Ok(Message::Close(frame)))) => {
                close = Some(frame.map(|f| u16::from(f.code)));
                break;
            }
            Ok(Some(Ok(_))) => {}
            Ok(None | Some(Err(_))) => break,
            Err(_) => {}
        }
    }
    sender.abort();
    assert!(tripped, "no ClientJoinRateLimitReached reply arrived");
    assert_eq!(close, Some(Some(1000)), "the socket ends with a close frame, code 1000");
}

fn totals() -> Value {
    let row = psql(
        "SELECT json_build_object('joins', joins_total, 'messages_in', messages_in_total,
                'database_messages', database_messages_total, 'rls_checks', rls_checks_total,
                'stats_reset', stats_reset IS NOT NULL AND stats_reset <= now()) FROM realtime.stats",
    );
    serde_json::from_str(&row).unwrap_or_else(|e| panic!("{row:?}: {e}"))
}

/// The snapshot after the next one (the worker publishes once a second).
fn next_totals() -> Value {
    let taken = psql("SELECT taken_at FROM realtime.stats");
    let deadline = Instant::now() + Duration::from_secs(5);
    while psql("SELECT taken_at FROM realtime.stats") == taken {
        assert!(Instant::now() < deadline, "no new realtime.stats snapshot");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1100));
    totals()
}

#[tokio::test]
async fn stats_counters_move_by_exactly_the_traffic() {
    let _turn = SERIAL.lock().await;
    policies();
    let before = next_totals();
    assert_eq!(before["stats_reset"], true, "{before}");
    let mut c = Client::connect(Vsn::V2, &user()).await;
    let public = format!("realtime:{}", unique("count"));
    let jr = c.join_ok(&public, json!({})).await;
    c.join_ok(&format!("realtime:{}", unique("today:count")), json!({"private": true})).await;
    for n in 0..5 {
        c.push(Some(&jr), None, &public, "broadcast", json!({"type": "broadcast", "event": "e", "payload": {"n": n}}))
            .await;
    }
    let sub_topic = public.trim_start_matches("realtime:");
    psql(&format!("SELECT realtime.send('{{}}', 'db', '{sub_topic}', false) FROM generate_series(1, 3)"));
    c.recv_event("broadcast").await;
    let after = next_totals();
    let delta = |k: &str| after[k].as_i64().unwrap() - before[k].as_i64().unwrap();
    assert_eq!(delta("joins"), 2, "{before} → {after}");
    assert_eq!(delta("messages_in"), 7, "two joins and five broadcasts: {before} → {after}");
    assert_eq!(delta("database_messages"), 3, "{before} → {after}");
    assert!(delta("rls_checks") >= 1, "the private join's check: {before} → {after}");
}

#[tokio::test]
async fn log_level_info_on_the_connect_url_logs_that_socket_s_joins() {
    let _turn = SERIAL.lock().await;
    let log = ServerLog::mark();
    let (loud, quiet) = (unique("loud"), unique("quiet"));
    let url = format!("{}&log_level=info", ws_url(Vsn::V2, &jwt("anon")));
    Client::connect_url(Vsn::V2, &url).await.join_ok(&format!("realtime:{loud}"), json!({})).await;
    Client::connect(Vsn::V2, &jwt("anon")).await.join_ok(&format!("realtime:{quiet}"), json!({})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let logged = log.since();
    assert!(logged.contains(&format!("joining realtime:{loud}: ok")), "{logged}");
    assert!(!logged.contains(&quiet), "a socket without log_level=info is not logged: {logged}");
}
