//! The worker's memory budget, in bytes (`realtime.max_memory`): decoded
//! output, batches handed to the network side and frames queued on sockets
//! all draw from it. A [`Charge`] gives its bytes back when dropped, so the
//! count follows the data wherever it goes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The smallest hand-over of database messages, in bytes.
pub const MIN_HANDOFF: usize = 16 * 1024;

#[derive(Debug)]
pub struct Budget {
    limit: AtomicUsize,
    used: AtomicUsize,
}

impl Budget {
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget { limit: AtomicUsize::new(limit), used: AtomicUsize::new(0) })
    }

    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Bytes left before the limit (0 when over it).
    pub fn room(&self) -> usize {
        self.limit().saturating_sub(self.used())
    }

    /// Room for database messages to be handed to the network side: they
    /// may fill a quarter of the budget, which keeps any one socket's queue
    /// (at most half) clear of them while it keeps reading.
    pub fn handoff_room(&self) -> usize {
        (self.limit() / 4).saturating_sub(self.used())
    }

    /// Is there room for the smallest hand-over? The decoder waits until
    /// there is, and the network side cuts off slow consumers until there
    /// is: both must use this one test, or a budget just short of a chunk
    /// would leave the decoder waiting and nobody cut off.
    pub fn can_hand_off(&self) -> bool {
        self.handoff_room() >= MIN_HANDOFF
    }

    /// Counts `bytes` until the returned charge is dropped. Always succeeds:
    /// callers look at [`Budget::room`] before producing more.
    pub fn charge(self: &Arc<Self>, bytes: usize) -> Charge {
        self.used.fetch_add(bytes, Ordering::Relaxed);
        Charge { budget: Some(self.clone()), bytes }
    }
}

/// Bytes counted against a budget until dropped.
#[derive(Debug, Default)]
pub struct Charge {
    budget: Option<Arc<Budget>>,
    bytes: usize,
}

impl Charge {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Counts `bytes` more against the same budget.
    pub fn add(&mut self, bytes: usize) {
        if let Some(budget) = &self.budget {
            budget.used.fetch_add(bytes, Ordering::Relaxed);
            self.bytes += bytes;
        }
    }

    /// Gives back part of the charge early (a batch partly fanned out).
    pub fn release(&mut self, bytes: usize) {
        let bytes = bytes.min(self.bytes);
        if let Some(budget) = &self.budget {
            budget.used.fetch_sub(bytes, Ordering::Relaxed);
        }
        self.bytes -= bytes;
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn just_short_of_a_hand_over_counts_as_full() {
        // The decoder and the slow-consumer cut-off must agree: a quarter of
        // the budget minus a few bytes is no room for either.
        let budget = Budget::new(4 * 1024 * 1024);
        let _held = budget.charge(1024 * 1024 - MIN_HANDOFF + 1);
        assert!(budget.handoff_room() > 0);
        assert!(!budget.can_hand_off());
    }
    use super::*;

    #[test]
    fn charges_count_until_dropped() {
        let budget = Budget::new(100);
        let a = budget.charge(30);
        let mut b = budget.charge(50);
        assert_eq!((budget.used(), budget.room()), (80, 20));
        b.release(20);
        assert_eq!(budget.used(), 60);
        drop(a);
        assert_eq!(budget.used(), 30);
        let over = budget.charge(200);
        assert_eq!(budget.room(), 0, "over the limit leaves no room");
        drop((b, over));
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_default_charge_counts_nothing() {
        let mut c = Charge::default();
        c.release(10);
        assert_eq!(c.bytes(), 0);
    }
}
