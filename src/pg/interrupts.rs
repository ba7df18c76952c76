//! Shutdown and timeouts for the worker's queries.
//!
//! pgrx's SIGTERM handler only notes the request, so a query that waits (a
//! policy calling `pg_sleep`, an insert behind an `ACCESS EXCLUSIVE` lock)
//! would keep the worker from stopping. This handler also cancels the running
//! query, the way a statement timeout does, and the worker then stops as it
//! would between queries: sockets closed, what was sent confirmed.
//!
//! SPI does not arm `statement_timeout` (only the client protocol does), so
//! [`QueryGuard`] arms it around each unit of work; `lock_timeout` is armed by
//! the lock manager itself once set.

use super::compat;
use pgrx::pg_sys;
use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// A query of the worker is running: SIGTERM cancels it.
static IN_QUERY: AtomicBool = AtomicBool::new(false);
/// Guards alive (units of work nest: a subtransaction per group inside a batch).
static DEPTH: AtomicU32 = AtomicU32::new(0);

unsafe extern "C" {
    // Declared raw: pgrx's wrappers check the calling thread and set up error
    // handling, neither of which belongs in a signal handler.
    #[link_name = "SetLatch"]
    fn set_latch_raw(latch: *mut pg_sys::Latch);
}

unsafe extern "C-unwind" fn on_sigterm(_signal: c_int) {
    let saved = std::io::Error::last_os_error().raw_os_error();
    // SAFETY: sig_atomic_t flags and SetLatch, which is async-signal-safe, as
    // in Postgres's own die() and SignalHandlerForShutdownRequest().
    unsafe {
        pg_sys::ShutdownRequestPending = 1;
        if IN_QUERY.load(Ordering::Relaxed) {
            pg_sys::QueryCancelPending = 1;
            pg_sys::InterruptPending = 1;
        }
        set_latch_raw(pg_sys::MyLatch);
    }
    if let Some(errno) = saved {
        // SAFETY: restoring this thread's errno, as signal handlers must.
        unsafe { *libc::__errno_location() = errno };
    }
}

/// Installs the SIGTERM handler; call after pgrx's `attach_signal_handlers`.
pub fn install() {
    // SAFETY: main thread; replaces the handler for the whole process.
    unsafe { compat::set_signal_handler(libc::SIGTERM, on_sigterm) };
}

/// SIGTERM (a fast shutdown, `pg_terminate_backend`) has been received.
pub fn shutdown_requested() -> bool {
    // SAFETY: a flag read, set only by signal handlers.
    unsafe { pg_sys::ShutdownRequestPending != 0 }
}

/// Handles what other backends ask of every process between the worker's
/// own work: barriers (e.g. for `DROP DATABASE`), `pg_log_backend_memory_contexts`.
/// A cancel meant for a query that has ended is dropped first.
pub fn process_pending() {
    // SAFETY: main thread, outside any query or transaction.
    unsafe {
        pg_sys::QueryCancelPending = 0;
        super::conflict::drain();
        if pg_sys::InterruptPending == 0 {
            return;
        }
        let handled = pgrx::PgTryBuilder::new(|| {
            pg_sys::ProcessInterrupts();
            Ok(())
        })
        .catch_others(|e| Err(super::sql_error::describe(&e).message))
        .execute();
        if let Err(e) = handled {
            pgrx::warning!("realtime: handling an interrupt failed: {e}");
        }
    }
}

/// Arms the statement timeout and lets SIGTERM cancel the query while alive.
/// Each guard restarts the timer, so every unit of work, nested or not, gets
/// the whole timeout; the timer stops when the outermost guard ends.
pub struct QueryGuard(());

impl QueryGuard {
    pub fn start(timeout_ms: i32) -> QueryGuard {
        Self::arm(timeout_ms, true)
    }

    /// Under the statement timeout only: for the little a stopping worker
    /// still writes down (where its slot stands), which SIGTERM must not cancel.
    pub fn start_for_shutdown(timeout_ms: i32) -> QueryGuard {
        Self::arm(timeout_ms, false)
    }

    fn arm(timeout_ms: i32, cancel_on_sigterm: bool) -> QueryGuard {
        DEPTH.fetch_add(1, Ordering::Relaxed);
        IN_QUERY.store(cancel_on_sigterm, Ordering::Relaxed);
        if timeout_ms > 0 {
            // SAFETY: main thread; STATEMENT_TIMEOUT is registered by InitPostgres,
            // whose handler sends this process SIGINT, which a bgworker with a
            // database connection handles as a query cancel.
            unsafe { compat::arm_statement_timeout(timeout_ms) };
        }
        // A SIGTERM that came just before: cancel at the first check.
        if cancel_on_sigterm && shutdown_requested() {
            // SAFETY: plain flag writes on the main thread.
            unsafe {
                pg_sys::QueryCancelPending = 1;
                pg_sys::InterruptPending = 1;
            }
        }
        QueryGuard(())
    }
}

impl Drop for QueryGuard {
    fn drop(&mut self) {
        if DEPTH.fetch_sub(1, Ordering::Relaxed) > 1 {
            return;
        }
        IN_QUERY.store(false, Ordering::Relaxed);
        // SAFETY: main thread.
        unsafe {
            compat::disarm_statement_timeout();
            // A cancel that arrived after the query ended must not hit the next one.
            pg_sys::QueryCancelPending = 0;
        }
    }
}
