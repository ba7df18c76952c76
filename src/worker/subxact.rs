//! Subtransactions on the main thread, so one failing request (a broken
//! policy, a bad filter) fails alone and never the worker.

use pgrx::pg_sys;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use std::panic::AssertUnwindSafe;

/// Runs `f` in a subtransaction and commits it; an ERROR inside becomes `Err`.
pub fn committed<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    run(f, true)
}

/// Runs `f` in a subtransaction and rolls it back whatever happens.
pub fn rolled_back<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    run(f, false)
}

fn run<R>(f: impl FnOnce() -> R, commit: bool) -> Result<R, String> {
    // SAFETY: main thread, inside a transaction; the standard PL error-block
    // pattern: remember context and owner, restore them after the subxact ends.
    unsafe {
        let context = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(context);
        let result = PgTryBuilder::new(AssertUnwindSafe(|| Ok(f()))).catch_others(|e| Err(describe(&e))).execute();
        if commit && result.is_ok() {
            pg_sys::ReleaseCurrentSubTransaction();
        } else {
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
        }
        pg_sys::MemoryContextSwitchTo(context);
        pg_sys::CurrentResourceOwner = owner;
        result
    }
}

fn describe(e: &CaughtError) -> String {
    match e {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r.message().to_owned(),
        CaughtError::RustPanic { ereport, .. } => ereport.message().to_owned(),
    }
}
