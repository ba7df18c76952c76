//! The main thread's own figures for `realtime.stats`: RLS checks and their
//! waits, and how far decoding is behind.

use crate::bridge::{Stats, latency};
use crate::wal_clock::WalClock;
use std::time::{Duration, Instant};

/// The main thread's own figures for `realtime.stats`.
pub struct Figures {
    /// RLS checks since the last snapshot, and when that was.
    checks: u64,
    since: Instant,
    /// RLS checks since the worker started.
    checks_total: u64,
    /// Each check's wait over the last minute.
    check_times: latency::Window,
    wal_clock: WalClock,
}

impl Figures {
    pub fn new(now: Instant) -> Figures {
        Figures {
            checks: 0,
            since: now,
            checks_total: 0,
            check_times: latency::Window::new(now),
            wal_clock: WalClock::default(),
        }
    }

    /// `count` checks answered together, each after `took`.
    pub fn checked(&mut self, took: Duration, count: u64) {
        if count > 0 {
            self.checks += count;
            self.check_times.record(took, count, Instant::now());
        }
    }

    /// Fills in the figures and starts counting afresh; returns the checks
    /// counted. `read` is where the decoder has read WAL to (none while it
    /// is closed).
    pub fn add_to(&mut self, snapshot: &mut Stats, flushed: u64, read: Option<u64>) -> u64 {
        let now = Instant::now();
        self.wal_clock.note(flushed, now);
        (snapshot.decode_lag_bytes, snapshot.decode_lag_ms) = match read {
            Some(read) => (flushed.saturating_sub(read) as i64, self.wal_clock.lag(read, now).as_secs_f64() * 1000.0),
            None => (-1, -1.0),
        };
        snapshot.rls_checks_per_second = self.checks as f64 / now.duration_since(self.since).as_secs_f64().max(0.001);
        snapshot.rls_check = self.check_times.percentiles(now);
        self.checks_total += self.checks;
        snapshot.totals.rls_checks = self.checks_total;
        self.since = now;
        std::mem::take(&mut self.checks)
    }
}
