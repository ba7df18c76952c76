//! A long-lived WaitEventSet: the latch (signals, wake-ups), postmaster death,
//! and the bridge's eventfd.

use super::compat;
use pgrx::pg_sys;
use std::os::fd::RawFd;
use std::time::Duration;

pub struct WaitSet(*mut pg_sys::WaitEventSet);

impl WaitSet {
    pub fn new(eventfd: RawFd) -> WaitSet {
        // SAFETY: main thread; the set lives in TopMemoryContext for the
        // worker's lifetime.
        unsafe {
            let set = compat::long_lived_wait_event_set(3);
            let none = std::ptr::null_mut();
            pg_sys::AddWaitEventToSet(set, pg_sys::WL_LATCH_SET, -1, pg_sys::MyLatch, none);
            pg_sys::AddWaitEventToSet(set, pg_sys::WL_EXIT_ON_PM_DEATH, -1, std::ptr::null_mut(), none);
            pg_sys::AddWaitEventToSet(set, pg_sys::WL_SOCKET_READABLE, eventfd, std::ptr::null_mut(), none);
            WaitSet(set)
        }
    }

    /// Waits until something happens or `timeout` passes. True when the
    /// latch was set (a commit to decode, or a signal), false for the bridge
    /// alone or the timeout.
    pub fn wait(&self, timeout: Duration) -> bool {
        let mut events = [pg_sys::WaitEvent::default(); 3];
        let timeout_ms = timeout.as_millis().min(i32::MAX as u128) as std::ffi::c_long;
        // SAFETY: main thread; `events` outlives the call.
        unsafe {
            let n = pg_sys::WaitEventSetWait(self.0, timeout_ms, events.as_mut_ptr(), 3, pg_sys::PG_WAIT_EXTENSION);
            pg_sys::ResetLatch(pg_sys::MyLatch);
            events[..n.max(0) as usize].iter().any(|e| e.events & pg_sys::WL_LATCH_SET != 0)
        }
    }
}
