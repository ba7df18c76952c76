//! Latencies over the last minute in fixed memory, for `realtime.stats`:
//! six HdrHistograms of ten seconds each (two significant digits, 1 µs to
//! one hour); a slot is cleared when its turn comes round again, so the
//! percentiles cover between 50 and 60 seconds. Pure.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

const SLOTS: usize = 6;
const SLOT_TIME: Duration = Duration::from_secs(10);
/// Longer latencies are counted as one hour.
const MAX_MICROS: u64 = 3_600_000_000;

pub struct Window {
    slots: Vec<Histogram<u64>>,
    current: usize,
    current_started: Instant,
}

/// Percentiles in milliseconds; all zero when nothing was recorded.
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub count: u64,
}

fn empty() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 2).expect("fixed bounds are valid")
}

impl Window {
    pub fn new(now: Instant) -> Window {
        Window { slots: (0..SLOTS).map(|_| empty()).collect(), current: 0, current_started: now }
    }

    /// `count` events that each took `latency`.
    pub fn record(&mut self, latency: Duration, count: u64, now: Instant) {
        self.advance(now);
        let micros = (latency.as_micros() as u64).clamp(1, MAX_MICROS);
        self.slots[self.current].saturating_record_n(micros, count);
    }

    pub fn percentiles(&mut self, now: Instant) -> Percentiles {
        self.advance(now);
        let mut all = empty();
        for slot in &self.slots {
            // Same bounds everywhere: adding cannot fail.
            let _ = all.add(slot);
        }
        if all.is_empty() {
            return Percentiles::default();
        }
        let ms = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
        Percentiles { p50_ms: ms(0.50), p90_ms: ms(0.90), p99_ms: ms(0.99), count: all.len() }
    }

    /// Moves to the slot `now` falls in, clearing the ones it passes.
    fn advance(&mut self, now: Instant) {
        let mut passed = 0;
        while now.saturating_duration_since(self.current_started) >= SLOT_TIME && passed <= SLOTS {
            self.current = (self.current + 1) % SLOTS;
            self.slots[self.current].reset();
            self.current_started += SLOT_TIME;
            passed += 1;
        }
        if passed > SLOTS {
            // Idle for over a minute: everything is cleared; start afresh.
            self.current_started = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn percentiles_of_what_was_recorded() {
        let t = Instant::now();
        let mut w = Window::new(t);
        assert_eq!(w.percentiles(t), Percentiles::default());
        for i in 1..=100 {
            w.record(ms(i), 1, t);
        }
        let p = w.percentiles(t);
        assert_eq!(p.count, 100);
        // Two significant digits: within 1%.
        assert!((p.p50_ms - 50.0).abs() <= 0.5, "{p:?}");
        assert!((p.p90_ms - 90.0).abs() <= 0.9, "{p:?}");
        assert!((p.p99_ms - 99.0).abs() <= 1.0, "{p:?}");
    }

    #[test]
    fn counts_weigh_a_latency() {
        let t = Instant::now();
        let mut w = Window::new(t);
        w.record(ms(1), 98, t);
        w.record(ms(500), 2, t);
        let p = w.percentiles(t);
        assert_eq!(p.count, 100);
        assert!(p.p90_ms < 1.1, "{p:?}");
        assert!(p.p99_ms > 490.0, "{p:?}");
    }

    #[test]
    fn only_the_last_minute_counts() {
        let t = Instant::now();
        let mut w = Window::new(t);
        w.record(ms(900), 10, t);
        w.record(ms(2), 10, t + Duration::from_secs(30));
        assert_eq!(w.percentiles(t + Duration::from_secs(59)).count, 20);
        let later = w.percentiles(t + Duration::from_secs(61));
        assert_eq!(later.count, 10, "the first slot is cleared after a minute");
        assert!(later.p99_ms < 2.1, "{later:?}");
        assert_eq!(w.percentiles(t + Duration::from_secs(600)), Percentiles::default());
        w.record(ms(3), 1, t + Duration::from_secs(601));
        assert_eq!(w.percentiles(t + Duration::from_secs(602)).count, 1, "works again after idling");
    }

    #[test]
    fn out_of_range_values_are_clamped() {
        let t = Instant::now();
        let mut w = Window::new(t);
        w.record(Duration::ZERO, 1, t);
        w.record(Duration::from_secs(10 * 3600), 1, t);
        let p = w.percentiles(t);
        assert_eq!(p.count, 2);
        assert!(p.p99_ms >= 3_500_000.0, "{p:?}");
    }
}
