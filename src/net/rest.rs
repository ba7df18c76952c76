//! REST broadcast: `POST /api/broadcast` (a batch) and
//! `POST /api/broadcast/:topic/events/:event` (one message), under
//! `/realtime/v1` or not. Both answer 202; private messages need RLS INSERT
//! permission and are dropped silently without it, as in Supabase.

use super::auth::Auth;
use super::checks;
use super::hub::TopicKey;
use super::request_parts::{bearer, header, query_params};
use super::shared::Shared;
use crate::bridge::{Extension, Request as BridgeRequest, Share};
use crate::protocol::{Body, Broadcast};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

const MAX_BODY: usize = 10 * 1024 * 1024;

fn unauthorized() -> Response {
    (StatusCode::UNAUTHORIZED, axum::Json(json!({"message": "Unauthorized"}))).into_response()
}

fn too_many(message: &str) -> Response {
    (StatusCode::TOO_MANY_REQUESTS, axum::Json(json!({"message": message}))).into_response()
}

/// Both routes are open to every origin, as Supabase's (`Corsica`,
/// `origins: "*"`), so `httpSend()` works from a web page: a preflight gets
/// the methods and whatever headers it asks for, every answer
/// `Access-Control-Allow-Origin: *` (and the rate headers exposed).
pub fn preflight(headers: &HeaderMap) -> Response {
    let asked = header(headers, "access-control-request-headers")
        .unwrap_or_else(|| "authorization, apikey, x-api-key, content-type, x-client-info".into());
    let mut response = StatusCode::OK.into_response();
    let out = response.headers_mut();
    out.insert("access-control-allow-methods", HeaderValue::from_static("POST, OPTIONS"));
    if let Ok(asked) = HeaderValue::from_str(&asked) {
        out.insert("access-control-allow-headers", asked);
    }
    out.insert("access-control-max-age", HeaderValue::from_static("86400"));
    cors_open(response)
}

/// `response`, readable by a page of any origin.
pub fn cors_open(mut response: Response) -> Response {
    let out = response.headers_mut();
    out.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    out.insert(
        "access-control-expose-headers",
        HeaderValue::from_static("x-rate-rolling, x-rate-limit, x-rate-limit-remaining"),
    );
    response
}

/// Supabase's request-rate check: the REST request rate (a rolling average
/// over 60 s) against `realtime.max_events_per_second`, told in `x-rate-*`
/// headers on every answer.
pub async fn rate_limited(shared: Arc<Shared>, handler: impl Future<Output = Response>) -> Response {
    shared.rates.requests.add(1);
    let avg = shared.rates.requests.avg().trunc() as i64;
    let max = i64::from(shared.config().settings.limits.max_events_per_second);
    let mut response = if avg >= max { too_many("Too many requests") } else { handler.await };
    let headers = response.headers_mut();
    for (name, value) in [("x-rate-rolling", avg), ("x-rate-limit", max), ("x-rate-limit-remaining", max - avg)] {
        headers.insert(name, value.into());
    }
    response
}

/// Supabase's message-rate check for `count` messages (a batch may not take
/// the rolling average past the limit); they are counted when let through.
fn over_message_rate(shared: &Shared, count: usize) -> Option<Response> {
    let avg = shared.rates.events.avg();
    let max = f64::from(shared.config().settings.limits.max_events_per_second);
    if avg >= max {
        return Some(too_many("You have exceeded your rate limit"));
    }
    if count > 1 && count as f64 + avg > max {
        return Some(too_many("Too many messages to broadcast, please reduce the batch size"));
    }
    shared.rates.events.add(count as u64);
    None
}

fn unprocessable(body: Value) -> Response {
    (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(body)).into_response()
}

/// The token (`Authorization: Bearer` wins, else the `apikey` header) and
/// the `x-` headers. None: answer 401.
fn credentials(request: &Request) -> Option<(String, Option<String>)> {
    let headers = request.headers();
    Some((bearer(headers).or_else(|| header(headers, "apikey"))?, super::auth::x_headers(headers)))
}

async fn authenticate(shared: &Shared, credentials: Option<(String, Option<String>)>) -> Option<Arc<Auth>> {
    let (token, x_headers) = credentials?;
    let claims = super::jwks_url::verify(&shared.config(), &shared.jwks, &token).await.ok()?;
    Some(Auth::new(token, claims, x_headers))
}

/// Which of these private topics may the caller write? One check per topic,
/// routed as a socket's are (on a hot standby, to the primary).
async fn writable(shared: &Arc<Shared>, auth: &Auth, topics: impl Iterator<Item = String>) -> HashMap<String, bool> {
    let mut allowed = HashMap::new();
    // One check at a time per request.
    let share = Share::new(1);
    for topic in topics {
        if allowed.contains_key(&topic) {
            continue;
        }
        let ctx = auth.ctx.clone();
        let topic_arg = topic.clone();
        let answer = checks::call(shared, &share, |reply| BridgeRequest::WritePermission {
            ctx,
            topic: topic_arg,
            extension: Extension::Broadcast,
            reply,
        })
        .await;
        let ok = match answer {
            Ok(Ok(ok)) => ok,
            Ok(Err(e)) => {
                crate::log_warning!("realtime: RlsPolicyError: write check for topic {topic:?} failed: {e}");
                false
            }
            Err(e) => {
                crate::log_warning!("realtime: write check for topic {topic:?} not run: {e}");
                false
            }
        };
        allowed.insert(topic, ok);
    }
    allowed
}

struct Outgoing {
    topic: String,
    private: bool,
    broadcast: Broadcast,
    meta: Option<Value>,
}

/// Validates a batch the way Supabase does: every message needs a topic, an
/// event and an object payload; errors are listed per message.
fn parse_batch(body: &[u8], max_payload: usize) -> Result<Vec<Outgoing>, Value> {
    let body: Value = serde_json::from_slice(body).map_err(|e| json!({"errors": {"body": [e.to_string()]}}))?;
    let Some(messages) = body.get("messages").and_then(Value::as_array) else {
        return Err(json!({"errors": {"messages": ["can't be blank"]}}));
    };
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let mut failed = false;
    for m in messages {
        let mut e = Map::new();
        let text = |k: &str| m.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
        if text("topic").is_none() {
            e.insert("topic".into(), json!(["can't be blank"]));
        }
        if text("event").is_none() {
            e.insert("event".into(), json!(["can't be blank"]));
        }
        match m.get("payload") {
            Some(p @ Value::Object(_)) if Body::json(p).wire_len() > max_payload => {
                e.insert("payload".into(), json!(["Payload size exceeds tenant limit"]));
            }
            Some(Value::Object(_)) => {}
            Some(Value::Null) | None => {
                e.insert("payload".into(), json!(["can't be blank"]));
            }
            Some(_) => {
                e.insert("payload".into(), json!(["is invalid"]));
            }
        }
        failed |= !e.is_empty();
        errors.push(Value::Object(e));
        if !failed {
            out.push(Outgoing {
                topic: text("topic").unwrap_or_default().to_owned(),
                private: m.get("private").and_then(Value::as_bool).unwrap_or(false),
                broadcast: Broadcast {
                    event: text("event").unwrap_or_default().to_owned(),
                    payload: Body::json(&m["payload"]),
                },
                meta: m.get("id").filter(|id| !id.is_null()).map(|id| json!({"id": id})),
            });
        }
    }
    if failed { Err(json!({"errors": {"messages": errors}})) } else { Ok(out) }
}

async fn deliver(shared: &Arc<Shared>, auth: &Auth, messages: Vec<Outgoing>) {
    let private_topics = messages.iter().filter(|m| m.private).map(|m| m.topic.clone());
    let allowed = writable(shared, auth, private_topics.collect::<Vec<_>>().into_iter()).await;
    for m in messages {
        if m.private && !allowed.get(&m.topic).copied().unwrap_or(false) {
            continue;
        }
        let key = TopicKey { private: m.private, topic: format!("realtime:{}", m.topic) };
        let delivered = shared.hub.broadcast(&key, &m.broadcast, m.meta.as_ref(), None);
        shared.rates.events.add(delivered as u64);
    }
}

async fn read_body(request: Request) -> Result<axum::body::Bytes, Response> {
    axum::body::to_bytes(request.into_body(), MAX_BODY)
        .await
        .map_err(|e| (StatusCode::PAYLOAD_TOO_LARGE, axum::Json(json!({"message": e.to_string()}))).into_response())
}

pub async fn batch(shared: Arc<Shared>, request: Request) -> Response {
    let Some(auth) = authenticate(&shared, credentials(&request)).await else {
        return unauthorized();
    };
    let body = match read_body(request).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    match parse_batch(&body, shared.config().settings.max_payload_bytes) {
        Ok(messages) => {
            if let Some(refused) = over_message_rate(&shared, messages.len()) {
                return refused;
            }
            deliver(&shared, &auth, messages).await;
            StatusCode::ACCEPTED.into_response()
        }
        Err(errors) => unprocessable(errors),
    }
}

/// `.../api/broadcast/<topic>/events/<event>`, each segment percent-decoded.
fn topic_and_event(raw_path: &str) -> Option<(String, String)> {
    let rest = &raw_path[raw_path.find("/api/broadcast/")? + "/api/broadcast/".len()..];
    let (topic, event) = rest.split_once("/events/")?;
    let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8().ok().map(|c| c.into_owned());
    let (topic, event) = (decode(topic)?, decode(event.trim_end_matches('/'))?);
    (!topic.is_empty() && !event.is_empty() && !event.contains('/')).then_some((topic, event))
}

pub async fn single(shared: Arc<Shared>, raw_path: String, request: Request) -> Response {
    let Some((topic, event)) = topic_and_event(&raw_path) else {
        return (StatusCode::NOT_FOUND, axum::Json(json!({"error": "not found"}))).into_response();
    };
    let Some(auth) = authenticate(&shared, credentials(&request)).await else {
        return unauthorized();
    };
    let private = query_params(&request).get("private").is_some_and(|p| p == "true");
    let binary = header(request.headers(), "content-type").is_some_and(|c| c.starts_with("application/octet-stream"));
    let body = match read_body(request).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let payload = if binary {
        Body::Binary(body.to_vec())
    } else {
        let text = String::from_utf8(body.to_vec()).map_err(|e| e.to_string());
        match text.and_then(|t| Body::json_text(t).map_err(|e| e.to_string())) {
            Ok(payload) => payload,
            Err(e) => return unprocessable(json!({"error": format!("the body is not valid JSON: {e}")})),
        }
    };
    if payload.wire_len() > shared.config().settings.max_payload_bytes {
        return unprocessable(json!({"error": "Payload size exceeds tenant limit"}));
    }
    if let Some(refused) = over_message_rate(&shared, 1) {
        return refused;
    }
    let message = Outgoing { topic, private, broadcast: Broadcast { event, payload }, meta: None };
    deliver(&shared, &auth, vec![message]).await;
    StatusCode::ACCEPTED.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_validation_lists_errors_per_message() {
        let ok = br#"{"messages":[{"topic":"room","event":"e","payload":{"a":1},"private":true,"id":"x"}]}"#;
        let parsed = parse_batch(ok, 1000).unwrap();
        assert_eq!(parsed.len(), 1);
        assert!(parsed[0].private);
        assert_eq!(parsed[0].meta, Some(json!({"id": "x"})));

        let missing = br#"{"messages":[{"topic":"room","event":"e"}]}"#;
        assert_eq!(
            parse_batch(missing, 1000).err().unwrap(),
            json!({"errors":{"messages":[{"payload":["can't be blank"]}]}})
        );
        let big = br#"{"messages":[{"topic":"room","event":"e","payload":{"a":"0123456789"}}]}"#;
        assert!(parse_batch(big, 10).is_err());
        assert!(parse_batch(b"nope", 10).is_err());
        assert!(parse_batch(br#"{"messages":[{"event":"e","payload":[]}]}"#, 1000).is_err());
    }

    #[test]
    fn single_path_segments_are_decoded() {
        assert_eq!(
            topic_and_event("/realtime/v1/api/broadcast/room%2Fa/events/my%20event"),
            Some(("room/a".into(), "my event".into()))
        );
        assert_eq!(topic_and_event("/api/broadcast/room/events/e"), Some(("room".into(), "e".into())));
        assert_eq!(topic_and_event("/api/broadcast/room/events/"), None);
        assert_eq!(topic_and_event("/api/broadcast/room"), None);
    }
}

/// Properties over untrusted REST bodies (`make fuzz` runs them for millions of cases).
#[cfg(test)]
mod properties {
    use super::*;
    use crate::arbitrary_json::json_value;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_body_is_accepted_whole_or_refused_with_errors(
            body in prop_oneof![
                json_value().prop_map(|v| v.to_string().into_bytes()),
                json_value().prop_map(|v| serde_json::to_vec(&json!({"messages": [v]})).unwrap()),
                prop::collection::vec(any::<u8>(), 0..200),
            ],
            max in 0usize..200,
        ) {
            match parse_batch(&body, max) {
                Ok(messages) => {
                    for m in messages {
                        prop_assert!(!m.topic.is_empty() && !m.broadcast.event.is_empty());
                        prop_assert!(m.broadcast.payload.wire_len() <= max);
                    }
                }
                Err(errors) => prop_assert!(errors.get("errors").is_some(), "{errors}"),
            }
        }
    }
}
