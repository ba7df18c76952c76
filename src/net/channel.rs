//! What a `phx_join` asks for, read from its payload the way Supabase Realtime
//! reads it: missing flags are false, booleans may be strings; and what a
//! join came to.

use super::auth::Auth;
use crate::bridge::ReadPermissions;
use crate::protocol::Inbound;
use serde_json::{Map, Value};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

/// A join that passed the checks made at once.
pub struct Prepared {
    pub msg: Inbound,
    pub sub_topic: String,
    pub join: JoinConfig,
    pub auth: Arc<Auth>,
}

/// What a join came to.
pub enum Outcome {
    Allowed(Box<Prepared>, ReadPermissions),
    Refused { msg: Inbound, reason: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct JoinConfig {
    pub broadcast_self: bool,
    pub broadcast_ack: bool,
    /// `config.broadcast.replication_ready`: say when database messages flow.
    pub replication_ready: bool,
    pub replay: Option<Replay>,
    /// `config.broadcast.resume`: broadcasts on the bus after a position.
    pub resume: Option<Resume>,
    pub presence_enabled: bool,
    /// `config.presence.key`; empty means "generate one".
    pub presence_key: String,
    pub private: bool,
    /// The `postgres_changes` bindings, as sent.
    pub postgres_changes: Vec<Value>,
    /// `access_token` (or `user_token`) from the payload.
    pub access_token: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Replay {
    pub since_ms: i64,
    pub limit: i64,
}

/// `{"position": "0/16B3748", "epoch": {"system_identifier": "…"}}`: the
/// `position` of the last broadcast a client got (on any node), and the
/// epoch it came from (optional; another cluster's positions mean nothing).
#[derive(Debug, Clone, PartialEq)]
pub struct Resume {
    pub after: u64,
    pub system_identifier: Option<String>,
    /// The epoch's timeline: positions of another timeline name other WAL
    /// past the point where the timelines parted.
    pub timeline: Option<u32>,
}

impl Resume {
    fn parse(v: &Value) -> Option<Resume> {
        let after = v.get("position").and_then(Value::as_str).and_then(crate::bridge::gap::lsn_from_text)?;
        let system_identifier = match v.get("epoch").and_then(|e| e.get("system_identifier")) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return None,
        };
        let timeline = match v.get("epoch").and_then(|e| e.get("timeline")) {
            None | Some(Value::Null) => None,
            Some(t) => Some(u32::try_from(t.as_u64()?).ok()?),
        };
        Some(Resume { after, system_identifier, timeline })
    }
}

/// `true`, `"true"` → true; anything else → false.
fn flag(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

fn object(v: Option<&Value>) -> Option<&Map<String, Value>> {
    v.and_then(Value::as_object)
}

impl JoinConfig {
    pub fn parse(payload: &Value) -> Result<JoinConfig, String> {
        let config = object(payload.get("config"));
        let get = |k: &str| config.and_then(|c| c.get(k));
        let broadcast = object(get("broadcast"));
        let presence = object(get("presence"));
        let replay = match broadcast.and_then(|b| b.get("replay")) {
            None | Some(Value::Null) => None,
            Some(r) => Some(Replay::parse(r).ok_or("UnableToReplayMessages: Replay params are not valid")?),
        };
        let resume = match broadcast.and_then(|b| b.get("resume")) {
            None | Some(Value::Null) => None,
            Some(r) => Some(Resume::parse(r).ok_or(
                "UnableToResume: resume needs a position as Postgres writes it (0/16B3748), \
                 and optionally an epoch with its system_identifier",
            )?),
        };
        let token = |k: &str| payload.get(k).and_then(Value::as_str).map(str::to_owned);
        Ok(JoinConfig {
            broadcast_self: flag(broadcast.and_then(|b| b.get("self"))),
            broadcast_ack: flag(broadcast.and_then(|b| b.get("ack"))),
            replication_ready: flag(broadcast.and_then(|b| b.get("replication_ready"))),
            replay,
            resume,
            presence_enabled: flag(presence.and_then(|p| p.get("enabled"))),
            presence_key: presence
                .and_then(|p| p.get("key"))
                .map(|k| match k {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                })
                .unwrap_or_default(),
            private: flag(get("private")),
            postgres_changes: get("postgres_changes").and_then(Value::as_array).cloned().unwrap_or_default(),
            access_token: token("access_token").or_else(|| token("user_token")),
        })
    }
}

impl Replay {
    fn parse(v: &Value) -> Option<Replay> {
        let since_ms = v.get("since")?.as_i64()?;
        let limit = match v.get("limit") {
            None | Some(Value::Null) => 25,
            Some(l) => l.as_i64()?,
        };
        Some(Replay { since_ms, limit: limit.clamp(1, 25) })
    }
}

/// The join reply's bindings: each echoed unchanged, plus a non-zero integer
/// `id` that depends only on the binding (clients route events by it).
pub fn bindings_with_ids(bindings: &[Value]) -> Vec<Value> {
    bindings
        .iter()
        .map(|b| {
            let mut b = b.clone();
            let id = binding_id(&b);
            if let Value::Object(o) = &mut b {
                o.insert("id".into(), id.into());
            }
            b
        })
        .collect()
}

fn binding_id(binding: &Value) -> u32 {
    let mut h = DefaultHasher::new();
    binding.to_string().hash(&mut h);
    // 27 bits like Supabase's phash2, never 0 (clients treat 0 as "no id").
    (h.finish() as u32 & 0x07FF_FFFF).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn js_join_payload() {
        let p = json!({"config":{"broadcast":{"ack":false,"self":true},"presence":{"key":"","enabled":true},
                      "postgres_changes":[],"private":false},"access_token":"tok","version":"realtime-js/2.119.1"});
        let c = JoinConfig::parse(&p).unwrap();
        assert!(c.broadcast_self && !c.broadcast_ack && c.presence_enabled && !c.private);
        assert_eq!(c.presence_key, "");
        assert_eq!(c.access_token.as_deref(), Some("tok"));
        assert_eq!(c.replay, None);
        assert_eq!(c.resume, None);
        assert!(!c.replication_ready);
        let c = JoinConfig::parse(&json!({"config":{"broadcast":{"replication_ready":"true"}}})).unwrap();
        assert!(c.replication_ready);
    }

    #[test]
    fn python_join_payload_and_flexible_booleans() {
        let p = json!({"config":{"broadcast":null,"presence":{"key":"alice","enabled":true},"private":"true",
                      "postgres_changes":[]},"user_token":"t"});
        let c = JoinConfig::parse(&p).unwrap();
        assert!(!c.broadcast_self && !c.broadcast_ack && c.private);
        assert_eq!(c.presence_key, "alice");
        assert_eq!(c.access_token.as_deref(), Some("t"));
        let c = JoinConfig::parse(&json!({"config":{"broadcast":{"ack":"true"}}})).unwrap();
        assert!(c.broadcast_ack);
        let c = JoinConfig::parse(&json!({})).unwrap();
        assert!(!c.private && c.postgres_changes.is_empty() && c.access_token.is_none());
    }

    #[test]
    fn replay_params() {
        let c = JoinConfig::parse(&json!({"config":{"broadcast":{"replay":{"since":1000,"limit":100}}}})).unwrap();
        assert_eq!(c.replay, Some(Replay { since_ms: 1000, limit: 25 }));
        let c = JoinConfig::parse(&json!({"config":{"broadcast":{"replay":{"since":1000}}}})).unwrap();
        assert_eq!(c.replay.unwrap().limit, 25);
        assert!(JoinConfig::parse(&json!({"config":{"broadcast":{"replay":{"since":"x"}}}})).is_err());
    }

    #[test]
    fn bindings_are_echoed_in_order_with_stable_non_zero_ids() {
        let b = vec![
            json!({"event":"*","schema":"public","table":"todos","filter":"id=eq.1"}),
            json!({"event":"INSERT","schema":"public"}),
        ];
        let out = bindings_with_ids(&b);
        assert_eq!(out.len(), 2);
        for (i, o) in out.iter().enumerate() {
            let mut without = o.clone();
            let id = without.as_object_mut().unwrap().remove("id").unwrap();
            assert_eq!(without, b[i]);
            assert!(id.as_u64().unwrap() > 0);
        }
        assert_eq!(bindings_with_ids(&b), out, "ids are stable");
        assert_ne!(out[0]["id"], out[1]["id"]);
    }

    #[test]
    fn resume_params() {
        let c = JoinConfig::parse(&json!({"config":{"broadcast":{"resume":{"position":"0/16B3748"}}}})).unwrap();
        assert_eq!(c.resume, Some(Resume { after: 0x016B_3748, system_identifier: None, timeline: None }));
        let epoch = json!({"config":{"broadcast":{"resume":{"position":"1/0","epoch":{"system_identifier":"73","timeline":2}}}}});
        let resume = JoinConfig::parse(&epoch).unwrap().resume.unwrap();
        assert_eq!((resume.system_identifier.as_deref(), resume.timeline), (Some("73"), Some(2)));
        for bad in [
            json!({"position": 5}),
            json!({"position": "5"}),
            json!({}),
            json!({"position":"0/1","epoch":{"system_identifier":7}}),
        ] {
            let e = JoinConfig::parse(&json!({"config":{"broadcast":{"resume": bad}}})).unwrap_err();
            assert!(e.starts_with("UnableToResume:"), "{e}");
        }
    }
}

/// Properties over untrusted join payloads (`make fuzz` runs them for millions of cases).
#[cfg(test)]
mod properties {
    use super::*;
    use crate::arbitrary_json::json_value;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_join_payload_parses_or_is_refused_with_a_reason(payload in json_value()) {
            match JoinConfig::parse(&payload) {
                Ok(join) => {
                    let bindings = bindings_with_ids(&join.postgres_changes);
                    prop_assert_eq!(bindings.len(), join.postgres_changes.len());
                    for (b, again) in bindings.iter().zip(bindings_with_ids(&join.postgres_changes)) {
                        prop_assert!(b.as_object().is_none_or(|o| o["id"].as_u64().is_some_and(|id| id > 0)));
                        prop_assert_eq!(b, &again, "ids depend only on the binding");
                    }
                    if let Some(replay) = join.replay {
                        prop_assert!((1..=25).contains(&replay.limit));
                    }
                }
                Err(reason) => prop_assert!(
                    reason.starts_with("UnableToReplayMessages: ") || reason.starts_with("UnableToResume: "),
                    "{reason}"
                ),
            }
        }
    }
}
