//! The WebSocket protocol over real sockets: connection, heartbeats, joins,
//! leaves, broadcast, presence, tokens, malformed frames. Each test uses its
//! own topics, so they run in parallel against one server.

use realtime_e2e::*;
use serde_json::json;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

const SHORT: Duration = Duration::from_millis(400);

fn both() -> [Vsn; 2] {
    [Vsn::V1, Vsn::V2]
}

#[tokio::test]
async fn health_answers() {
    let (status, body) = get("/health").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn connect_needs_a_valid_apikey() {
    let url = format!("ws://127.0.0.1:{}/realtime/v1/websocket?vsn=2.0.0", ws_port());
    let err = tokio_tungstenite::connect_async(&url).await.unwrap_err().to_string();
    assert!(err.contains("401"), "{err}");
    let err = tokio_tungstenite::connect_async(ws_url(Vsn::V2, "garbage")).await.unwrap_err().to_string();
    assert!(err.contains("401"), "{err}");
    let expired = jwt_with("anon", json!({"exp": now() - 10}));
    let err = tokio_tungstenite::connect_async(ws_url(Vsn::V2, &expired)).await.unwrap_err().to_string();
    assert!(err.contains("401"), "{err}");
}

#[tokio::test]
async fn every_path_the_clients_use_connects() {
    let key = jwt("anon");
    for path in ["/realtime/v1/websocket", "/socket/websocket", "/realtime/v1//websocket", "/websocket"] {
        let url = format!("ws://127.0.0.1:{}{path}?apikey={key}&log_level=info", ws_port());
        let mut c = Client::connect_url(Vsn::V1, &url).await;
        c.push(None, Some("1"), "phoenix", "heartbeat", json!({})).await;
        let m = c.recv().await;
        assert_eq!((m.event.as_str(), m.payload["status"].as_str()), ("phx_reply", Some("ok")), "{path}");
    }
}

#[tokio::test]
async fn heartbeats_are_answered_with_the_same_ref() {
    for vsn in both() {
        let mut c = Client::connect(vsn, &jwt("anon")).await;
        c.push(None, Some("26"), "phoenix", "heartbeat", json!({})).await;
        let m = c.recv().await;
        assert_eq!(m.topic, "phoenix");
        assert_eq!(m.event, "phx_reply");
        assert_eq!(m.msg_ref.as_deref(), Some("26"));
        assert_eq!(m.payload, json!({"status": "ok", "response": {}}));
        // Python sends ref null.
        c.push(None, None, "phoenix", "heartbeat", json!({})).await;
        assert_eq!(c.recv().await.msg_ref, None);
    }
}

#[tokio::test]
async fn join_reply_then_leave_closes() {
    for vsn in both() {
        let mut c = Client::connect(vsn, &jwt("anon")).await;
        let topic = format!("realtime:{}", unique("join"));
        let (jr, reply) = c.join(&topic, json!({"config": {}})).await;
        assert_eq!(reply, json!({"status": "ok", "response": {"postgres_changes": []}}));
        let r = c.make_ref();
        c.push(Some(&jr), Some(&r), &topic, "phx_leave", json!({})).await;
        let m = c.recv().await;
        assert_eq!((m.event.as_str(), m.msg_ref.as_deref()), ("phx_reply", Some(r.as_str())));
        let m = c.recv().await;
        assert_eq!(m.event, "phx_close");
        assert_eq!(m.msg_ref.as_deref(), Some(jr.as_str()), "phx_close carries ref = join_ref");
        // Left: pushes are unmatched now.
        c.push(Some(&jr), Some("99"), &topic, "broadcast", json!({"type":"broadcast","event":"e","payload":{}})).await;
        assert_eq!(c.recv().await.payload, json!({"status": "error", "response": {"reason": "unmatched topic"}}));
    }
}

#[tokio::test]
async fn join_errors() {
    let mut c = Client::connect(Vsn::V2, &jwt("anon")).await;
    let (_, reply) = c.join("realtime:", json!({"config": {}})).await;
    assert_eq!(reply["response"]["reason"], "TopicNameRequired: You must provide a topic name");
    let (_, reply) = c.join("not-realtime", json!({"config": {}})).await;
    assert_eq!(reply["response"]["reason"], "unmatched topic");
    let expired = jwt_with("anon", json!({"exp": now() - 30}));
    let (_, reply) =
        c.join(&format!("realtime:{}", unique("exp")), json!({"config": {}, "access_token": expired})).await;
    let reason = reply["response"]["reason"].as_str().unwrap();
    assert!(reason.starts_with("InvalidJWTToken: Token has expired "), "{reason}");
    let (_, reply) =
        c.join(&format!("realtime:{}", unique("bad")), json!({"config": {}, "access_token": "nope"})).await;
    assert_eq!(reply["response"]["reason"], "MalformedJWT: The token provided is not a valid JWT");
    let (_, reply) = c
        .join(&format!("realtime:{}", unique("replay")), json!({"config": {"broadcast": {"replay": {"since": 0}}}}))
        .await;
    assert_eq!(reply["response"]["reason"], "UnableToReplayMessages: Replay is not allowed for public channels");
}

#[tokio::test]
async fn postgres_changes_bindings_are_echoed_with_ids() {
    let mut c = Client::connect(Vsn::V1, &jwt("anon")).await;
    let bindings = json!([{"event":"*","schema":"public","table":"todos","filter":"id=eq.1"},{"event":"INSERT","schema":"public"}]);
    let (_, reply) =
        c.join(&format!("realtime:{}", unique("pg")), json!({"config": {"postgres_changes": bindings.clone()}})).await;
    let echoed = reply["response"]["postgres_changes"].as_array().unwrap();
    assert_eq!(echoed.len(), 2);
    for (i, e) in echoed.iter().enumerate() {
        assert!(e["id"].as_u64().unwrap() > 0);
        let mut without = e.clone();
        without.as_object_mut().unwrap().remove("id");
        assert_eq!(without, bindings[i]);
    }
}

#[tokio::test]
async fn push_to_an_unjoined_topic_is_unmatched() {
    let mut c = Client::connect(Vsn::V2, &jwt("anon")).await;
    c.push(Some("1"), Some("2"), "realtime:nowhere", "broadcast", json!({"type":"broadcast","event":"e","payload":{}}))
        .await;
    let m = c.recv().await;
    assert_eq!(m.msg_ref.as_deref(), Some("2"));
    assert_eq!(m.payload, json!({"status": "error", "response": {"reason": "unmatched topic"}}));
}

#[tokio::test]
async fn a_second_join_replaces_the_first() {
    let mut a = Client::connect(Vsn::V2, &jwt("anon")).await;
    let mut b = Client::connect(Vsn::V2, &jwt("anon")).await;
    let topic = format!("realtime:{}", unique("rejoin"));
    a.join_ok(&topic, json!({})).await;
    a.join_ok(&topic, json!({})).await;
    let jr = b.join_ok(&topic, json!({})).await;
    b.push(Some(&jr), Some("9"), &topic, "broadcast", json!({"type":"broadcast","event":"once","payload":{"n":1}}))
        .await;
    let m = a.recv_event("broadcast").await;
    assert_eq!(m.payload["event"], "once");
    a.expect_silence(SHORT).await; // delivered once, not once per join
}

#[tokio::test]
async fn broadcast_self_ack_and_fan_out_across_serializers() {
    let key = jwt("anon");
    let topic = format!("realtime:{}", unique("room"));
    let mut sender = Client::connect(Vsn::V2, &key).await;
    let mut v1 = Client::connect(Vsn::V1, &key).await;
    let mut v2 = Client::connect(Vsn::V2, &key).await;
    let jr = sender.join_ok(&topic, json!({"broadcast": {"self": true, "ack": true}})).await;
    v1.join_ok(&topic, json!({})).await;
    v2.join_ok(&topic, json!({"broadcast": {"self": false}})).await;

    let payload = json!({"msg": "héllo 世界", "n": [1, 2, {"x": null}]});
    sender
        .push(Some(&jr), Some("7"), &topic, "broadcast", json!({"type":"broadcast","event":"TEST","payload":payload}))
        .await;
    // With ack the sender gets an ok reply, and with self its own message.
    let mut got_reply = false;
    let mut got_self = false;
    for _ in 0..2 {
        let m = sender.recv().await;
        match m.event.as_str() {
            "phx_reply" => {
                assert_eq!(m.msg_ref.as_deref(), Some("7"));
                assert_eq!(m.payload, json!({"status":"ok","response":{}}));
                got_reply = true;
            }
            "broadcast" => {
                assert_eq!(m.payload["payload"], payload);
                got_self = true;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(got_reply && got_self);
    for c in [&mut v1, &mut v2] {
        let m = c.recv_event("broadcast").await;
        assert_eq!(m.topic, topic);
        assert_eq!(m.payload["type"], "broadcast");
        assert_eq!(m.payload["event"], "TEST");
        assert_eq!(m.payload["payload"], payload);
        assert_eq!((m.join_ref, m.msg_ref), (None, None));
    }
}

#[tokio::test]
async fn without_self_the_sender_gets_nothing_and_without_ack_no_reply() {
    let key = jwt("anon");
    let topic = format!("realtime:{}", unique("noself"));
    let mut a = Client::connect(Vsn::V1, &key).await;
    let mut b = Client::connect(Vsn::V1, &key).await;
    let jr = a.join_ok(&topic, json!({"broadcast": {"self": false}})).await;
    b.join_ok(&topic, json!({})).await;
    a.push(Some(&jr), Some("5"), &topic, "broadcast", json!({"type":"broadcast","event":"e","payload":{"k":1}})).await;
    assert_eq!(b.recv_event("broadcast").await.payload["payload"], json!({"k": 1}));
    a.expect_silence(SHORT).await;
}

#[tokio::test]
async fn binary_kind3_in_kind4_out_and_dropped_for_v1() {
    let key = jwt("anon");
    let topic = format!("realtime:{}", unique("bin"));
    let mut sender = Client::connect(Vsn::V2, &key).await;
    let mut v1 = Client::connect(Vsn::V1, &key).await;
    let jr = sender.join_ok(&topic, json!({"broadcast": {"self": true, "ack": true}})).await;
    v1.join_ok(&topic, json!({})).await;

    let bytes = [0u8, 1, 2, 254, 255];
    sender.send_raw(kind3(&jr, "8", &topic, "blob", None, &bytes)).await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(sender.recv().await);
    }
    let echoed = seen.iter().find(|m| m.event == "broadcast").expect("self echo");
    assert_eq!(echoed.binary.as_deref(), Some(&bytes[..]));
    assert_eq!(echoed.payload["event"], "blob");
    assert!(seen.iter().any(|m| m.event == "phx_reply" && m.msg_ref.as_deref() == Some("8")));
    v1.expect_silence(SHORT).await; // V1 cannot carry binary

    // A JSON kind-3 push reaches V1 as JSON.
    sender.send_raw(kind3(&jr, "9", &topic, "json", Some(&json!({"n": 1})), &[])).await;
    assert_eq!(v1.recv_event("broadcast").await.payload["payload"], json!({"n": 1}));
}

#[tokio::test]
async fn oversized_payloads_are_refused() {
    let topic = format!("realtime:{}", unique("big"));
    let mut c = Client::connect(Vsn::V2, &jwt("anon")).await;
    let mut other = Client::connect(Vsn::V2, &jwt("anon")).await;
    let jr = c.join_ok(&topic, json!({"broadcast": {"ack": true}})).await;
    other.join_ok(&topic, json!({})).await;
    let big = "x".repeat(4 * 1024 * 1024);
    c.push(Some(&jr), Some("3"), &topic, "broadcast", json!({"type":"broadcast","event":"e","payload":{"big":big}}))
        .await;
    let m = c.recv().await;
    assert_eq!(m.payload, json!({"status":"error","response":{"error":"payload_size_exceeded"}}));
    other.expect_silence(SHORT).await;
}

#[tokio::test]
async fn public_and_private_channels_of_one_name_never_mix() {
    let service = jwt("service_role");
    let name = unique("iso");
    let topic = format!("realtime:{name}");
    let mut public = Client::connect(Vsn::V1, &service).await;
    let mut private = Client::connect(Vsn::V1, &service).await;
    let pjr = public.join_ok(&topic, json!({"broadcast": {"self": true}})).await;
    // service_role bypasses RLS, so the private join is allowed.
    let qjr = private.join_ok(&topic, json!({"private": true, "broadcast": {"self": true}})).await;
    public
        .push(Some(&pjr), Some("2"), &topic, "broadcast", json!({"type":"broadcast","event":"pub","payload":{}}))
        .await;
    assert_eq!(public.recv_event("broadcast").await.payload["event"], "pub");
    private.expect_silence(SHORT).await;
    private
        .push(Some(&qjr), Some("3"), &topic, "broadcast", json!({"type":"broadcast","event":"priv","payload":{}}))
        .await;
    assert_eq!(private.recv_event("broadcast").await.payload["event"], "priv");
    public.expect_silence(SHORT).await;
}

#[tokio::test]
async fn presence_state_diffs_and_leaves() {
    let key = jwt("anon");
    let topic = format!("realtime:{}", unique("lobby"));
    let mut a = Client::connect(Vsn::V2, &key).await;
    let mut b = Client::connect(Vsn::V1, &key).await;
    let ajr = a.join_ok(&topic, json!({"presence": {"enabled": true, "key": "alice"}})).await;
    let state = a.recv_event("presence_state").await;
    assert_eq!(state.payload, json!({}));
    assert_eq!(state.join_ref.as_deref(), Some(ajr.as_str()));

    a.push(
        Some(&ajr),
        Some("5"),
        &topic,
        "presence",
        json!({"type":"presence","event":"track","payload":{"name":"a"}}),
    )
    .await;
    let mut reply = None;
    let mut diff = None;
    for _ in 0..2 {
        let m = a.recv().await;
        if m.event == "phx_reply" { reply = Some(m) } else { diff = Some(m) }
    }
    assert_eq!(reply.unwrap().payload, json!({"status":"ok","response":{}}));
    let diff = diff.unwrap();
    assert_eq!(diff.event, "presence_diff");
    let meta = &diff.payload["joins"]["alice"]["metas"][0];
    assert_eq!(meta["name"], "a");
    let first_ref = meta["phx_ref"].as_str().unwrap().to_owned();
    assert_eq!(diff.payload["leaves"], json!({}));

    // A later joiner sees the state; Python-style track (no "type").
    let bjr = b.join_ok(&topic, json!({"presence": {"enabled": true, "key": "bob"}})).await;
    let state = b.recv_event("presence_state").await;
    assert_eq!(state.payload["alice"]["metas"][0]["phx_ref"], first_ref.as_str());
    b.push(Some(&bjr), Some("6"), &topic, "presence", json!({"event":"track","payload":{"name":"b"}})).await;
    assert_eq!(b.recv_event("phx_reply").await.payload["status"], "ok");
    assert!(b.recv_event("presence_diff").await.payload["joins"]["bob"].is_object());
    assert!(a.recv_event("presence_diff").await.payload["joins"]["bob"].is_object());

    // The same payload again: ok, no diff. A changed one: joins and leaves.
    a.push(
        Some(&ajr),
        Some("7"),
        &topic,
        "presence",
        json!({"type":"presence","event":"track","payload":{"name":"a"}}),
    )
    .await;
    assert_eq!(a.recv_event("phx_reply").await.payload["status"], "ok");
    b.expect_silence(SHORT).await;
    a.push(
        Some(&ajr),
        Some("8"),
        &topic,
        "presence",
        json!({"type":"presence","event":"track","payload":{"name":"a2"}}),
    )
    .await;
    let d = b.recv_event("presence_diff").await.payload;
    assert_eq!(d["joins"]["alice"]["metas"][0]["name"], "a2");
    assert_eq!(d["joins"]["alice"]["metas"][0]["phx_ref_prev"], first_ref.as_str());
    assert_eq!(d["leaves"]["alice"]["metas"][0]["name"], "a");
    assert_eq!(a.recv_event("phx_reply").await.msg_ref.as_deref(), Some("8"));
    assert_eq!(a.recv_event("presence_diff").await.payload, d, "the tracker gets the same diff");

    // A non-map payload is refused and the channel stays.
    b.push(Some(&bjr), Some("9"), &topic, "presence", json!({"event":"track","payload":"nope"})).await;
    assert_eq!(
        b.recv_event("phx_reply").await.payload,
        json!({"status":"error","response":{"reason":"Presence track payload must be a map"}})
    );

    // Untrack and disconnect send leaves.
    b.push(Some(&bjr), Some("10"), &topic, "presence", json!({"event":"untrack","payload":{}})).await;
    assert!(a.recv_event("presence_diff").await.payload["leaves"]["bob"].is_object());
    assert_eq!(b.recv_event("phx_reply").await.msg_ref.as_deref(), Some("10"));
    assert!(b.recv_event("presence_diff").await.payload["leaves"]["bob"].is_object());
    drop(a);
    let d = b.recv_event("presence_diff").await;
    assert_eq!(d.payload["leaves"]["alice"]["metas"][0]["name"], "a2");
}

#[tokio::test]
async fn presence_is_rate_limited_per_channel() {
    let topic = format!("realtime:{}", unique("rate"));
    let mut c = Client::connect(Vsn::V2, &jwt("anon")).await;
    let jr = c.join_ok(&topic, json!({"presence": {"enabled": true}})).await;
    c.recv_event("presence_state").await;
    for i in 0..5 {
        c.push(Some(&jr), Some(&format!("p{i}")), &topic, "presence", json!({"event":"track","payload":{"i":i}})).await;
    }
    c.push(Some(&jr), Some("p5"), &topic, "presence", json!({"event":"track","payload":{"i":5}})).await;
    loop {
        let m = c.recv().await;
        if m.event == "system" {
            assert_eq!(m.payload["message"], "Client presence rate limit exceeded");
            assert_eq!(m.payload["status"], "error");
            break;
        }
    }
    assert_eq!(c.recv_event("phx_close").await.msg_ref.as_deref(), Some(jr.as_str()));
}

#[tokio::test]
async fn an_expiring_token_closes_its_channel() {
    let topic = format!("realtime:{}", unique("expiry"));
    let short = jwt_with("anon", json!({"exp": now() + 2}));
    let mut c = Client::connect(Vsn::V1, &jwt("anon")).await;
    let (jr, reply) = c.join(&topic, json!({"config": {}, "access_token": short})).await;
    assert_eq!(reply["status"], "ok");
    let m = c.try_recv(Duration::from_secs(6)).await.expect("a system message at expiry");
    assert_eq!(m.event, "system");
    assert_eq!(m.payload["extension"], "system");
    assert!(m.payload["message"].as_str().unwrap().starts_with("Token has expired"), "{m:?}");
    assert_eq!(m.payload["channel"], topic.trim_start_matches("realtime:"));
    let close = c.recv().await;
    assert_eq!((close.event.as_str(), close.msg_ref.as_deref()), ("phx_close", Some(jr.as_str())));
}

#[tokio::test]
async fn access_token_refresh() {
    let topic = format!("realtime:{}", unique("refresh"));
    let mut c = Client::connect(Vsn::V2, &jwt("anon")).await;
    let jr = c.join_ok(&topic, json!({})).await;
    // sb_ keys, null and the same token are ignored without a reply.
    c.push(Some(&jr), Some("2"), &topic, "access_token", json!({"access_token": "sb_publishable_x"})).await;
    c.push(Some(&jr), Some("3"), &topic, "access_token", json!({"access_token": null})).await;
    // A valid new token is taken silently.
    c.push(Some(&jr), Some("4"), &topic, "access_token", json!({"access_token": jwt("authenticated")})).await;
    c.expect_silence(SHORT).await;
    // An expired one ends the channel.
    let expired = jwt_with("anon", json!({"exp": now() - 5}));
    c.push(Some(&jr), Some("5"), &topic, "access_token", json!({"access_token": expired})).await;
    let m = c.recv_event("system").await;
    assert!(m.payload["message"].as_str().unwrap().starts_with("Token has expired"), "{m:?}");
    c.recv_event("phx_close").await;
}

#[tokio::test]
async fn malformed_frames_close_only_their_connection() {
    let key = jwt("anon");
    let topic = format!("realtime:{}", unique("bystander"));
    let mut bystander = Client::connect(Vsn::V2, &key).await;
    let jr = bystander.join_ok(&topic, json!({"broadcast": {"self": true}})).await;
    for bad in [
        Message::Text("{not json".into()),
        Message::Text("{\"an\":\"object\"}".into()),
        Message::Binary(vec![9, 9].into()),
    ] {
        let mut c = Client::connect(Vsn::V2, &key).await;
        c.send_raw(bad).await;
        let m = c.recv().await;
        assert_eq!(m.event, "socket_close");
        assert_eq!(m.payload["code"], 1007);
        assert!(m.payload["reason"].as_str().unwrap().starts_with("MalformedWebSocketMessage"), "{m:?}");
    }
    bystander
        .push(Some(&jr), Some("2"), &topic, "broadcast", json!({"type":"broadcast","event":"alive","payload":{}}))
        .await;
    assert_eq!(bystander.recv_event("broadcast").await.payload["event"], "alive");
}

#[tokio::test]
async fn each_connections_frames_are_handled_in_order() {
    // Python pushes right after phx_join, before the reply arrives.
    let topic = format!("realtime:{}", unique("order"));
    let mut c = Client::connect(Vsn::V1, &jwt("anon")).await;
    c.push(Some("1"), Some("1"), &topic, "phx_join", json!({"config": {"broadcast": {"self": true, "ack": true}}}))
        .await;
    for i in 2..12 {
        c.push(
            Some("1"),
            Some(&i.to_string()),
            &topic,
            "broadcast",
            json!({"type":"broadcast","event":"n","payload":{"i":i}}),
        )
        .await;
    }
    assert_eq!(c.recv().await.msg_ref.as_deref(), Some("1"));
    let mut seen = Vec::new();
    while seen.len() < 10 {
        let m = c.recv().await;
        if m.event == "broadcast" {
            seen.push(m.payload["payload"]["i"].as_i64().unwrap());
        }
    }
    assert_eq!(seen, (2..12).collect::<Vec<_>>());
}

#[tokio::test]
async fn channels_per_client_are_limited() {
    let mut c = Client::connect(Vsn::V2, &jwt("anon")).await;
    let limit: usize = psql("SHOW realtime.max_channels_per_client").parse().unwrap();
    for _ in 0..limit {
        c.join_ok(&format!("realtime:{}", unique("many")), json!({})).await;
    }
    let (_, reply) = c.join(&format!("realtime:{}", unique("many")), json!({"config": {}})).await;
    assert_eq!(reply["response"]["reason"], "ChannelRateLimitReached: Too many channels");
}

#[tokio::test]
async fn a_client_close_is_answered_at_once() {
    // The server's half must finish too: a socket left waiting after the
    // client's close holds its resources and stalls the client's close.
    for vsn in both() {
        let mut c = Client::connect(vsn, &jwt("anon")).await;
        c.join_ok(&format!("realtime:{}", unique("bye")), json!({})).await;
        c.send_raw(Message::Close(None)).await;
        let m = c.try_recv(Duration::from_secs(1)).await.expect("the server answers the close within 1 s");
        assert_eq!(m.event, "socket_close");
    }
}
