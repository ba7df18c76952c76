//! `/metrics`: the network side's figures in Prometheus text format, through
//! the `prometheus` crate. Counters are bumped where things happen; gauges
//! are read when scraped. Off unless `realtime.metrics_token` is set, since
//! the port is public.

use crate::bridge::stats::MainFigures;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};
use std::collections::BTreeMap;
use subtle::ConstantTimeEq;

/// Join refusal reasons counted by their code; any other reason is `other`,
/// so no client text becomes a label.
const JOIN_CODES: [&str; 9] = [
    "Unauthorized",
    "ClientJoinRateLimitReached",
    "ConnectionRateLimitReached",
    "ChannelRateLimitReached",
    "TopicNameRequired",
    "InvalidJoinPayload",
    "TooManyPostgresChanges",
    "PrivateOnly",
    "UnableToReplayMessages",
];

/// The limits that trip, by Supabase's codes.
pub const LIMIT_CODES: [&str; 5] = [
    "ClientJoinRateLimitReached",
    "ConnectionRateLimitReached",
    "MessagePerSecondRateLimitReached",
    "PresenceRateLimitReached",
    "ClientPresenceRateLimitReached",
];

pub struct Metrics {
    registry: Registry,
    pub sockets: IntGauge,
    pub channels: IntGauge,
    pub queued_bytes: IntGauge,
    pub max_memory_bytes: IntGauge,
    joins: IntCounterVec,
    refused_joins: IntCounterVec,
    limit_trips: IntCounterVec,
    pub frames_in: IntCounter,
    pub bytes_in: IntCounter,
    pub frames_out: IntCounter,
    pub bytes_out: IntCounter,
    pub database_messages: IntCounter,
    /// From a decoded batch's hand-over to its frames in every queue.
    pub fan_out_seconds: Histogram,
    /// From a transaction's commit to its messages in every queue.
    pub commit_to_send_seconds: Histogram,
    /// The main thread's figures, as of its last snapshot.
    pub decode_lag_bytes: IntGauge,
    pub decode_lag_seconds: Gauge,
    pub rls_checks: IntCounter,
    pub rls_check_p99_seconds: Gauge,
    /// Client broadcasts that did not reach the bus (queue full, primary unreachable).
    pub bus_relay_dropped: IntCounter,
}

fn must<T>(made: prometheus::Result<T>) -> T {
    // Only a malformed name or a duplicate registration fails: fixed here.
    made.expect("metric definitions are valid")
}

impl Default for Metrics {
    fn default() -> Metrics {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| {
            let g = must(IntGauge::new(name, help));
            must(registry.register(Box::new(g.clone())));
            g
        };
        let counter = |name: &str, help: &str| {
            let c = must(IntCounter::new(name, help));
            must(registry.register(Box::new(c.clone())));
            c
        };
        let counters = |name: &str, help: &str, label: &str| {
            let c = must(IntCounterVec::new(Opts::new(name, help), &[label]));
            must(registry.register(Box::new(c.clone())));
            c
        };
        let fan_out_seconds = must(Histogram::with_opts(
            HistogramOpts::new(
                "realtime_fan_out_seconds",
                "Time from a decoded batch's hand-over to its frames in every subscriber's queue.",
            )
            .buckets(vec![0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
        ));
        must(registry.register(Box::new(fan_out_seconds.clone())));
        let commit_to_send_seconds = must(Histogram::with_opts(
            HistogramOpts::new(
                "realtime_commit_to_send_seconds",
                "Time from a transaction's commit to its messages in every subscriber's queue.",
            )
            .buckets(vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
        ));
        must(registry.register(Box::new(commit_to_send_seconds.clone())));
        let float_gauge = |name: &str, help: &str| {
            let g = must(Gauge::new(name, help));
            must(registry.register(Box::new(g.clone())));
            g
        };
        let metrics = Metrics {
            sockets: gauge("realtime_sockets", "Open WebSockets."),
            channels: gauge("realtime_channels", "Topics with at least one subscriber."),
            queued_bytes: gauge("realtime_queued_bytes", "Bytes held against realtime.max_memory."),
            max_memory_bytes: gauge("realtime_max_memory_bytes", "realtime.max_memory, in bytes."),
            joins: counters("realtime_joins_total", "Channel joins answered, by result.", "result"),
            refused_joins: counters("realtime_refused_joins_total", "Refused channel joins, by code.", "code"),
            limit_trips: counters("realtime_limit_trips_total", "Rate limits tripped, by Supabase's code.", "code"),
            frames_in: counter("realtime_frames_in_total", "Frames received from clients."),
            bytes_in: counter("realtime_bytes_in_total", "Bytes of frames received from clients."),
            frames_out: counter("realtime_frames_out_total", "Frames written to clients."),
            bytes_out: counter("realtime_bytes_out_total", "Bytes of frames written to clients."),
            database_messages: counter(
                "realtime_database_messages_total",
                "Decoded database broadcasts and changes fanned out.",
            ),
            fan_out_seconds,
            commit_to_send_seconds,
            decode_lag_bytes: gauge("realtime_decode_lag_bytes", "WAL flushed and not yet decoded (-1: not decoding)."),
            decode_lag_seconds: float_gauge(
                "realtime_decode_lag_seconds",
                "How long the oldest WAL not yet decoded has waited (-1: not decoding).",
            ),
            rls_checks: counter(
                "realtime_rls_checks_total",
                "Row Level Security checks: private-channel authorizations and Postgres Changes rows per claims group.",
            ),
            rls_check_p99_seconds: float_gauge(
                "realtime_rls_check_p99_seconds",
                "The 99th percentile of an RLS check's wait over the last minute.",
            ),
            bus_relay_dropped: counter(
                "realtime_bus_relay_dropped_total",
                "Client broadcasts that reached this node's clients only: the bus relay queue was full or the primary unreachable.",
            ),
            registry,
        };
        // Every label value is listed from the start, at zero.
        for result in ["ok", "refused"] {
            metrics.joins.with_label_values(&[result]);
        }
        for code in JOIN_CODES.iter().chain(&["other"]) {
            metrics.refused_joins.with_label_values(&[code]);
        }
        for code in LIMIT_CODES {
            metrics.limit_trips.with_label_values(&[code]);
        }
        metrics
    }
}

impl Metrics {
    pub fn joined(&self) {
        self.joins.with_label_values(&["ok"]).inc();
    }

    /// A refused join, counted by the code its reason starts with.
    pub fn refused(&self, reason: &str) {
        self.joins.with_label_values(&["refused"]).inc();
        let code = reason.split(':').next().unwrap_or_default();
        let code = JOIN_CODES.iter().find(|c| **c == code).copied().unwrap_or("other");
        self.refused_joins.with_label_values(&[code]).inc();
    }

    /// `code` is one of [`LIMIT_CODES`].
    pub fn tripped(&self, code: &str) {
        debug_assert!(LIMIT_CODES.contains(&code), "{code}");
        self.limit_trips.with_label_values(&[code]).inc();
    }

    pub fn joins_total(&self) -> u64 {
        ["ok", "refused"].iter().map(|r| self.joins.with_label_values(&[r]).get()).sum()
    }

    pub fn refused_by_code(&self) -> BTreeMap<String, u64> {
        JOIN_CODES
            .iter()
            .chain(&["other"])
            .map(|c| (c.to_string(), self.refused_joins.with_label_values(&[c]).get()))
            .collect()
    }

    pub fn trips_by_code(&self) -> BTreeMap<String, u64> {
        LIMIT_CODES.iter().map(|c| (c.to_string(), self.limit_trips.with_label_values(&[c]).get())).collect()
    }

    pub fn main_figures(&self, main: MainFigures) {
        self.decode_lag_bytes.set(main.decode_lag_bytes);
        self.decode_lag_seconds.set(if main.decode_lag_ms < 0.0 { -1.0 } else { main.decode_lag_ms / 1000.0 });
        self.rls_checks.inc_by(main.rls_checks);
        self.rls_check_p99_seconds.set(main.rls_check_p99_ms / 1000.0);
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Writing to a Vec fails only on a malformed family: there is none.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Does `authorization` carry `Bearer <token>`? Compared in constant time.
pub fn authorized(authorization: Option<&str>, token: &str) -> bool {
    let Some(given) = authorization.and_then(|a| a.strip_prefix("Bearer ")) else {
        return false;
    };
    bool::from(given.as_bytes().ct_eq(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted_by_known_codes_only() {
        let m = Metrics::default();
        m.refused("Unauthorized: You do not have permissions to read from this Channel topic: x");
        m.refused("evil-label\"}: 1");
        m.joined();
        let text = m.render();
        assert!(text.contains("realtime_refused_joins_total{code=\"Unauthorized\"} 1"), "{text}");
        assert!(text.contains("realtime_refused_joins_total{code=\"other\"} 1"), "{text}");
        assert!(text.contains("realtime_joins_total{result=\"ok\"} 1"), "{text}");
        assert!(text.contains("realtime_joins_total{result=\"refused\"} 2"), "{text}");
        assert!(!text.contains("evil"), "{text}");
    }

    #[test]
    fn every_limit_code_is_listed_at_zero() {
        let m = Metrics::default();
        m.tripped("MessagePerSecondRateLimitReached");
        let text = m.render();
        assert!(text.contains("realtime_limit_trips_total{code=\"MessagePerSecondRateLimitReached\"} 1"), "{text}");
        assert!(text.contains("realtime_limit_trips_total{code=\"PresenceRateLimitReached\"} 0"), "{text}");
    }

    #[test]
    fn bearer_token() {
        assert!(authorized(Some("Bearer s3cret"), "s3cret"));
        assert!(!authorized(Some("Bearer s3cre"), "s3cret"));
        assert!(!authorized(Some("Bearer s3cretX"), "s3cret"));
        assert!(!authorized(Some("s3cret"), "s3cret"));
        assert!(!authorized(None, "s3cret"));
    }
}
