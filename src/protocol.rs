//! The Phoenix wire protocol as Supabase Realtime speaks it: V1 JSON objects,
//! V2 JSON arrays, and V2 binary user broadcasts (kind 3 in, kind 4 out).
//! Pure Rust: no Postgres, no I/O.

use base64::Engine;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use std::fmt;

/// The serializer a connection asked for with `vsn`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Vsn {
    V1,
    V2,
}

impl Vsn {
    /// `vsn` from the query string; absent means 1.0.0, as in Phoenix.
    pub fn from_query(vsn: Option<&str>) -> Result<Vsn, String> {
        match vsn {
            None | Some("1.0.0") => Ok(Vsn::V1),
            Some("2.0.0") => Ok(Vsn::V2),
            Some(other) => Err(format!("Unsupported serializer version: {other}")),
        }
    }
}

/// A frame a client sent, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Inbound {
    pub join_ref: Option<String>,
    pub msg_ref: Option<String>,
    pub topic: String,
    pub event: String,
    pub payload: InboundPayload,
}

#[derive(Debug, Clone, PartialEq)]
pub enum InboundPayload {
    Json(Value),
    /// A V2 binary user broadcast (kind 3); its event is `broadcast`.
    Broadcast(Broadcast),
}

/// A user broadcast: what `{type: "broadcast", event, payload}` carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Broadcast {
    pub event: String,
    pub payload: Body,
}

/// A broadcast's payload: JSON kept as the text it arrived in (checked, never
/// parsed into a tree nor written again), or bytes.
#[derive(Debug, Clone)]
pub enum Body {
    Json(Box<RawValue>),
    Binary(Vec<u8>),
}

impl PartialEq for Body {
    fn eq(&self, other: &Body) -> bool {
        match (self, other) {
            (Body::Json(a), Body::Json(b)) => a.get() == b.get(),
            (Body::Binary(a), Body::Binary(b)) => a == b,
            _ => false,
        }
    }
}

impl Body {
    /// A JSON value, written once.
    pub fn json(value: &Value) -> Body {
        Body::Json(serde_json::value::to_raw_value(value).expect("a Value always serializes"))
    }

    /// JSON text, checked to be JSON.
    pub fn json_text(text: String) -> Result<Body, serde_json::Error> {
        RawValue::from_string(text).map(Body::Json)
    }

    /// A payload as a row carries it ([`crate::bridge::DbBroadcast`],
    /// [`crate::bridge::Relayed`]): JSON text, or base64 when `binary`.
    pub fn from_row_text(binary: bool, text: &str) -> Result<Body, String> {
        if binary {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map(Body::Binary)
                .map_err(|e| format!("payload is not base64: {e}"))
        } else {
            Body::json_text(text.to_owned()).map_err(|e| format!("payload is not JSON: {e}"))
        }
    }

    /// The payload as a row carries it, and whether it is binary.
    pub fn to_row_text(&self) -> (String, bool) {
        match self {
            Body::Json(raw) => (raw.get().to_owned(), false),
            Body::Binary(bytes) => (base64::engine::general_purpose::STANDARD.encode(bytes), true),
        }
    }

    /// Bytes on the wire, for the payload size limit.
    pub fn wire_len(&self) -> usize {
        match self {
            Body::Json(v) => v.get().len(),
            Body::Binary(b) => b.len(),
        }
    }
}

/// Why a frame could not be decoded. The connection answers or drops it; it
/// never affects other connections.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError(pub String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MalformedWebSocketMessage: {}", self.0)
    }
}

fn malformed<T>(why: impl Into<String>) -> Result<T, DecodeError> {
    Err(DecodeError(why.into()))
}

/// A ref is a string or null; numbers are accepted and kept as their text.
fn as_ref(v: Option<&Value>, what: &str) -> Result<Option<String>, DecodeError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => malformed(format!("{what} must be a string or null")),
    }
}

fn as_string(v: Option<&Value>, what: &str) -> Result<String, DecodeError> {
    match v {
        Some(Value::String(s)) => Ok(s.clone()),
        _ => malformed(format!("{what} must be a string")),
    }
}

/// A V1 frame; unknown fields are ignored.
#[derive(Deserialize)]
struct V1Frame<'a> {
    #[serde(borrow)]
    topic: Option<&'a RawValue>,
    #[serde(borrow)]
    event: Option<&'a RawValue>,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
    #[serde(rename = "ref", borrow)]
    msg_ref: Option<&'a RawValue>,
    #[serde(borrow)]
    join_ref: Option<&'a RawValue>,
}

/// What a `broadcast` push carries: `{type: "broadcast", event, payload}`.
#[derive(Deserialize)]
struct BroadcastPush<'a> {
    event: Option<String>,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
}

fn value(raw: Option<&RawValue>) -> Result<Option<Value>, DecodeError> {
    raw.map(|r| serde_json::from_str(r.get())).transpose().or_else(|e| malformed(format!("invalid JSON: {e}")))
}

/// Decodes a text frame. A `broadcast` push keeps its inner payload as the
/// text it came in, for fan-out; everything else is parsed.
pub fn decode_text(vsn: Vsn, text: &str) -> Result<Inbound, DecodeError> {
    let invalid = |e: serde_json::Error| DecodeError(format!("invalid JSON: {e}"));
    let (join_ref, msg_ref, topic, event, payload) = match vsn {
        Vsn::V1 => {
            let f: V1Frame = serde_json::from_str(text).map_err(|e| match text.trim_start().starts_with('{') {
                true => invalid(e),
                false => DecodeError("expected a JSON object".into()),
            })?;
            (value(f.join_ref)?, value(f.msg_ref)?, value(f.topic)?, value(f.event)?, f.payload)
        }
        Vsn::V2 => {
            let expected = "expected a JSON array [join_ref, ref, topic, event, payload]";
            let parts: Vec<&RawValue> =
                serde_json::from_str(text).map_err(|e| match text.trim_start().starts_with('[') {
                    true => DecodeError(format!("{expected}: {e}")),
                    false => DecodeError(expected.into()),
                })?;
            let [join_ref, msg_ref, topic, event, payload] = parts[..] else {
                return malformed(expected);
            };
            (value(Some(join_ref))?, value(Some(msg_ref))?, value(Some(topic))?, value(Some(event))?, Some(payload))
        }
    };
    let event = as_string(event.as_ref(), "event")?;
    let payload = match payload {
        Some(raw) if event == "broadcast" => match serde_json::from_str::<BroadcastPush>(raw.get()) {
            Ok(push) => InboundPayload::Broadcast(Broadcast {
                event: push.event.unwrap_or_default(),
                payload: Body::Json(push.payload.map_or_else(|| RawValue::NULL.to_owned(), ToOwned::to_owned)),
            }),
            Err(_) => InboundPayload::Json(value(Some(raw))?.unwrap_or(Value::Null)),
        },
        raw => InboundPayload::Json(value(raw)?.unwrap_or_else(|| json!({}))),
    };
    Ok(Inbound {
        join_ref: as_ref(join_ref.as_ref(), "join_ref")?,
        msg_ref: as_ref(msg_ref.as_ref(), "ref")?,
        topic: as_string(topic.as_ref(), "topic")?,
        event,
        payload,
    })
}

const KIND_USER_BROADCAST_PUSH: u8 = 3;
const KIND_USER_BROADCAST: u8 = 4;
const ENCODING_BINARY: u8 = 0;
const ENCODING_JSON: u8 = 1;

/// Decodes a binary frame: only V2 kind 3 (a client's user broadcast push).
pub fn decode_binary(vsn: Vsn, bytes: &[u8]) -> Result<Inbound, DecodeError> {
    if vsn != Vsn::V2 {
        return malformed("binary frames need vsn=2.0.0");
    }
    let header = 7;
    if bytes.len() < header {
        return malformed("binary frame shorter than its header");
    }
    if bytes[0] != KIND_USER_BROADCAST_PUSH {
        return malformed(format!("unsupported binary frame kind {}", bytes[0]));
    }
    let lens = [bytes[1], bytes[2], bytes[3], bytes[4], bytes[5]].map(usize::from);
    let encoding = bytes[6];
    let mut rest = &bytes[header..];
    let mut fields: Vec<&[u8]> = Vec::with_capacity(5);
    for len in lens {
        if rest.len() < len {
            return malformed("binary frame shorter than its declared fields");
        }
        let (field, tail) = rest.split_at(len);
        fields.push(field);
        rest = tail;
    }
    let text = |i: usize, what: &str| -> Result<String, DecodeError> {
        String::from_utf8(fields[i].to_vec()).or_else(|_| malformed(format!("{what} is not UTF-8")))
    };
    let optional = |s: String| if s.is_empty() { None } else { Some(s) };
    let payload = match encoding {
        ENCODING_JSON => {
            let text = String::from_utf8(rest.to_vec()).or_else(|_| malformed("the JSON payload is not UTF-8"))?;
            Body::json_text(text).or_else(|e| malformed(format!("invalid JSON payload: {e}")))?
        }
        ENCODING_BINARY => Body::Binary(rest.to_vec()),
        other => return malformed(format!("unknown payload encoding {other}")),
    };
    Ok(Inbound {
        join_ref: optional(text(0, "join_ref")?),
        msg_ref: optional(text(1, "ref")?),
        topic: text(2, "topic")?,
        event: "broadcast".to_owned(),
        payload: InboundPayload::Broadcast(Broadcast { event: text(3, "event")?, payload }),
    })
}

/// A frame ready to write to a socket.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
}

/// Encodes a server message. Replies, pushes, `phx_close`: everything but
/// broadcasts, which go through [`encode_broadcast`].
pub fn encode(
    vsn: Vsn,
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    event: &str,
    payload: &Value,
) -> Frame {
    let text = match vsn {
        // Phoenix's V1 serializer sends no join_ref; Python requires "ref", even null.
        Vsn::V1 => json!({"topic": topic, "event": event, "payload": payload, "ref": msg_ref}).to_string(),
        Vsn::V2 => json!([join_ref, msg_ref, topic, event, payload]).to_string(),
    };
    Frame::Text(text)
}

/// A server push whose payload is JSON text already: the part shared by many
/// recipients is serialized once and spliced in.
pub fn encode_raw(vsn: Vsn, topic: &str, event: &str, payload_json: &str) -> Frame {
    let (topic, event) = (Value::from(topic), Value::from(event));
    Frame::Text(match vsn {
        Vsn::V1 => format!(r#"{{"topic":{topic},"event":{event},"payload":{payload_json},"ref":null}}"#),
        Vsn::V2 => format!("[null,null,{topic},{event},{payload_json}]"),
    })
}

/// `phx_reply` payload.
pub fn reply(status: &str, response: Value) -> Value {
    json!({"status": status, "response": response})
}

/// Encodes a broadcast for one serializer; the caller encodes once per
/// serializer and shares the frame among subscribers. `None` when the
/// serializer cannot carry it (binary payloads to V1 clients).
pub fn encode_broadcast(vsn: Vsn, topic: &str, broadcast: &Broadcast, meta: Option<&Value>) -> Option<Frame> {
    if vsn == Vsn::V2
        && let Some(frame) = encode_kind4(topic, broadcast, meta)
    {
        return Some(frame);
    }
    let Body::Json(payload) = &broadcast.payload else {
        return None;
    };
    // The payload's text is spliced in as it is.
    let event = Value::from(broadcast.event.as_str());
    let meta = meta.map(|m| format!(r#","meta":{m}"#)).unwrap_or_default();
    let inner = format!(r#"{{"type":"broadcast","event":{event},"payload":{}{meta}}}"#, payload.get());
    Some(encode_raw(vsn, topic, "broadcast", &inner))
}

/// Kind 4, or `None` when a header field does not fit in its one-byte length.
fn encode_kind4(topic: &str, broadcast: &Broadcast, meta: Option<&Value>) -> Option<Frame> {
    let meta = meta.map(|m| m.to_string()).unwrap_or_default();
    let (encoding, body) = match &broadcast.payload {
        Body::Json(v) => (ENCODING_JSON, v.get().as_bytes()),
        Body::Binary(b) => (ENCODING_BINARY, b.as_slice()),
    };
    let lens = [topic.len(), broadcast.event.len(), meta.len()].map(|l| u8::try_from(l).ok());
    let [Some(t), Some(e), Some(m)] = lens else {
        return None;
    };
    let mut out = Vec::with_capacity(5 + topic.len() + broadcast.event.len() + meta.len() + body.len());
    out.extend_from_slice(&[KIND_USER_BROADCAST, t, e, m, encoding]);
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(broadcast.event.as_bytes());
    out.extend_from_slice(meta.as_bytes());
    out.extend_from_slice(body);
    Some(Frame::Binary(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind3(
        join_ref: &str,
        msg_ref: &str,
        topic: &str,
        event: &str,
        meta: &str,
        encoding: u8,
        body: &[u8],
    ) -> Vec<u8> {
        let mut f = vec![
            3,
            join_ref.len() as u8,
            msg_ref.len() as u8,
            topic.len() as u8,
            event.len() as u8,
            meta.len() as u8,
            encoding,
        ];
        for s in [join_ref, msg_ref, topic, event, meta] {
            f.extend_from_slice(s.as_bytes());
        }
        f.extend_from_slice(body);
        f
    }

    #[test]
    fn vsn_defaults_to_v1_and_rejects_unknown() {
        assert_eq!(Vsn::from_query(None), Ok(Vsn::V1));
        assert_eq!(Vsn::from_query(Some("1.0.0")), Ok(Vsn::V1));
        assert_eq!(Vsn::from_query(Some("2.0.0")), Ok(Vsn::V2));
        assert!(Vsn::from_query(Some("3.0.0")).is_err());
    }

    #[test]
    fn decodes_v2_arrays() {
        let m = decode_text(Vsn::V2, r#"[null,"1","phoenix","heartbeat",{}]"#).unwrap();
        assert_eq!(m.join_ref, None);
        assert_eq!(m.msg_ref.as_deref(), Some("1"));
        assert_eq!(m.topic, "phoenix");
        assert_eq!(m.event, "heartbeat");
        assert_eq!(m.payload, InboundPayload::Json(json!({})));
    }

    #[test]
    fn decodes_v1_objects_from_js_and_python() {
        let js = r#"{"topic":"realtime:room","event":"phx_join","payload":{"config":{}},"ref":"6","join_ref":"6"}"#;
        let m = decode_text(Vsn::V1, js).unwrap();
        assert_eq!((m.join_ref.as_deref(), m.msg_ref.as_deref()), (Some("6"), Some("6")));
        let py = r#"{"event":"heartbeat","payload":{},"topic":"phoenix","ref":null,"join_ref":null}"#;
        let m = decode_text(Vsn::V1, py).unwrap();
        assert_eq!((m.join_ref, m.msg_ref), (None, None));
        // A numeric ref is kept as text.
        let m = decode_text(Vsn::V1, r#"{"topic":"t","event":"e","ref":7}"#).unwrap();
        assert_eq!(m.msg_ref.as_deref(), Some("7"));
        assert_eq!(m.payload, InboundPayload::Json(json!({})));
    }

    #[test]
    fn broadcast_payloads_keep_their_text() {
        let text = r#"[null,null,"realtime:r","broadcast",{"type":"broadcast","event":"e","payload":{"b": [1, 2]}}]"#;
        let m = decode_text(Vsn::V2, text).unwrap();
        let InboundPayload::Broadcast(b) = m.payload else { panic!("{:?}", m.payload) };
        assert_eq!(b.event, "e");
        let Body::Json(raw) = &b.payload else { panic!() };
        assert_eq!(raw.get(), r#"{"b": [1, 2]}"#, "not parsed into a tree nor written again");
        let v1 = r#"{"topic":"realtime:r","event":"broadcast","payload":{"event":"e"},"ref":null}"#;
        let InboundPayload::Broadcast(b) = decode_text(Vsn::V1, v1).unwrap().payload else { panic!() };
        assert_eq!(b.payload.wire_len(), 4, "a missing payload is null");
        // Not an object: left to the connection, as JSON.
        let odd = decode_text(Vsn::V2, r#"[null,null,"realtime:r","broadcast",[1]]"#).unwrap();
        assert_eq!(odd.payload, InboundPayload::Json(json!([1])));
    }

    #[test]
    fn rejects_malformed_text() {
        for (vsn, text) in [
            (Vsn::V2, "not json"),
            (Vsn::V2, r#"{"topic":"t"}"#),
            (Vsn::V2, r#"[null,"1","t","e"]"#),
            (Vsn::V2, r#"[null,"1",5,"e",{}]"#),
            (Vsn::V2, r#"[{},"1","t","e",{}]"#),
            (Vsn::V1, r#"["a"]"#),
            (Vsn::V1, r#"{"event":"e"}"#),
        ] {
            assert!(decode_text(vsn, text).is_err(), "{text} should not decode");
        }
    }

    #[test]
    fn decodes_kind3_json_and_binary() {
        let f = kind3("6", "7", "realtime:room", "ping", "{}", 1, br#"{"n":1}"#);
        let m = decode_binary(Vsn::V2, &f).unwrap();
        assert_eq!(m.join_ref.as_deref(), Some("6"));
        assert_eq!(m.msg_ref.as_deref(), Some("7"));
        assert_eq!(m.topic, "realtime:room");
        assert_eq!(m.event, "broadcast");
        assert_eq!(
            m.payload,
            InboundPayload::Broadcast(Broadcast { event: "ping".into(), payload: Body::json(&json!({"n": 1})) })
        );
        let f = kind3("6", "", "realtime:room", "bin", "", 0, &[0, 159, 255]);
        let m = decode_binary(Vsn::V2, &f).unwrap();
        assert_eq!(m.msg_ref, None);
        assert_eq!(
            m.payload,
            InboundPayload::Broadcast(Broadcast { event: "bin".into(), payload: Body::Binary(vec![0, 159, 255]) })
        );
    }

    #[test]
    fn rejects_malformed_binary() {
        let good = kind3("6", "7", "realtime:room", "ping", "", 1, b"{}");
        assert!(decode_binary(Vsn::V1, &good).is_err());
        for cut in 0..good.len() - 2 {
            assert!(decode_binary(Vsn::V2, &good[..cut]).is_err(), "truncated at {cut}");
        }
        let mut wrong_kind = good.clone();
        wrong_kind[0] = 0;
        assert!(decode_binary(Vsn::V2, &wrong_kind).is_err());
        assert!(decode_binary(Vsn::V2, &kind3("6", "7", "t", "e", "", 1, b"{nope")).is_err());
        assert!(decode_binary(Vsn::V2, &kind3("6", "7", "t", "e", "", 9, b"{}")).is_err());
        assert!(decode_binary(Vsn::V2, &kind3("6", "7", "t", "\u{ff}", "", 1, b"{}")[..]).is_ok());
        let mut bad_utf8 = kind3("6", "7", "tt", "e", "", 1, b"{}");
        bad_utf8[9] = 0xff;
        assert!(decode_binary(Vsn::V2, &bad_utf8).is_err());
    }

    #[test]
    fn encodes_replies_per_serializer() {
        let p = reply("ok", json!({}));
        assert_eq!(
            encode(Vsn::V2, None, Some("1"), "phoenix", "phx_reply", &p),
            Frame::Text(r#"[null,"1","phoenix","phx_reply",{"response":{},"status":"ok"}]"#.into())
        );
        let Frame::Text(v1) = encode(Vsn::V1, Some("1"), Some("1"), "realtime:room", "phx_reply", &p) else {
            panic!("text expected")
        };
        let v1: Value = serde_json::from_str(&v1).unwrap();
        assert_eq!(
            v1,
            json!({"topic":"realtime:room","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"1"})
        );
        // "ref" is present even when null.
        let Frame::Text(push) = encode(Vsn::V1, None, None, "t", "presence_diff", &json!({})) else { panic!() };
        assert!(push.contains(r#""ref":null"#));
    }

    #[test]
    fn raw_payloads_are_spliced_as_valid_json() {
        let payload = r#"{"ids":[1],"data":{"a":"\"q\""}}"#;
        for vsn in [Vsn::V1, Vsn::V2] {
            let Frame::Text(t) = encode_raw(vsn, "realtime:a\"b", "postgres_changes", payload) else { panic!() };
            let v: Value = serde_json::from_str(&t).unwrap();
            let (topic, p) = if vsn == Vsn::V1 { (&v["topic"], &v["payload"]) } else { (&v[2], &v[4]) };
            assert_eq!(topic, "realtime:a\"b");
            assert_eq!(p["data"]["a"], "\"q\"");
        }
    }

    #[test]
    fn broadcasts_go_out_as_kind4_to_v2_and_json_to_v1() {
        let b = Broadcast { event: "ping".into(), payload: Body::json(&json!({"n": 1})) };
        let meta = json!({"id": "x"});
        let Some(Frame::Binary(f)) = encode_broadcast(Vsn::V2, "realtime:room", &b, Some(&meta)) else { panic!() };
        let expected_meta = br#"{"id":"x"}"#;
        assert_eq!(&f[..5], &[4, 13, 4, expected_meta.len() as u8, 1]);
        assert_eq!(&f[5..18], b"realtime:room");
        assert_eq!(&f[18..22], b"ping");
        assert_eq!(&f[22..22 + expected_meta.len()], expected_meta);
        assert_eq!(&f[22 + expected_meta.len()..], br#"{"n":1}"#);

        let Some(Frame::Text(t)) = encode_broadcast(Vsn::V1, "realtime:room", &b, None) else { panic!() };
        let v: Value = serde_json::from_str(&t).unwrap();
        assert_eq!(
            v,
            json!({"topic":"realtime:room","event":"broadcast","ref":null,
                   "payload":{"type":"broadcast","event":"ping","payload":{"n":1}}})
        );
    }

    #[test]
    fn binary_broadcasts_skip_v1_and_long_topics_fall_back_to_text() {
        let bin = Broadcast { event: "b".into(), payload: Body::Binary(vec![1, 2]) };
        assert_eq!(encode_broadcast(Vsn::V1, "realtime:r", &bin, None), None);
        let Some(Frame::Binary(f)) = encode_broadcast(Vsn::V2, "realtime:r", &bin, None) else { panic!() };
        assert_eq!(f[4], 0);
        assert_eq!(&f[f.len() - 2..], &[1, 2]);

        let long_topic = format!("realtime:{}", "x".repeat(300));
        let json_b = Broadcast { event: "e".into(), payload: Body::json(&json!({})) };
        let Some(Frame::Text(t)) = encode_broadcast(Vsn::V2, &long_topic, &json_b, None) else { panic!() };
        assert!(t.starts_with("[null,null,"));
        assert_eq!(encode_broadcast(Vsn::V2, &long_topic, &bin, None), None);
    }
}

/// Properties over untrusted frames (`make fuzz` runs them for millions of cases).
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn vsn() -> impl Strategy<Value = Vsn> {
        prop_oneof![Just(Vsn::V1), Just(Vsn::V2)]
    }

    /// JSON-ish text: arrays and objects of the shapes frames have, broken at random.
    fn frameish() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            r#"\[("[a-z0-9:]{0,6}"|null|[0-9]{1,3}|\{\}|\[\]|"broadcast"|"phx_join"),{0,5}(\{"(event|payload|type)":("x"|\{\}|null|\[1\])\})?\]?"#,
            r#"\{("(topic|event|payload|ref|join_ref)":("[a-z]{0,4}"|null|[0-9]{1,3}|\{\}),?){0,6}\}?"#,
        ]
    }

    fn field() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9:_ é-]{0,20}"
    }

    proptest! {
        #[test]
        fn text_frames_decode_or_fail_cleanly(vsn in vsn(), text in frameish()) {
            if let Err(e) = decode_text(vsn, &text) {
                prop_assert!(!e.to_string().is_empty());
            }
        }

        #[test]
        fn binary_frames_decode_or_fail_cleanly(vsn in vsn(), bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_binary(vsn, &bytes);
            // With the kind of a client push, the lengths get exercised.
            let mut pushed = bytes;
            if let Some(first) = pushed.first_mut() {
                *first = KIND_USER_BROADCAST_PUSH;
            }
            let _ = decode_binary(Vsn::V2, &pushed);
        }

        #[test]
        fn v2_text_pushes_round_trip(
            join_ref in prop::option::of(field()), msg_ref in prop::option::of(field()),
            topic in field(), event in field(), n in any::<i64>(), s in any::<String>(),
        ) {
            let payload = json!({"n": n, "s": s});
            let text = json!([join_ref, msg_ref, topic, event, payload]).to_string();
            let inbound = decode_text(Vsn::V2, &text).unwrap();
            prop_assert_eq!((inbound.join_ref, inbound.msg_ref), (join_ref, msg_ref));
            prop_assert_eq!((inbound.topic, inbound.event.clone()), (topic, event.clone()));
            if event != "broadcast" {
                prop_assert_eq!(inbound.payload, InboundPayload::Json(payload));
            }
        }

        #[test]
        fn binary_pushes_round_trip(
            join_ref in field(), msg_ref in field(), topic in field(), event in field(),
            body in prop::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut frame = vec![KIND_USER_BROADCAST_PUSH];
            for f in [&join_ref, &msg_ref, &topic, &event] {
                frame.push(f.len() as u8);
            }
            frame.extend([0, ENCODING_BINARY]);
            for f in [&join_ref, &msg_ref, &topic, &event] {
                frame.extend_from_slice(f.as_bytes());
            }
            frame.extend_from_slice(&body);
            let inbound = decode_binary(Vsn::V2, &frame).unwrap();
            prop_assert_eq!(inbound.topic, topic);
            prop_assert_eq!(inbound.join_ref, (!join_ref.is_empty()).then_some(join_ref));
            prop_assert_eq!(inbound.msg_ref, (!msg_ref.is_empty()).then_some(msg_ref));
            prop_assert_eq!(inbound.payload, InboundPayload::Broadcast(Broadcast { event, payload: Body::Binary(body) }));
        }
    }
}
