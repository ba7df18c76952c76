//! Per-client rate limits.

use std::time::{Duration, Instant};

/// A fixed-window rate limit: at most `max` events per `window`, e.g. a
/// client's presence pushes (5 per 30 s).
#[derive(Debug, Clone)]
pub struct RateWindow {
    max: u32,
    window: Duration,
    started: Option<Instant>,
    count: u32,
}

impl RateWindow {
    pub fn new(max: u32, window: Duration) -> Self {
        RateWindow { max, window, started: None, count: 0 }
    }

    /// Counts one event at `now`; `false` when it is over the limit in the
    /// current window (refused events are not counted).
    pub fn allow(&mut self, now: Instant) -> bool {
        let expired = self.started.is_none_or(|start| now.saturating_duration_since(start) >= self.window);
        if expired {
            self.started = Some(now);
            self.count = 0;
        }
        if self.count < self.max {
            self.count += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_window_allows_max_per_window() {
        let start = Instant::now();
        let window = Duration::from_secs(30);
        let mut rate = RateWindow::new(5, window);
        for _ in 0..5 {
            assert!(rate.allow(start));
        }
        assert!(!rate.allow(start));
        assert!(!rate.allow(start + Duration::from_secs(29)));
        // A new window starts once the old one has fully passed.
        assert!(rate.allow(start + window));
        for _ in 0..4 {
            assert!(rate.allow(start + window + Duration::from_secs(1)));
        }
        assert!(!rate.allow(start + window + Duration::from_secs(2)));
    }

    #[test]
    fn rate_window_starts_at_the_first_event() {
        let start = Instant::now();
        let mut rate = RateWindow::new(1, Duration::from_secs(30));
        assert!(rate.allow(start + Duration::from_secs(100)));
        assert!(!rate.allow(start + Duration::from_secs(129)));
        assert!(rate.allow(start + Duration::from_secs(130)));
        // An earlier instant than the window start does not reset it.
        assert!(!rate.allow(start));
    }

    #[test]
    fn rate_window_of_zero_refuses_everything() {
        let mut rate = RateWindow::new(0, Duration::from_secs(1));
        assert!(!rate.allow(Instant::now()));
    }
}
