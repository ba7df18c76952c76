//! Who watches which table: the `postgres_changes` bindings of every joined
//! channel, kept on the worker's main thread where changes are routed.

use super::filter::Filter;
use crate::bridge::AuthContext;
use std::collections::{HashMap, HashSet};

/// Which actions a binding wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    All,
    Insert,
    Update,
    Delete,
}

impl Event {
    /// Case-insensitive, as Supabase reads it; anything else means `*`.
    pub fn parse(s: Option<&str>) -> Event {
        match s.map(str::to_ascii_uppercase).as_deref() {
            Some("INSERT") => Event::Insert,
            Some("UPDATE") => Event::Update,
            Some("DELETE") => Event::Delete,
            _ => Event::All,
        }
    }

    pub fn matches(self, op: &str) -> bool {
        match self {
            Event::All => true,
            Event::Insert => op == "INSERT",
            Event::Update => op == "UPDATE",
            Event::Delete => op == "DELETE",
        }
    }
}

/// One binding of a channel, resolved to tables.
#[derive(Clone, Debug, PartialEq)]
pub struct Binding {
    /// The id the join reply gave it; clients route events by it.
    pub id: u32,
    pub event: Event,
    pub relids: Vec<u32>,
    pub filters: Vec<Filter>,
    /// The columns the payload keeps (the key always), sorted; None: all.
    pub select: Option<Vec<String>>,
    /// `(schema, table)` as asked when either is `*`: the tables it covers
    /// follow the publication.
    pub wildcard: Option<(String, String)>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ChannelBindings {
    pub ctx: AuthContext,
    pub bindings: Vec<Binding>,
}

/// Channels (by their hub id) and their bindings.
#[derive(Default)]
pub struct Registry {
    channels: HashMap<u64, ChannelBindings>,
}

impl Registry {
    pub fn add(&mut self, channel: u64, bindings: ChannelBindings) {
        self.channels.insert(channel, bindings);
    }

    pub fn remove(&mut self, channel: u64) {
        self.channels.remove(&channel);
    }

    /// New claims after a token refresh.
    pub fn set_ctx(&mut self, channel: u64, ctx: AuthContext) {
        if let Some(c) = self.channels.get_mut(&channel) {
            c.ctx = ctx;
        }
    }

    /// Channels with bindings.
    pub fn len(&self) -> usize {
        self.channels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }

    /// Bindings whose tables follow the publication, with their channel's claims.
    pub fn wildcards_mut(&mut self) -> impl Iterator<Item = (&AuthContext, &mut Binding)> {
        self.channels.values_mut().flat_map(|ChannelBindings { ctx, bindings }| {
            let ctx: &AuthContext = ctx;
            bindings.iter_mut().filter(|b| b.wildcard.is_some()).map(move |b| (ctx, b))
        })
    }

    pub fn has_wildcards(&self) -> bool {
        self.channels.values().any(|c| c.bindings.iter().any(|b| b.wildcard.is_some()))
    }

    /// Every table some binding watches.
    pub fn watched(&self) -> HashSet<u32> {
        self.channels.values().flat_map(|c| c.bindings.iter().flat_map(|b| b.relids.iter().copied())).collect()
    }

    /// The channels with a binding on `relid`, with those bindings.
    pub fn on_table(&self, relid: u32) -> Vec<(u64, &AuthContext, Vec<&Binding>)> {
        self.channels
            .iter()
            .filter_map(|(id, c)| {
                let bindings: Vec<&Binding> = c.bindings.iter().filter(|b| b.relids.contains(&relid)).collect();
                (!bindings.is_empty()).then_some((*id, &c.ctx, bindings))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(role: &str) -> AuthContext {
        AuthContext { role: role.into(), claims_json: "{}".into(), sub: None, headers: None }
    }

    fn binding(id: u32, relids: &[u32]) -> Binding {
        Binding { id, event: Event::All, relids: relids.to_vec(), filters: vec![], select: None, wildcard: None }
    }

    #[test]
    fn events_parse_case_insensitively_and_default_to_all() {
        assert_eq!(Event::parse(Some("insert")), Event::Insert);
        assert_eq!(Event::parse(Some("*")), Event::All);
        assert_eq!(Event::parse(Some("TRUNCATE")), Event::All);
        assert_eq!(Event::parse(None), Event::All);
        assert!(Event::Delete.matches("DELETE") && !Event::Delete.matches("INSERT"));
        assert!(Event::All.matches("UPDATE"));
    }

    #[test]
    fn channels_are_found_by_table() {
        let mut r = Registry::default();
        r.add(1, ChannelBindings { ctx: ctx("anon"), bindings: vec![binding(10, &[100]), binding(11, &[100, 200])] });
        r.add(2, ChannelBindings { ctx: ctx("authenticated"), bindings: vec![binding(20, &[200])] });
        assert_eq!(r.watched(), HashSet::from([100, 200]));
        let on_100 = r.on_table(100);
        assert_eq!(on_100.len(), 1);
        assert_eq!(on_100[0].2.iter().map(|b| b.id).collect::<Vec<_>>(), vec![10, 11]);
        assert_eq!(r.on_table(200).len(), 2);
        r.set_ctx(2, ctx("service_role"));
        assert!(r.on_table(200).iter().any(|(_, c, _)| c.role == "service_role"));
        r.remove(1);
        assert_eq!(r.watched(), HashSet::from([200]));
        r.remove(2);
        assert!(r.is_empty());
    }
}
