//! Recovery conflicts on a hot standby cancel a statement of the worker,
//! never the worker.
//!
//! When replay needs a lock the worker holds, or removes rows its snapshot
//! may still see, the startup process waits `max_standby_streaming_delay`
//! and then signals the worker. PostgreSQL 15 cancels the statement only at
//! the top level of a transaction; inside a subtransaction, where every
//! check of the worker runs, it terminates the process (FATAL), which would
//! close every socket on the node. The SIGUSR1 handler here turns that into
//! a cancel: the subtransaction fails with 40001, and the startup process,
//! which waits for the whole transaction to end, signals again every 5 ms
//! until it has. A conflict on a database being dropped still terminates
//! the worker, from its next signal outside a subtransaction.
//!
//! From 17, the signal handler only notes the conflict (in a flag private to
//! postgres.c) and the next `CHECK_FOR_INTERRUPTS` decides, with the same
//! outcome: FATAL inside a subtransaction. There the handler here asks for a
//! query cancel as well, which that check serves first; the conflict noted
//! behind it is served once the worker is
//! outside any transaction ([`drain`]), where Postgres ignores it (a database
//! being dropped still terminates the worker).
//!
//! Routing is pure until it hands over, so [`retried`] runs it again in a new
//! transaction, after replay went on: subscribers lose nothing.

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::c_int;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Conflicts signalled to the worker since it started.
static SIGNALLED: AtomicU64 = AtomicU64::new(0);
/// A [`retried`] unit is running: a failed subtransaction unwinds to it.
static RETRYING: AtomicBool = AtomicBool::new(false);
/// 17+: a conflict was noted that Postgres has not served yet.
static NOTED: AtomicBool = AtomicBool::new(false);

/// Attempts before a unit keeps what its checks answered, errors included.
const ATTEMPTS: u32 = 10;

unsafe extern "C" {
    // Declared raw, as Postgres's own handler calls it: pgrx's wrapper sets
    // up error handling, which does not belong in a signal handler.
    #[link_name = "IsSubTransaction"]
    fn is_subtransaction_raw() -> bool;
    /// The handler a background worker with a database connection has for
    /// SIGUSR1 (bgworker.c), which this one wraps.
    #[link_name = "procsignal_sigusr1_handler"]
    fn procsignal_sigusr1_handler_raw(signal: c_int);
}

#[cfg(feature = "pg15")]
unsafe extern "C-unwind" fn on_sigusr1(signal: c_int) {
    // SAFETY: sig_atomic_t flags of this process, read and written as
    // Postgres's own handlers do.
    unsafe {
        let (dying, cancelling) = (pg_sys::ProcDiePending, pg_sys::QueryCancelPending);
        procsignal_sigusr1_handler_raw(signal);
        // Only a recovery conflict sets these flags from this signal.
        let died = dying == 0 && pg_sys::ProcDiePending != 0;
        let cancelled = cancelling == 0 && pg_sys::QueryCancelPending != 0;
        if died && is_subtransaction_raw() && pg_sys::ShutdownRequestPending == 0 {
            pg_sys::ProcDiePending = 0;
            pg_sys::QueryCancelPending = 1;
            pg_sys::InterruptPending = 1;
        }
        if died || cancelled {
            SIGNALLED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(any(feature = "pg17", feature = "pg18"))]
unsafe extern "C-unwind" fn on_sigusr1(signal: c_int) {
    // SAFETY: sig_atomic_t flags of this process, read and written as
    // Postgres's own handlers do.
    unsafe {
        // Of what SIGUSR1 serves in a worker, these set InterruptPending
        // besides a recovery conflict, each with a flag of its own.
        let others = || {
            [
                pg_sys::ProcSignalBarrierPending,
                pg_sys::LogMemoryContextPending,
                pg_sys::ParallelMessagePending,
                pg_sys::ParallelApplyMessagePending,
            ]
        };
        let (interrupting, others_before) = (pg_sys::InterruptPending, others());
        procsignal_sigusr1_handler_raw(signal);
        let others_after = others();
        let other_rose = others_before.iter().zip(&others_after).any(|(b, a)| *b == 0 && *a != 0);
        let other_pending = others_after.iter().any(|a| *a != 0);
        let conflict = pg_sys::InterruptPending != 0 && !other_rose && (interrupting == 0 || !other_pending);
        if conflict {
            NOTED.store(true, Ordering::Relaxed);
            SIGNALLED.fetch_add(1, Ordering::Relaxed);
            if is_subtransaction_raw() && pg_sys::ShutdownRequestPending == 0 {
                pg_sys::QueryCancelPending = 1;
            }
        }
    }
}

/// 17+: lets Postgres serve a conflict noted behind a cancel, where it can
/// only ignore it (or, for a database being dropped, end the worker). Call
/// outside any transaction; true when one was waiting.
pub fn drain() -> bool {
    if !NOTED.swap(false, Ordering::Relaxed) {
        return false;
    }
    // SAFETY: main thread; a flag write that makes the next check run.
    unsafe { pg_sys::InterruptPending = 1 };
    true
}

/// Wraps Postgres's SIGUSR1 handler; call on the main thread.
pub fn install() {
    // SAFETY: main thread; the wrapper calls the handler it replaces.
    unsafe { super::compat::set_signal_handler(libc::SIGUSR1, on_sigusr1) };
}

/// Conflicts signalled to the worker since it started.
pub fn signalled() -> u64 {
    SIGNALLED.load(Ordering::Relaxed)
}

/// Whether a subtransaction that failed during a conflict should unwind to
/// [`retried`] rather than report its error.
pub fn unwinds(signalled_before: u64) -> bool {
    RETRYING.load(Ordering::Relaxed) && signalled() != signalled_before
}

/// Runs `f` in a transaction of its own, as `BackgroundWorker::transaction`
/// does; when a recovery conflict cancels it, aborts that transaction (which
/// lets replay go on) and runs `f` again. The last attempt keeps whatever
/// its checks answer. Other errors end the worker, as before.
pub fn retried<R>(mut f: impl FnMut() -> R) -> R {
    for attempt in 1.. {
        let before = signalled();
        RETRYING.store(attempt < ATTEMPTS, Ordering::Relaxed);
        // SAFETY: main thread, outside a transaction.
        unsafe {
            pg_sys::SetCurrentStatementStartTimestamp();
            pg_sys::StartTransactionCommand();
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        }
        let result = PgTryBuilder::new(AssertUnwindSafe(|| Ok(f()))).catch_others(|e| Err(Box::new(e))).execute();
        RETRYING.store(false, Ordering::Relaxed);
        match result {
            Ok(value) => {
                // SAFETY: the transaction started above, still open.
                unsafe {
                    pg_sys::PopActiveSnapshot();
                    pg_sys::CommitTransactionCommand();
                }
                return value;
            }
            Err(e) => {
                // SAFETY: main thread; the error was caught and flushed, so
                // aborting is what Postgres's own loops do next.
                unsafe { pg_sys::AbortOutOfAnyTransaction() };
                super::interrupts::process_pending();
                if signalled() == before || attempt >= ATTEMPTS {
                    e.rethrow();
                }
                log!("realtime: a recovery conflict cancelled routing (attempt {attempt}); routing again");
            }
        }
    }
    unreachable!("the loop returns or rethrows")
}
