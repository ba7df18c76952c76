//! Subtransactions on the main thread, so one failing request (a broken
//! policy, a bad filter, a timeout) fails alone and never the worker. Each
//! runs under the worker's statement timeout, and SIGTERM cancels it.

use super::conflict;
use super::interrupts::QueryGuard;
use super::settings;
use pgrx::pg_sys;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use std::panic::AssertUnwindSafe;

/// An ERROR raised inside a subtransaction.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlError {
    pub code: PgSqlErrorCode,
    pub message: String,
}

impl SqlError {
    /// `insufficient_privilege` (42501): what an RLS policy that says no raises.
    pub fn is_denial(&self) -> bool {
        self.code == PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE
    }

    /// A statement or lock timeout, or a cancel.
    pub fn is_timeout(&self) -> bool {
        matches!(self.code, PgSqlErrorCode::ERRCODE_QUERY_CANCELED | PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE)
    }
}

impl SqlError {
    /// As Supabase's clients read a database error (Postgrex's form):
    /// `ERROR 22P02 (invalid_text_representation) invalid input syntax ...`.
    pub fn with_code(&self) -> String {
        let packed = self.code as isize;
        let sqlstate: String = (0..5).map(|i| char::from(((packed >> (6 * i)) & 0x3F) as u8 + b'0')).collect();
        let name = format!("{:?}", self.code);
        let name = name.strip_prefix("ERRCODE_").unwrap_or(&name).to_ascii_lowercase();
        format!("ERROR {sqlstate} ({name}) {}", self.message)
    }
}

impl std::fmt::Display for SqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<SqlError> for String {
    fn from(e: SqlError) -> String {
        e.message
    }
}

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

pub fn describe(e: &CaughtError) -> SqlError {
    let report = match e {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r,
        CaughtError::RustPanic { ereport, .. } => ereport,
    };
    SqlError { code: report.sql_error_code(), message: report.message().to_owned() }
}
