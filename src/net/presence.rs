//! Phoenix Presence state for one topic, with Phoenix Tracker's semantics:
//! what `presence_state` and `presence_diff` carry to clients.
//!
//! Every channel instance that tracks is an [`Owner`] with at most one meta,
//! filed under a presence key that several owners may share (one user, many
//! tabs). State is kept ordered — keys sorted, metas in track order — so
//! payloads are deterministic.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// One tracking channel instance.
pub type Owner = u64;

/// A meta: the tracked payload plus `phx_ref` (and `phx_ref_prev`).
pub type Meta = Map<String, Value>;

/// Presence of one topic.
#[derive(Debug, Default)]
pub struct TopicPresence {
    owners: HashMap<Owner, Tracked>,
    /// Owners under each key, in track order.
    keys: BTreeMap<String, Vec<Owner>>,
}

#[derive(Debug)]
struct Tracked {
    key: String,
    payload: Map<String, Value>,
    phx_ref: String,
    /// The ref this meta replaced, which clients use to match an update's
    /// join with its leave.
    phx_ref_prev: Option<String>,
}

impl Tracked {
    fn meta(&self) -> Meta {
        let mut meta = self.payload.clone();
        // Set last so a payload cannot forge the refs.
        meta.insert("phx_ref".into(), self.phx_ref.clone().into());
        match &self.phx_ref_prev {
            Some(prev) => meta.insert("phx_ref_prev".into(), prev.clone().into()),
            None => meta.remove("phx_ref_prev"),
        };
        meta
    }
}

impl TopicPresence {
    /// Tracks `owner` under `key` with `payload`. Returns the diff to
    /// broadcast, or `None` when the owner already tracks exactly this.
    /// Tracked members (one per tracking channel).
    pub fn members(&self) -> usize {
        self.owners.len()
    }

    pub fn track(&mut self, owner: Owner, key: &str, payload: Map<String, Value>) -> Option<Diff> {
        if let Some(old) = self.owners.get(&owner)
            && old.key == key
            && old.payload == payload
        {
            return None;
        }
        // An update is a leave of the old meta plus a join of the new one, as
        // in Phoenix, which also moves the owner to the end of its key's metas.
        let mut diff = Diff::default();
        let phx_ref_prev = self.remove(owner).map(|old| {
            diff.add_leave(&old);
            old.phx_ref
        });
        let tracked = Tracked { key: key.to_owned(), payload, phx_ref: new_ref(), phx_ref_prev };
        diff.add_join(&tracked);
        self.keys.entry(key.to_owned()).or_default().push(owner);
        self.owners.insert(owner, tracked);
        Some(diff)
    }

    /// Stops tracking `owner`. Returns the leave diff, or `None` when it was
    /// not tracking.
    pub fn untrack(&mut self, owner: Owner) -> Option<Diff> {
        let old = self.remove(owner)?;
        let mut diff = Diff::default();
        diff.add_leave(&old);
        Some(diff)
    }

    /// The `presence_state` payload: `{key: {"metas": [...]}}`.
    pub fn state(&self) -> Value {
        let state = self
            .keys
            .iter()
            .map(|(key, owners)| {
                let metas: Vec<Value> = owners.iter().map(|owner| Value::Object(self.owners[owner].meta())).collect();
                (key.clone(), json!({ "metas": metas }))
            })
            .collect();
        Value::Object(state)
    }

    /// Each owner's presence key and payload.
    pub fn entries(&self) -> impl Iterator<Item = (Owner, &str, &Map<String, Value>)> {
        self.owners.iter().map(|(owner, t)| (*owner, t.key.as_str(), &t.payload))
    }

    /// Whether nobody is tracked.
    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }

    fn remove(&mut self, owner: Owner) -> Option<Tracked> {
        let old = self.owners.remove(&owner)?;
        if let Some(owners) = self.keys.get_mut(&old.key) {
            owners.retain(|o| *o != owner);
            if owners.is_empty() {
                self.keys.remove(&old.key);
            }
        }
        Some(old)
    }
}

/// A `presence_diff`: metas that joined and left, by key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Diff {
    pub joins: BTreeMap<String, Vec<Meta>>,
    pub leaves: BTreeMap<String, Vec<Meta>>,
}

impl Diff {
    fn add_join(&mut self, tracked: &Tracked) {
        let metas = self.joins.entry(tracked.key.clone()).or_default();
        metas.push(tracked.meta());
    }

    fn add_leave(&mut self, tracked: &Tracked) {
        let metas = self.leaves.entry(tracked.key.clone()).or_default();
        metas.push(tracked.meta());
    }

    /// The `presence_diff` payload; `joins` and `leaves` are always present.
    pub fn to_json(&self) -> Value {
        let side = |metas: &BTreeMap<String, Vec<Meta>>| -> Value {
            metas.iter().map(|(key, metas)| (key.clone(), json!({ "metas": metas }))).collect::<Map<_, _>>().into()
        };
        json!({ "joins": side(&self.joins), "leaves": side(&self.leaves) })
    }
}

/// A unique `phx_ref`: 16 URL-safe characters, like Phoenix's. A process-wide
/// counter makes it unique within the process; a random per-process prefix
/// makes it unlikely that a restarted server repeats earlier refs.
pub fn new_ref() -> String {
    static PREFIX: OnceLock<[u8; 4]> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        let random = uuid::Uuid::new_v4().into_bytes();
        [random[0], random[1], random[2], random[3]]
    });
    let mut bytes = [0u8; 12];
    bytes[..4].copy_from_slice(prefix);
    bytes[4..].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn payload(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    /// The `phx_ref` of the only meta under `key` in one side of a diff.
    fn only_ref(side: &BTreeMap<String, Vec<Meta>>, key: &str) -> String {
        let [meta] = side[key].as_slice() else {
            panic!("expected one meta under {key}: {side:?}");
        };
        meta["phx_ref"].as_str().unwrap().to_owned()
    }

    #[test]
    fn empty_state() {
        let presence = TopicPresence::default();
        assert!(presence.is_empty());
        assert_eq!(presence.state(), json!({}));
    }

    #[test]
    fn first_track_joins() {
        let mut presence = TopicPresence::default();
        let diff = presence.track(1, "alice", payload(json!({"status": "online"}))).unwrap();
        let phx_ref = only_ref(&diff.joins, "alice");
        assert_eq!(
            diff.to_json(),
            json!({
                "joins": {"alice": {"metas": [{"status": "online", "phx_ref": phx_ref}]}},
                "leaves": {}
            })
        );
        assert!(!presence.is_empty());
        assert_eq!(presence.state(), json!({"alice": {"metas": [{"status": "online", "phx_ref": phx_ref}]}}));
    }

    #[test]
    fn same_payload_again_is_no_diff() {
        let mut presence = TopicPresence::default();
        presence.track(1, "alice", payload(json!({"a": 1})));
        let before = presence.state();
        assert_eq!(presence.track(1, "alice", payload(json!({"a": 1}))), None);
        assert_eq!(presence.state(), before);
    }

    #[test]
    fn changed_payload_leaves_and_rejoins_with_prev_ref() {
        let mut presence = TopicPresence::default();
        let first = presence.track(1, "alice", payload(json!({"a": 1}))).unwrap();
        let old_ref = only_ref(&first.joins, "alice");

        let diff = presence.track(1, "alice", payload(json!({"a": 2}))).unwrap();
        let new_ref = only_ref(&diff.joins, "alice");
        assert_ne!(new_ref, old_ref);
        assert_eq!(
            diff.to_json(),
            json!({
                "joins": {"alice": {"metas": [
                    {"a": 2, "phx_ref": new_ref, "phx_ref_prev": old_ref}
                ]}},
                "leaves": {"alice": {"metas": [{"a": 1, "phx_ref": old_ref}]}}
            })
        );
        // The state holds only the new meta, as the diff announced it.
        assert_eq!(presence.state(), json!({"alice": {"metas": [diff.joins["alice"][0].clone()]}}));
    }

    #[test]
    fn changed_key_leaves_the_old_key() {
        let mut presence = TopicPresence::default();
        let first = presence.track(1, "alice", payload(json!({"a": 1}))).unwrap();
        let old_ref = only_ref(&first.joins, "alice");

        let diff = presence.track(1, "bob", payload(json!({"a": 1}))).unwrap();
        assert_eq!(only_ref(&diff.leaves, "alice"), old_ref);
        assert_eq!(diff.joins["bob"][0]["phx_ref_prev"], json!(old_ref));
        assert!(!diff.joins.contains_key("alice"));
        assert!(!diff.leaves.contains_key("bob"));
        let state = presence.state();
        assert_eq!(state.as_object().unwrap().len(), 1, "{state}");
        assert_eq!(state["bob"]["metas"][0]["a"], json!(1));
    }

    #[test]
    fn owners_share_a_key_in_track_order() {
        let mut presence = TopicPresence::default();
        presence.track(7, "alice", payload(json!({"tab": 1})));
        presence.track(3, "alice", payload(json!({"tab": 2})));
        presence.track(5, "zed", payload(json!({"tab": 1})));
        presence.track(9, "bob", payload(json!({"tab": 1})));

        let tabs = |state: &Value, key: &str| -> Vec<Value> {
            let metas = state[key]["metas"].as_array().unwrap();
            metas.iter().map(|m| m["tab"].clone()).collect()
        };
        let state = presence.state();
        let keys: Vec<&String> = state.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["alice", "bob", "zed"]);
        assert_eq!(tabs(&state, "alice"), [json!(1), json!(2)]);

        // An update moves the meta to the end, as Phoenix's leave + join does.
        presence.track(7, "alice", payload(json!({"tab": 3})));
        assert_eq!(tabs(&presence.state(), "alice"), [json!(2), json!(3)]);
    }

    #[test]
    fn untrack_leaves_and_cleans_up() {
        let mut presence = TopicPresence::default();
        let alice = presence.track(1, "alice", payload(json!({"a": 1}))).unwrap();
        presence.track(2, "alice", payload(json!({"a": 2})));

        let diff = presence.untrack(1).unwrap();
        assert_eq!(
            diff.to_json(),
            json!({
                "joins": {},
                "leaves": {"alice": {"metas": [alice.joins["alice"][0].clone()]}}
            })
        );
        assert_eq!(presence.untrack(1), None);
        assert_eq!(presence.state()["alice"]["metas"][0]["a"], json!(2));

        presence.untrack(2).unwrap();
        assert!(presence.is_empty());
        assert_eq!(presence.state(), json!({}));
    }

    #[test]
    fn untrack_of_an_unknown_owner_is_no_diff() {
        let mut presence = TopicPresence::default();
        assert_eq!(presence.untrack(42), None);
    }

    #[test]
    fn retracking_after_untrack_is_a_fresh_join() {
        let mut presence = TopicPresence::default();
        presence.track(1, "alice", payload(json!({"a": 1})));
        presence.untrack(1);
        let diff = presence.track(1, "alice", payload(json!({"a": 1}))).unwrap();
        assert!(diff.leaves.is_empty());
        assert!(!diff.joins["alice"][0].contains_key("phx_ref_prev"));
    }

    #[test]
    fn payload_cannot_forge_refs() {
        let mut presence = TopicPresence::default();
        let forged = payload(json!({"phx_ref": "mine", "phx_ref_prev": "old"}));
        let diff = presence.track(1, "alice", forged).unwrap();
        let meta = &diff.joins["alice"][0];
        assert_ne!(meta["phx_ref"], json!("mine"));
        assert_eq!(meta["phx_ref"].as_str().unwrap().len(), 16);
        assert!(!meta.contains_key("phx_ref_prev"), "{meta:?}");
    }

    #[test]
    fn refs_are_unique_and_url_safe() {
        let refs: Vec<String> = (0..10_000).map(|_| new_ref()).collect();
        let distinct: HashSet<&String> = refs.iter().collect();
        assert_eq!(distinct.len(), refs.len());
        for r in &refs {
            assert_eq!(r.len(), 16, "{r}");
            assert!(r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'), "{r}");
        }
    }

    #[test]
    fn refs_are_unique_across_threads() {
        let threads: Vec<_> =
            (0..4).map(|_| std::thread::spawn(|| (0..2_000).map(|_| new_ref()).collect::<Vec<_>>())).collect();
        let mut seen = HashSet::new();
        for thread in threads {
            for r in thread.join().unwrap() {
                assert!(seen.insert(r));
            }
        }
        assert_eq!(seen.len(), 8_000);
    }
}
