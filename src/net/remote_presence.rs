//! Presence tracked on the other nodes, as it reaches this one through the
//! bus: each remote tracking channel is a presence owner here too, under an
//! id of this node's, so local members see remote ones in `presence_state`
//! and `presence_diff` like their own. A node that stops saying it is alive
//! is taken to be gone, and what it tracked leaves.

use super::hub::{Hub, SubId, TopicKey};
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a node that tracks presence says it is alive.
pub const ALIVE_EVERY: Duration = Duration::from_secs(2);
/// A node not heard from for this long is gone.
pub const GONE_AFTER: Duration = Duration::from_secs(7);

#[derive(Default)]
pub struct RemotePresence {
    origins: Mutex<HashMap<String, Origin>>,
}

struct Origin {
    heard: Instant,
    /// Its tracking channels: where each is tracked here, and as whom.
    owners: HashMap<u64, (TopicKey, SubId)>,
}

impl RemotePresence {
    /// Notes that `origin` is alive. True when it was not known: a node that
    /// started, came back, or that this one has just started to hear.
    pub fn heard(&self, origin: &str, now: Instant) -> bool {
        let mut origins = self.origins.lock().unwrap_or_else(|p| p.into_inner());
        match origins.get_mut(origin) {
            Some(known) => {
                known.heard = now;
                false
            }
            None => {
                origins.insert(origin.to_owned(), Origin { heard: now, owners: HashMap::new() });
                true
            }
        }
    }

    /// `owner` of `origin` tracks `payload` under `presence_key`. Returns how
    /// many presence diffs went to local members.
    pub fn track(
        &self,
        hub: &Hub,
        origin: &str,
        key: TopicKey,
        owner: u64,
        presence_key: &str,
        payload: Map<String, Value>,
    ) -> usize {
        let mut origins = self.origins.lock().unwrap_or_else(|p| p.into_inner());
        let Some(known) = origins.get_mut(origin) else { return 0 };
        let id = match known.owners.get(&owner) {
            Some((tracked, id)) if *tracked == key => *id,
            _ => {
                let id = hub.next_id();
                known.owners.insert(owner, (key.clone(), id));
                id
            }
        };
        hub.track(&key, id, presence_key, payload)
    }

    /// `owner` of `origin` stopped tracking.
    pub fn untrack(&self, hub: &Hub, origin: &str, owner: u64) -> usize {
        let mut origins = self.origins.lock().unwrap_or_else(|p| p.into_inner());
        let Some((key, id)) = origins.get_mut(origin).and_then(|o| o.owners.remove(&owner)) else { return 0 };
        hub.untrack(&key, id)
    }

    /// Drops the nodes not heard from for `GONE_AFTER`: what they tracked
    /// leaves. Returns how many presence diffs went to local members.
    pub fn expire(&self, hub: &Hub, now: Instant) -> usize {
        let gone: Vec<Origin> = {
            let mut origins = self.origins.lock().unwrap_or_else(|p| p.into_inner());
            let names: Vec<String> = origins
                .iter()
                .filter(|(_, o)| now.saturating_duration_since(o.heard) >= GONE_AFTER)
                .map(|(name, _)| name.clone())
                .collect();
            names.iter().filter_map(|name| origins.remove(name)).collect()
        };
        gone.into_iter().flat_map(|o| o.owners.into_values()).map(|(key, id)| hub.untrack(&key, id)).sum()
    }

    /// This node's ids for remote owners.
    pub fn ids(&self) -> HashSet<SubId> {
        let origins = self.origins.lock().unwrap_or_else(|p| p.into_inner());
        origins.values().flat_map(|o| o.owners.values().map(|(_, id)| *id)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(topic: &str) -> TopicKey {
        TopicKey { private: false, topic: format!("realtime:{topic}") }
    }

    fn meta(name: &str) -> Map<String, Value> {
        json!({ "name": name }).as_object().unwrap().clone()
    }

    fn names(hub: &Hub, topic: &str) -> Vec<String> {
        let state = hub.presence_state(&key(topic));
        state.as_object().unwrap().values().map(|v| v["metas"][0]["name"].as_str().unwrap().to_owned()).collect()
    }

    #[test]
    fn remote_owners_join_leave_and_go_with_their_node() {
        let (hub, remote) = (Hub::default(), RemotePresence::default());
        let now = Instant::now();
        assert_eq!(remote.track(&hub, "a", key("room"), 1, "k1", meta("ann")), 0, "an unknown node tracks nothing");
        assert!(names(&hub, "room").is_empty());
        assert!(remote.heard("a", now), "first heard");
        assert!(!remote.heard("a", now), "known since");
        assert!(remote.heard("b", now));
        remote.track(&hub, "a", key("room"), 1, "k1", meta("ann"));
        remote.track(&hub, "b", key("room"), 1, "k2", meta("bob"));
        assert_eq!(names(&hub, "room"), ["ann", "bob"], "the same owner number on two nodes is two owners");
        // An update replaces the meta, as a local track does.
        remote.track(&hub, "a", key("room"), 1, "k1", meta("ann2"));
        assert_eq!(names(&hub, "room"), ["ann2", "bob"]);
        assert_eq!(remote.ids().len(), 2);
        remote.untrack(&hub, "b", 1);
        assert_eq!(names(&hub, "room"), ["ann2"]);
        // b is heard later than a: only a goes.
        remote.heard("b", now + Duration::from_secs(5));
        remote.track(&hub, "b", key("hall"), 7, "k3", meta("cy"));
        remote.expire(&hub, now + GONE_AFTER - Duration::from_millis(1));
        assert_eq!(names(&hub, "room"), ["ann2"], "not yet");
        remote.expire(&hub, now + GONE_AFTER);
        assert!(names(&hub, "room").is_empty(), "a is gone, and what it tracked");
        assert_eq!(names(&hub, "hall"), ["cy"]);
        assert_eq!(hub.topic_count(), 1, "a topic only remote presence kept went with it");
        assert!(remote.heard("a", now + GONE_AFTER), "a node that comes back is new again");
    }
}
