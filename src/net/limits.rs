//! Rate limits with Supabase's semantics (its `RateCounter`): events are
//! counted into buckets of `tick` (5 s for the channel limits), and on each
//! tick the rolling average over the last `max_buckets` buckets (up to 60 s)
//! is compared with the limit. The limit trips when the average reaches it
//! and stays tripped until, at a later tick, the average falls below it.
//! Events are counted while tripped, and what the average says is only known
//! at ticks: a burst is seen up to one tick late, as in Supabase.
//!
//! Governor's GCRA refuses single events as they come; it is used where that
//! is the rule (`ClientPresence`), not for these averages.

use super::metrics::Metrics;
use crate::bridge::Limits;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Supabase's channel limits: 5 s ticks, 12 buckets.
pub const TICK: Duration = Duration::from_secs(5);
pub const BUCKETS: usize = 12;

/// A limit tripping or untripping at a tick: logged once, not per event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Tripped,
    Untripped,
}

/// The rolling average and the tripped state, advanced one tick at a time.
#[derive(Debug, Clone)]
pub struct RateAverage {
    tick: Duration,
    max_buckets: usize,
    buckets: VecDeque<u64>,
    /// Events per second, per `limit`. `None`: never trips.
    limit: Option<f64>,
    avg: f64,
    triggered: bool,
}

impl RateAverage {
    pub fn new(tick: Duration, max_buckets: usize, limit: Option<f64>) -> RateAverage {
        RateAverage {
            tick,
            max_buckets: max_buckets.max(1),
            // Allocated at the first tick: most sockets' counters never tick.
            buckets: VecDeque::new(),
            limit,
            avg: 0.0,
            triggered: false,
        }
    }

    /// One tick with `count` events in it. The average covers the buckets
    /// there are so far, so right after a start a burst trips sooner, as in
    /// Supabase.
    pub fn push(&mut self, count: u64) -> Option<Change> {
        if self.buckets.len() == self.max_buckets {
            self.buckets.pop_back();
        }
        self.buckets.push_front(count);
        let sum: u64 = self.buckets.iter().sum();
        self.avg = sum as f64 / self.buckets.len() as f64 / self.tick.as_secs_f64();
        let limit = self.limit?;
        match self.triggered {
            false if self.avg >= limit => {
                self.triggered = true;
                Some(Change::Tripped)
            }
            true if self.avg < limit => {
                self.triggered = false;
                Some(Change::Untripped)
            }
            _ => None,
        }
    }

    pub fn avg(&self) -> f64 {
        self.avg
    }

    pub fn triggered(&self) -> bool {
        self.triggered
    }

    /// A raised limit lets go at once when the average is already under it
    /// (a DBA raising a limit should not wait for a tick); a lowered one
    /// trips from the next tick on.
    pub fn set_limit(&mut self, limit: Option<f64>) -> Option<Change> {
        if self.limit == limit {
            return None;
        }
        self.limit = limit;
        if self.triggered && limit.is_none_or(|l| self.avg < l) {
            self.triggered = false;
            return Some(Change::Untripped);
        }
        None
    }

    /// All buckets empty: nothing to remember.
    pub fn idle(&self) -> bool {
        self.buckets.iter().all(|&b| b == 0)
    }
}

/// A counter one owner updates (a socket's joins or events): ticks are
/// caught up lazily, when it is next used.
#[derive(Debug, Clone)]
pub struct RateCounter {
    average: RateAverage,
    current: u64,
    next_tick: Instant,
}

impl RateCounter {
    pub fn new(limit: Option<f64>, now: Instant) -> RateCounter {
        Self::with_tick(TICK, BUCKETS, limit, now)
    }

    pub fn with_tick(tick: Duration, max_buckets: usize, limit: Option<f64>, now: Instant) -> RateCounter {
        RateCounter { average: RateAverage::new(tick, max_buckets, limit), current: 0, next_tick: now + tick }
    }

    /// See `RateAverage::set_limit`.
    pub fn set_limit(&mut self, limit: Option<f64>) {
        self.average.set_limit(limit);
    }

    /// The ticks due by `now`; the last change among them.
    fn catch_up(&mut self, now: Instant) -> Option<Change> {
        let mut change = None;
        let mut ticks = 0;
        while now >= self.next_tick {
            // Past a full window of empty ticks it starts afresh, as an idle
            // Supabase counter is stopped and started again.
            if ticks > self.average.max_buckets && self.current == 0 && self.average.idle() {
                self.average.buckets.clear();
                let behind = now.duration_since(self.next_tick).as_nanos() / self.average.tick.as_nanos();
                self.next_tick += self.average.tick * (behind as u32 + 1);
                break;
            }
            let count = std::mem::take(&mut self.current);
            change = self.average.push(count).or(change);
            self.next_tick += self.average.tick;
            ticks += 1;
        }
        change
    }

    /// Counts `n` events at `now` (after the ticks due by then).
    pub fn add(&mut self, now: Instant, n: u64) -> Option<Change> {
        let change = self.catch_up(now);
        self.current += n;
        change
    }

    /// Is the limit tripped as of the last tick before `now`?
    pub fn triggered(&mut self, now: Instant) -> bool {
        self.catch_up(now);
        self.average.triggered()
    }
}

/// A counter every socket adds to (the server's total events): adding is an
/// atomic increment; a timer task calls `tick` every `tick`.
#[derive(Debug)]
pub struct SharedRate {
    current: AtomicU64,
    triggered: AtomicBool,
    average: Mutex<RateAverage>,
}

impl SharedRate {
    pub fn new(tick: Duration, max_buckets: usize, limit: Option<f64>) -> SharedRate {
        SharedRate {
            current: AtomicU64::new(0),
            triggered: AtomicBool::new(false),
            average: Mutex::new(RateAverage::new(tick, max_buckets, limit)),
        }
    }

    pub fn add(&self, n: u64) {
        self.current.fetch_add(n, Ordering::Relaxed);
    }

    /// See `RateAverage::set_limit`.
    pub fn set_limit(&self, limit: Option<f64>) {
        let mut average = self.average.lock().unwrap_or_else(|e| e.into_inner());
        average.set_limit(limit);
        self.triggered.store(average.triggered(), Ordering::Relaxed);
    }

    pub fn tick(&self) -> Option<Change> {
        let count = self.current.swap(0, Ordering::Relaxed);
        let mut average = self.average.lock().unwrap_or_else(|e| e.into_inner());
        let change = average.push(count);
        self.triggered.store(average.triggered(), Ordering::Relaxed);
        change
    }

    pub fn triggered(&self) -> bool {
        self.triggered.load(Ordering::Relaxed)
    }

    /// The rolling average as of the last tick.
    pub fn avg(&self) -> f64 {
        self.average.lock().unwrap_or_else(|e| e.into_inner()).avg()
    }
}

/// The counters every socket shares, ticked by `run`.
#[derive(Debug)]
pub struct ServerRates {
    /// Messages in and deliveries out (`realtime.max_events_per_second`).
    pub events: SharedRate,
    /// Tracks, presence states and diffs (`realtime.max_presence_events_per_second`).
    pub presence: SharedRate,
    /// REST requests: Supabase averages them over 60 one-second buckets.
    pub requests: SharedRate,
    /// Sockets with a joined channel (`realtime.max_concurrent_users`).
    pub users: AtomicUsize,
}

impl ServerRates {
    pub fn new(limits: &Limits) -> ServerRates {
        let rates = ServerRates {
            events: SharedRate::new(TICK, BUCKETS, None),
            presence: SharedRate::new(TICK, BUCKETS, None),
            requests: SharedRate::new(Duration::from_secs(1), 60, None),
            users: AtomicUsize::new(0),
        };
        rates.set_limits(limits);
        rates
    }

    pub fn set_limits(&self, limits: &Limits) {
        self.events.set_limit(Some(f64::from(limits.max_events_per_second)));
        self.presence.set_limit(Some(f64::from(limits.max_presence_events_per_second)));
    }

    /// Ticks the counters for as long as the server runs; a limit tripping
    /// is logged and counted once, when it trips.
    pub async fn run(&self, metrics: &Metrics) {
        let mut second = tokio::time::interval(Duration::from_secs(1));
        let mut seconds = 0u64;
        loop {
            second.tick().await;
            self.requests.tick();
            seconds += 1;
            if !seconds.is_multiple_of(TICK.as_secs()) {
                continue;
            }
            if self.events.tick() == Some(Change::Tripped) {
                metrics.tripped("MessagePerSecondRateLimitReached");
                crate::log_warning!(
                    "realtime: MessagePerSecondRateLimitReached: Too many messages per second \
                     ({:.0}/s over the last minute; realtime.max_events_per_second)",
                    self.events.avg()
                );
            }
            if self.presence.tick() == Some(Change::Tripped) {
                metrics.tripped("PresenceRateLimitReached");
                crate::log_warning!(
                    "realtime: PresenceRateLimitReached: Too many presence events per second \
                     ({:.0}/s over the last minute; realtime.max_presence_events_per_second)",
                    self.presence.avg()
                );
            }
        }
    }
}

/// A client's presence messages: at most `calls` at once, then one more per
/// `window / calls` (Supabase: 5 per 30 s).
pub struct ClientPresence(Option<DefaultDirectRateLimiter>);

impl ClientPresence {
    pub fn new(calls: u32, window: Duration) -> ClientPresence {
        let limiter = NonZeroU32::new(calls).and_then(|burst| {
            let period = window.checked_div(burst.get()).filter(|p| !p.is_zero())?;
            Some(RateLimiter::direct(Quota::with_period(period)?.allow_burst(burst)))
        });
        ClientPresence(limiter)
    }

    /// Counts one presence message; `false` when it is over the limit.
    /// A limit of 0 calls refuses everything.
    pub fn allow(&self) -> bool {
        self.0.as_ref().is_some_and(|l| l.check().is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_at_the_limit_and_untrips_below_it() {
        // Supabase's test: limit 10, 60 events in one 5 s tick (avg 12) trip;
        // 40 in the next (avg (60+40)/2/5 = 10) stay; a quiet tick untrips.
        let mut avg = RateAverage::new(TICK, BUCKETS, Some(10.0));
        assert_eq!(avg.push(60), Some(Change::Tripped));
        assert!(avg.triggered());
        assert_eq!(avg.push(40), None);
        assert!(avg.triggered());
        assert_eq!(avg.push(0), Some(Change::Untripped));
        assert!((avg.avg() - 100.0 / 15.0).abs() < 1e-9);
    }

    #[test]
    fn equal_to_the_limit_trips() {
        let mut avg = RateAverage::new(TICK, BUCKETS, Some(10.0));
        assert_eq!(avg.push(49), None);
        assert_eq!(avg.push(51), Some(Change::Tripped));
    }

    #[test]
    fn the_window_is_max_buckets_long() {
        let mut avg = RateAverage::new(TICK, 3, Some(1.0));
        assert_eq!(avg.push(15), Some(Change::Tripped)); // 3/s
        assert_eq!(avg.push(0), None); // 1.5/s
        assert_eq!(avg.push(0), None); // 1.0/s: not below the limit
        assert_eq!(avg.push(0), Some(Change::Untripped)); // the 15 left the window
        assert_eq!(avg.avg(), 0.0);
    }

    #[test]
    fn a_raised_limit_lets_go_at_once_a_lowered_one_at_the_next_tick() {
        let mut avg = RateAverage::new(TICK, BUCKETS, Some(1.0));
        assert_eq!(avg.push(50), Some(Change::Tripped)); // 10/s
        assert_eq!(avg.set_limit(Some(5.0)), None); // still over
        assert!(avg.triggered());
        assert_eq!(avg.set_limit(Some(1e9)), Some(Change::Untripped));
        assert!(!avg.triggered());
        assert_eq!(avg.set_limit(Some(1.0)), None);
        assert!(!avg.triggered());
        assert_eq!(avg.push(0), Some(Change::Tripped)); // 5/s

        let shared = SharedRate::new(TICK, BUCKETS, Some(1.0));
        shared.add(50);
        assert_eq!(shared.tick(), Some(Change::Tripped));
        assert!(shared.triggered());
        shared.set_limit(None);
        assert!(!shared.triggered());
    }

    #[test]
    fn no_limit_never_trips() {
        let mut avg = RateAverage::new(TICK, BUCKETS, None);
        assert_eq!(avg.push(1_000_000), None);
        assert!(!avg.triggered());
    }

    #[test]
    fn counter_sees_events_only_at_ticks() {
        let start = Instant::now();
        let mut c = RateCounter::new(Some(10.0), start);
        assert_eq!(c.add(start, 100), None);
        assert!(!c.triggered(start + Duration::from_millis(4999)));
        assert!(c.triggered(start + TICK));
        // It stays tripped while the average is at or over the limit
        // (100 events over 2 ticks is 10/s), and untrips below it.
        assert!(c.triggered(start + TICK * 2));
        assert!(!c.triggered(start + TICK * 3));
    }

    #[test]
    fn counter_reports_the_change_once() {
        let start = Instant::now();
        let mut c = RateCounter::new(Some(1.0), start);
        c.add(start, 10);
        assert_eq!(c.add(start + TICK, 1), Some(Change::Tripped));
        assert_eq!(c.add(start + TICK, 1), None);
    }

    #[test]
    fn a_long_idle_counter_catches_up_cheaply() {
        let start = Instant::now();
        let mut c = RateCounter::new(Some(1.0), start);
        c.add(start, 100);
        assert!(c.triggered(start + TICK));
        let much_later = start + Duration::from_secs(365 * 24 * 3600);
        assert!(!c.triggered(much_later));
        assert!(c.average.idle() && c.average.buckets.is_empty());
        // Ticks stay aligned after the jump.
        c.add(much_later, 10);
        assert!(c.triggered(much_later + TICK));
    }

    #[test]
    fn shared_rate_counts_from_many_threads() {
        let rate = std::sync::Arc::new(SharedRate::new(Duration::from_secs(1), 60, Some(1000.0)));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let rate = rate.clone();
                std::thread::spawn(move || (0..500).for_each(|_| rate.add(1)))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(rate.tick(), Some(Change::Tripped));
        assert!(rate.triggered());
        assert_eq!(rate.avg(), 2000.0);
        assert_eq!(rate.tick(), None); // 1000/s: still at the limit
        assert_eq!(rate.tick(), Some(Change::Untripped));
        assert!(!rate.triggered());
    }

    #[test]
    fn client_presence_allows_a_burst_then_the_rate() {
        let p = ClientPresence::new(5, Duration::from_secs(30));
        for _ in 0..5 {
            assert!(p.allow());
        }
        assert!(!p.allow());
    }

    #[test]
    fn client_presence_of_zero_refuses_everything() {
        assert!(!ClientPresence::new(0, Duration::from_secs(30)).allow());
        assert!(!ClientPresence::new(5, Duration::ZERO).allow());
    }
}
