//! What the worker publishes for `realtime.stats`, `realtime.connections`
//! and `realtime.channels`: the network side fills it, the main thread adds
//! its own figures and writes it, as JSON, into shared memory, where any
//! session reads it.

use super::latency::Percentiles;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// When it was taken, in Unix milliseconds.
    pub taken_at_ms: i64,
    pub sockets: u64,
    pub channels: u64,
    pub joins_per_second: f64,
    pub messages_in_per_second: f64,
    pub messages_out_per_second: f64,
    pub bytes_out_per_second: f64,
    /// WAL flushed but not yet decoded, in bytes and in how long the oldest
    /// of it has waited (main thread).
    pub decode_lag_bytes: i64,
    pub decode_lag_ms: f64,
    /// How long ago the decoder last read WAL, in milliseconds (main thread).
    pub decode_idle_ms: i64,
    /// On a hot standby: WAL replayed and not yet read for bus messages
    /// (main thread; 0 on a primary).
    pub standby: bool,
    pub bus_lag_bytes: i64,
    /// From a transaction's commit to its messages in every subscriber's
    /// queue, over the last minute (network side).
    pub commit_to_send: Percentiles,
    /// Row Level Security checks (private-channel authorizations and
    /// Postgres Changes rows per claims group) per second since the last
    /// snapshot, and each check's wait over the last minute (main thread).
    pub rls_checks_per_second: f64,
    pub rls_check: Percentiles,
    pub queued_bytes: u64,
    pub max_memory_bytes: u64,
    pub worker_rss_bytes: u64,
    /// Counters since `stats_reset_ms` (the worker's start), as `pg_stat_*`
    /// views keep them: a monitor that samples now and then can subtract.
    pub totals: Totals,
    pub stats_reset_ms: i64,
    /// Refused joins by code, and limit trips by code, since the worker started.
    pub refused_joins: BTreeMap<String, u64>,
    pub limit_trips: BTreeMap<String, u64>,
    pub connections: Vec<ConnectionRow>,
    pub channel_rows: Vec<ChannelRow>,
    /// Rows left out to fit `realtime.stats_memory`.
    pub connections_left_out: u64,
    pub channels_left_out: u64,
}

/// Cumulative counters of [`Stats`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub joins: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_out: u64,
    /// Database broadcasts and Postgres Changes decoded and fanned out.
    pub database_messages: u64,
    /// Row Level Security checks (main thread).
    pub rls_checks: u64,
}

/// The main thread's figures of a snapshot, for `/metrics`.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct MainFigures {
    pub decode_lag_bytes: i64,
    pub decode_lag_ms: f64,
    /// Checks since the previous snapshot.
    pub rls_checks: u64,
    pub rls_check_p99_ms: f64,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionRow {
    pub id: u64,
    pub role: String,
    pub sub: Option<String>,
    /// The client's IP address ("" when unknown) and port.
    pub remote_address: String,
    pub remote_port: u16,
    pub protocol_version: String,
    pub connected_at_ms: i64,
    pub channels: u32,
    pub queued_bytes: u64,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelRow {
    pub topic: String,
    pub private: bool,
    pub subscribers: u32,
    pub presence_members: u32,
    /// Channels on this topic with `postgres_changes` bindings.
    pub postgres_changes_subscribers: u32,
    /// Their `postgres_changes` bindings, all together.
    pub postgres_changes_bindings: u32,
}

impl Stats {
    /// JSON of at most `max` bytes: rows are left out (and counted) until it fits.
    pub fn into_json_within(mut self, max: usize) -> String {
        loop {
            let json = serde_json::to_string(&self).unwrap_or_default();
            if json.len() <= max {
                return json;
            }
            let over = json.len() - max;
            // Leave out about enough rows (the larger list first), at least one.
            let (rows, left_out) = if self.connections.len() >= self.channel_rows.len() {
                (self.connections.len(), &mut self.connections_left_out)
            } else {
                (self.channel_rows.len(), &mut self.channels_left_out)
            };
            if rows == 0 {
                return "{}".into();
            }
            let per_row = json.len() / (self.connections.len() + self.channel_rows.len()).max(1);
            let drop = (over / per_row.max(1) + 1).min(rows);
            *left_out += drop as u64;
            if self.connections.len() >= self.channel_rows.len() {
                self.connections.truncate(rows - drop);
            } else {
                self.channel_rows.truncate(rows - drop);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_rows(n: usize) -> Stats {
        Stats {
            sockets: n as u64,
            connections: (0..n)
                .map(|i| ConnectionRow { id: i as u64, role: "anon".into(), ..Default::default() })
                .collect(),
            channel_rows: (0..n / 2).map(|i| ChannelRow { topic: format!("t{i}"), ..Default::default() }).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn fits_by_leaving_rows_out_and_counting_them() {
        let whole = serde_json::to_string(&with_rows(1000)).unwrap();
        let json = with_rows(1000).into_json_within(whole.len() / 3);
        assert!(json.len() <= whole.len() / 3);
        let s: Stats = serde_json::from_str(&json).unwrap();
        assert_eq!(s.connections.len() as u64 + s.connections_left_out, 1000);
        assert_eq!(s.channel_rows.len() as u64 + s.channels_left_out, 500);
        assert_eq!(s.sockets, 1000, "the figures stay whole");
    }

    #[test]
    fn small_enough_is_kept_whole() {
        let json = with_rows(10).into_json_within(1 << 20);
        assert_eq!(serde_json::from_str::<Stats>(&json).unwrap(), with_rows(10));
    }
}
