//! Bus messages in WAL: each sealed (`crate::bus_seal`) and written as a
//! non-transactional logical message with the prefix
//! [`crate::row_format::BUS_PREFIX`], and opened again by the readers (the
//! output plugin, a standby's bus reader), which drop what this node's key
//! did not seal or what they have seen.
//!
//! The walsender streams flushed WAL only: the last message of a batch is
//! flushed (and with it those before it).

use super::key;
use crate::bus_seal::{Refusal, Sealer, Verifier};
use crate::pg::compat;
use crate::pg::recovery::in_recovery;
use crate::pg::settings;
use crate::row_format::BUS_PREFIX;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::time::{Duration, Instant};

thread_local! {
    /// This process's seals: a random writer id, then a counter.
    static SEALER: RefCell<Sealer> = RefCell::new(Sealer::new(uuid::Uuid::new_v4().as_u64_pair().0));
}

/// Writes bus messages, each sealed, and flushes them; returns the end of
/// each, its position on the bus (none on a standby, or without a key).
pub fn write(messages: &[String]) -> Vec<u64> {
    if in_recovery() {
        return Vec::new(); // a standby cannot write WAL; its relays go to the primary
    }
    let Some(key) = key::key() else {
        refused(Refusal::NoKey);
        return Vec::new();
    };
    let last = messages.len().saturating_sub(1);
    messages
        .iter()
        .enumerate()
        .map(|(i, body)| {
            // SAFETY: main thread, on a primary, outside any critical section;
            // both buffers outlive the call; an ERROR becomes a Rust panic.
            unsafe {
                let position = pg_sys::GetXLogInsertRecPtr();
                let sealed = SEALER.with(|s| s.borrow_mut().seal(key, position, body));
                compat::log_logical_message(BUS_PREFIX, sealed.as_bytes(), i == last)
            }
        })
        .collect()
}

/// The body of a bus message that ends at `end`, if this node's key seals
/// it and `verifier` has not seen it; None otherwise (said in the log, at
/// most once a minute). With `realtime.bus` off, none.
pub fn open(verifier: &mut Verifier, end: u64, sealed: &[u8]) -> Option<String> {
    if !settings::bus() {
        return None;
    }
    match verifier.open(key::key(), end, sealed) {
        Ok(body) => std::str::from_utf8(body).ok().map(str::to_owned),
        Err(refusal) => {
            refused(refusal);
            None
        }
    }
}

/// Says why bus messages are dropped, once a minute at most: a forged one
/// is somebody's attempt, and they could send a million.
fn refused(refusal: Refusal) {
    thread_local! {
        static LAST: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
        static SINCE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    SINCE.with(|n| n.set(n.get() + 1));
    if LAST.with(|l| l.get()).is_some_and(|at| at.elapsed() < Duration::from_secs(60)) {
        return;
    }
    LAST.with(|l| l.set(Some(Instant::now())));
    let dropped = SINCE.with(|n| n.replace(0));
    warning!("realtime: dropped {dropped} bus message(s) with prefix {BUS_PREFIX:?}: {refusal}");
}
