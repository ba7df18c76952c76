//! Subtransactions on the main thread, so one failing request (a broken
//! policy, a bad filter, a timeout) fails alone and never the worker. Each
//! runs under the worker's statement timeout, and SIGTERM cancels it.

use super::conflict;
use super::interrupts::QueryGuard;
use super::settings;
use super::sql_error::{SqlError, describe};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::panic::AssertUnwindSafe;

/// Runs `f` in a subtransaction and commits it; an ERROR inside becomes `Err`.
pub fn committed<R>(f: impl FnOnce() -> R) -> Result<R, SqlError> {
    run(f, true, QueryGuard::start(settings::statement_timeout_ms()))
}

/// [`committed`], but not cancelled by SIGTERM: what a stopping worker
/// still writes down.
pub fn committed_at_shutdown<R>(f: impl FnOnce() -> R) -> Result<R, SqlError> {
    run(f, true, QueryGuard::start_for_shutdown(settings::statement_timeout_ms()))
}

/// Runs `f` in a subtransaction and rolls it back whatever happens.
pub fn rolled_back<R>(f: impl FnOnce() -> R) -> Result<R, SqlError> {
    run(f, false, QueryGuard::start(settings::statement_timeout_ms()))
}

fn run<R>(f: impl FnOnce() -> R, commit: bool, _guard: QueryGuard) -> Result<R, SqlError> {
    let signalled = conflict::signalled();
    // SAFETY: main thread, inside a transaction; the standard PL error-block
    // pattern: remember context and owner, restore them after the subxact ends.
    unsafe {
        let context = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(context);
        let result = PgTryBuilder::new(AssertUnwindSafe(|| Ok(f()))).catch_others(|e| Err(Box::new(e))).execute();
        if commit && result.is_ok() {
            pg_sys::ReleaseCurrentSubTransaction();
        } else {
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
        }
        pg_sys::MemoryContextSwitchTo(context);
        pg_sys::CurrentResourceOwner = owner;
        match result {
            Ok(value) => Ok(value),
            Err(e) if conflict::unwinds(signalled) => e.rethrow(),
            Err(e) => Err(describe(&e)),
        }
    }
}

/// A subtransaction's SPI result with both kinds of error as text.
pub fn as_text<R>(result: Result<Result<R, pgrx::spi::Error>, SqlError>) -> Result<R, String> {
    result.map_err(String::from).and_then(|r| r.map_err(|e| e.to_string()))
}
