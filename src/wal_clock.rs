//! How long ago the WAL at a position was flushed, for decode lag in time
//! (as Postgres's own `replay_lag` estimates it): the worker notes the flush
//! position once a second; the time a position was flushed is interpolated
//! between the two notes around it. Fixed memory: past the oldest note, the
//! lag is at least its age. Pure.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Notes kept: an hour at one a second.
const NOTES: usize = 3600;

#[derive(Default)]
pub struct WalClock {
    /// (flush position, when it was seen), positions rising.
    notes: VecDeque<(u64, Instant)>,
}

impl WalClock {
    pub fn note(&mut self, flushed: u64, now: Instant) {
        if self.notes.back().is_some_and(|&(lsn, _)| lsn >= flushed) {
            return; // nothing new was flushed: the older note is the better one
        }
        if self.notes.len() == NOTES {
            self.notes.pop_front();
        }
        self.notes.push_back((flushed, now));
    }

    /// How long the WAL right after `read` has waited since it was flushed;
    /// zero once everything noted has been read.
    pub fn lag(&mut self, read: u64, now: Instant) -> Duration {
        // Notes wholly read are of no further use.
        while self.notes.len() > 1 && self.notes[1].0 <= read {
            self.notes.pop_front();
        }
        let Some(&(first_lsn, first_at)) = self.notes.front() else { return Duration::ZERO };
        if read >= first_lsn {
            // Between the first note and the second, or past all notes.
            let Some(&(next_lsn, next_at)) = self.notes.get(1) else { return Duration::ZERO };
            let share = (read - first_lsn) as f64 / (next_lsn - first_lsn) as f64;
            let flushed_at = first_at + next_at.duration_since(first_at).mul_f64(share);
            return now.saturating_duration_since(flushed_at);
        }
        // Flushed before the oldest note: at least that old.
        now.saturating_duration_since(first_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn caught_up_is_zero() {
        let t = Instant::now();
        let mut c = WalClock::default();
        assert_eq!(c.lag(0, t), Duration::ZERO);
        c.note(100, t);
        assert_eq!(c.lag(100, t + secs(5)), Duration::ZERO);
        assert_eq!(c.lag(200, t + secs(5)), Duration::ZERO);
    }

    #[test]
    fn lag_is_interpolated_between_notes() {
        let t = Instant::now();
        let mut c = WalClock::default();
        c.note(1000, t);
        c.note(2000, t + secs(10));
        c.note(3000, t + secs(20));
        // 1500 was flushed about t+5 s.
        assert_eq!(c.lag(1500, t + secs(30)), secs(25));
        assert_eq!(c.lag(2500, t + secs(30)), secs(15));
        assert_eq!(c.lag(3000, t + secs(30)), Duration::ZERO);
    }

    #[test]
    fn unchanged_flush_positions_keep_their_first_time() {
        let t = Instant::now();
        let mut c = WalClock::default();
        c.note(1000, t);
        c.note(2000, t + secs(1));
        for s in 2..60 {
            c.note(2000, t + secs(s));
        }
        // 2000 was reached at t+1 s; reading is stuck at 1000.
        assert_eq!(c.lag(1000, t + secs(61)), secs(61));
        assert_eq!(c.lag(1999, t + secs(61)).as_secs(), 60);
    }

    #[test]
    fn older_than_every_note_is_at_least_the_oldest() {
        let t = Instant::now();
        let mut c = WalClock::default();
        for i in 0..(NOTES as u64 + 100) {
            c.note(1000 + i, t + secs(i));
        }
        let now = t + secs(NOTES as u64 + 100);
        assert_eq!(c.lag(0, now), secs(NOTES as u64), "bounded by the oldest note kept");
        assert_eq!(c.notes.len(), NOTES);
    }
}
