//! Read checks of private joins, remembered for `realtime.authorization_cache`
//! per (role, claims, topic, presence): clients that rejoin, or many sockets
//! of one user joining one topic, do not each cost the worker a probe. A
//! channel already keeps its join's answer for its whole life; this adds at
//! most the cache's time to what a new join may see of an old answer.

use crate::bridge::{AuthContext, ReadPermissions};
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries it holds at most (each is 40 bytes or so).
pub const MAX_ENTRIES: usize = 100_000;

/// Keys are keyed 128-bit hashes, not the claims themselves: memory stays
/// small whatever the tokens hold, and nobody can aim at a collision without
/// the process's random keys.
pub struct ReadCache {
    hashers: (RandomState, RandomState),
    entries: Mutex<HashMap<u128, (ReadPermissions, Instant)>>,
}

impl Default for ReadCache {
    fn default() -> Self {
        ReadCache { hashers: (RandomState::new(), RandomState::new()), entries: Mutex::default() }
    }
}

impl ReadCache {
    fn key(&self, ctx: &AuthContext, topic: &str, presence: bool) -> u128 {
        let hash = |state: &RandomState| state.hash_one((&ctx.role, &ctx.claims_json, &ctx.headers, topic, presence));
        (u128::from(hash(&self.hashers.0)) << 64) | u128::from(hash(&self.hashers.1))
    }

    pub fn get(&self, ctx: &AuthContext, topic: &str, presence: bool, now: Instant) -> Option<ReadPermissions> {
        let key = self.key(ctx, topic, presence);
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(&key).filter(|(_, expires)| *expires > now).map(|(read, _)| *read)
    }

    pub fn put(&self, ctx: &AuthContext, topic: &str, presence: bool, read: ReadPermissions, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let (key, now) = (self.key(ctx, topic, presence), Instant::now());
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, (_, expires)| *expires > now);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(key, (read, now + ttl));
    }

    pub fn clear(&self) {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(role: &str, claims: &str) -> AuthContext {
        AuthContext { role: role.into(), claims_json: claims.into(), sub: None, headers: None }
    }

    const YES: ReadPermissions = ReadPermissions { broadcast: true, presence: false };

    #[test]
    fn an_answer_is_kept_for_its_time_and_its_key_only() {
        let cache = ReadCache::default();
        let a = ctx("authenticated", r#"{"sub":"a"}"#);
        cache.put(&a, "room", false, YES, Duration::from_secs(5));
        let now = Instant::now();
        assert_eq!(cache.get(&a, "room", false, now), Some(YES));
        assert_eq!(cache.get(&a, "room", true, now), None);
        assert_eq!(cache.get(&a, "other", false, now), None);
        assert_eq!(cache.get(&ctx("authenticated", r#"{"sub":"b"}"#), "room", false, now), None);
        assert_eq!(cache.get(&ctx("anon", r#"{"sub":"a"}"#), "room", false, now), None);
        assert_eq!(cache.get(&a, "room", false, now + Duration::from_secs(6)), None);
    }

    #[test]
    fn a_zero_time_keeps_nothing_and_a_full_cache_starts_over() {
        let cache = ReadCache::default();
        let a = ctx("anon", "{}");
        cache.put(&a, "room", false, YES, Duration::ZERO);
        assert_eq!(cache.get(&a, "room", false, Instant::now()), None);
        for i in 0..MAX_ENTRIES + 10 {
            cache.put(&a, &i.to_string(), false, YES, Duration::from_secs(60));
        }
        assert!(cache.entries.lock().unwrap().len() <= MAX_ENTRIES);
        cache.clear();
        assert!(cache.entries.lock().unwrap().is_empty());
    }
}
